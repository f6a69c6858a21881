package iptables

import (
	"context"
	"io"
	"log/slog"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// verifyCopies returns the snapshots as a periodic sync sees them.
func verifyCopies(snaps []*proxier.Snapshot) []*proxier.Snapshot {
	out := make([]*proxier.Snapshot, len(snaps))
	for i, s := range snaps {
		out[i] = verify(s)
	}
	return out
}

// TestKernelVerifyIdleWritesNothing applies every golden case with the real
// tools of each flavour and checks that a verifying sync right after finds
// no drift: what iptables-nft-save and iptables-legacy-save print back
// fingerprints like what was written (IPv4 and IPv6).
func TestKernelVerifyIdleWritesNothing(t *testing.T) {
	requireRoot(t)
	for _, m := range flavours(t) {
		t.Run(string(m), func(t *testing.T) {
			ns := newNetns(t, "swy-ipt-")
			ex := &recorder{Executor: NetnsExecutor(ns)}
			b, err := New(Config{Mode: m, Executor: ex, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			cases := goldenCases()
			names := make([]string, 0, len(cases))
			for n := range cases {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, name := range names {
				if _, err := b.Sync(ctx, cases[name]); err != nil {
					t.Fatalf("%s: sync: %v", name, err)
				}
				n := ex.restoreCount()
				res, err := b.Sync(ctx, verifyCopies(cases[name]))
				if err != nil || res.Wrote || res.Repaired != nil || ex.restoreCount() != n {
					t.Errorf("%s: verifying sync after a full one: %+v, %v, %d restores (want nothing written)",
						name, res, err, ex.restoreCount()-n)
				}
			}
		})
	}
}

var saveCounters = regexp.MustCompile(`\[\d+:\d+\]`)

// TestKernelDriftRepair deletes rules by hand in the node namespace of a
// small lab, as an operator would, and checks that the next verifying sync
// restores exactly what was there and that traffic to the cluster IP flows
// again, in both flavours.
func TestKernelDriftRepair(t *testing.T) {
	requireRoot(t)
	for _, m := range flavours(t) {
		t.Run(string(m), func(t *testing.T) {
			lab := newTrafficLab(t)
			ctx := context.Background()
			ex := &recorder{Executor: NetnsExecutor(lab.node)}
			b, err := New(Config{Mode: m, Executor: ex, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Cleanup(context.Background()) })
			s := snapshot(proxier.IPv4,
				svc("default", "web", "http", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.5:8080", true), ep("10.244.2.5:8080", false)))
			if _, err := b.Sync(ctx, []*proxier.Snapshot{s}); err != nil {
				t.Fatal(err)
			}
			before := saveCounters.ReplaceAllString(saveAll(t, ex, m, proxier.IPv4), "")
			reach := func(when string) {
				t.Helper()
				if reply, err := lab.dial("10.96.0.10:80"); err != nil || !strings.HasPrefix(reply, "10.244.") {
					t.Fatalf("%s: cluster IP: %q, %v", when, reply, err)
				}
			}
			reach("after the first sync")
			ipt := toolsFor(m, proxier.IPv4).IPTables
			jump := []string{"-m", "comment", "--comment", "switchyard service portals", "-j", chainServices}
			for _, tc := range []struct {
				name string
				args []string
				kind string
			}{
				{"flush SWY-SERVICES", []string{"-t", "nat", "-F", chainServices}, "chain"},
				{"flush one SWY-SVC chain", []string{"-t", "nat", "-F", ServiceChain(webName)}, "chain"},
				{"delete the jump from PREROUTING", append([]string{"-t", "nat", "-D", "PREROUTING"}, jump...), "jump"},
				{"delete the jump from OUTPUT", append([]string{"-t", "nat", "-D", "OUTPUT"}, jump...), "jump"},
				{"flush filter SWY-FORWARD", []string{"-t", "filter", "-F", chainForward}, "chain"},
			} {
				argv := append([]string{"netns", "exec", lab.node, ipt, "-w"}, tc.args...)
				if out, err := exec.Command("ip", argv...).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v: %s", tc.name, err, out)
				}
				start := time.Now()
				res, err := b.Sync(ctx, []*proxier.Snapshot{verify(s)})
				t.Logf("%s: repaired by a %s verifying sync", tc.name, time.Since(start).Round(time.Millisecond))
				if err != nil || res.Full || res.Repaired[tc.kind] != 1 {
					t.Fatalf("%s: verifying sync: %+v, %v; want one %s repaired by a partial sync", tc.name, res, err, tc.kind)
				}
				after := saveCounters.ReplaceAllString(saveAll(t, ex, m, proxier.IPv4), "")
				if after != before {
					t.Fatalf("%s: rules after repair differ:\n%s", tc.name, lineDiff(before, after))
				}
				reach("after repairing: " + tc.name)
				n := ex.restoreCount()
				if res, err := b.Sync(ctx, []*proxier.Snapshot{verify(s)}); err != nil || res.Wrote || ex.restoreCount() != n {
					t.Fatalf("%s: idle verifying sync after the repair: %+v, %v", tc.name, res, err)
				}
			}
		})
	}
}
