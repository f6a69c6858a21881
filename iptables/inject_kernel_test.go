package iptables

import (
	"context"
	"io"
	"log/slog"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/internal/ruletext/ruletexttest"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// notOurs returns the lines of save output that are not about SWY- chains.
func notOurs(save string) string {
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if !strings.Contains(l, ChainPrefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestKernelHostileNames restores, with the real iptables-restore in a
// namespace the test creates, rules rendered from hostile namespaces,
// names and port names (quotes, newlines followed by rules, backslashes,
// 300-character names...). Every restore must succeed, the kernel must
// hold exactly the rendered chains with the rendered number of rules and
// the rendered comments, and the foreign rules must stay as they were.
func TestKernelHostileNames(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	cases := goldenCases()
	caseNames := make([]string, 0, len(cases))
	for n, snaps := range cases {
		if len(snaps) == 1 && snaps[0].Family == proxier.IPv4 {
			caseNames = append(caseNames, n)
		}
	}
	sort.Strings(caseNames)
	for _, m := range flavours(t) {
		t.Run(string(m), func(t *testing.T) {
			ns := newNetns(t, "swy-inj-")
			ex := NetnsExecutor(ns)
			tl := toolsFor(m, proxier.IPv4)
			if _, stderr, err := ex.Run(ctx, []byte(foreignRules), tl.Restore); err != nil {
				t.Fatalf("load foreign rules: %v: %s", err, stderr)
			}
			before := notOurs(saveAll(t, ex, m, proxier.IPv4))
			b, err := New(Config{Mode: m, Executor: ex, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			for i, h := range ruletexttest.Hostile {
				for _, names := range [][3]string{{"default", "web", h}, {h, h, h}} {
					c := caseNames[i%len(caseNames)]
					hostile, _, _ := renamed(names[0], names[1], names[2], h)
					text, err := Render(hostile[c])
					if err != nil {
						t.Fatal(err)
					}
					if err := b.restore(ctx, tl, []byte(text)); err != nil {
						t.Fatalf("%s with names %q: restore failed: %v", c, names, err)
					}
					save := saveAll(t, ex, m, proxier.IPv4)
					if got := notOurs(save); got != before {
						t.Fatalf("%s with names %q changed foreign rules:\n%s", c, names, lineDiff(before, got))
					}
					wantChains := ownChains(text)
					if got := ownChains(save); !reflect.DeepEqual(got, wantChains) {
						t.Fatalf("%s with names %q: kernel chains %v, want %v", c, names, got, wantChains)
					}
					// Rule counts per chain and comments, read back.
					rendered, wantComments, err := ruletexttest.Canonical(text, nil)
					if err != nil {
						t.Fatal(err)
					}
					saved, gotComments, err := ruletexttest.Canonical(save, nil)
					if err != nil {
						t.Fatalf("parse iptables-save: %v\n%s", err, save)
					}
					if got, want := counts(saved), counts(rendered); got != want {
						t.Fatalf("%s with names %q: rules per chain in the kernel\n%s\nwant\n%s", c, names, got, want)
					}
					if !reflect.DeepEqual(ours(gotComments), ours(wantComments)) {
						t.Fatalf("%s with names %q: comments in the kernel\n%q\nwant\n%q", c, names, gotComments, wantComments)
					}
					if err := b.Cleanup(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
			if got := saveAll(t, ex, m, proxier.IPv4); got != before && notOurs(got) != before {
				t.Fatalf("after cleanup:\n%s", lineDiff(before, got))
			}
		})
	}
}

// counts keeps the header lines of our chains ("*table :SWY-... (N
// rules)") of a Canonical listing.
func counts(listing string) string {
	var out []string
	for _, l := range strings.Split(listing, "\n") {
		if strings.HasPrefix(l, "*") && strings.Contains(l, " :"+ChainPrefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// ours drops the comments of the foreign rules.
func ours(comments []string) []string {
	var out []string
	for _, c := range comments {
		if c != "keep me" {
			out = append(out, c)
		}
	}
	return out
}
