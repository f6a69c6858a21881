package iptables

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Real-kernel tests: they run the real iptables tools inside a network
// namespace the test creates and deletes. They need root.

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

// newNetns creates a network namespace deleted at cleanup.
func newNetns(t testing.TB, prefix string) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := prefix + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// flavours returns the modes whose tools are installed; as root a missing
// tool fails the test.
func flavours(t testing.TB) []Mode {
	t.Helper()
	for _, m := range []Mode{ModeNFT, ModeLegacy} {
		for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
			tl := toolsFor(m, f)
			for _, bin := range []string{tl.IPTables, tl.Save, tl.Restore} {
				if _, err := exec.LookPath(bin); err != nil {
					t.Fatalf("%s not installed (apt-get install iptables): %v", bin, err)
				}
			}
		}
	}
	return []Mode{ModeNFT, ModeLegacy}
}

// recorder wraps an Executor, counting restore calls and optionally
// corrupting the next restore input.
type recorder struct {
	Executor
	mu       sync.Mutex
	restores int
	corrupt  bool
}

func (r *recorder) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, []byte, error) {
	r.mu.Lock()
	if strings.HasSuffix(name, "-restore") && !isListing(string(stdin)) {
		r.restores++
		if r.corrupt {
			r.corrupt = false
			i := bytes.LastIndex(stdin, []byte("COMMIT\n"))
			stdin = append(append(bytes.Clone(stdin[:i]), []byte("-A SWY-SERVICES --bogus-option\n")...), stdin[i:]...)
		}
	}
	r.mu.Unlock()
	return r.Executor.Run(ctx, stdin, name, args...)
}

func (r *recorder) restoreCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.restores
}

// tableSection returns one table's part of save output.
func tableSection(save, table string) string {
	i := strings.Index(save, "*"+table+"\n")
	if i < 0 {
		return ""
	}
	rest := save[i:]
	j := strings.Index(rest, "COMMIT\n")
	return rest[:j]
}

var saveNoise = regexp.MustCompile(`(?m)^#.*\n`)

// saveAll returns iptables-save output of both tables of one family,
// without the dated comment lines.
func saveAll(t testing.TB, ex Executor, m Mode, f proxier.IPFamily) string {
	t.Helper()
	out, stderr, err := ex.Run(context.Background(), nil, toolsFor(m, f).Save)
	if err != nil {
		t.Fatalf("save: %v: %s", err, stderr)
	}
	return saveNoise.ReplaceAllString(string(out), "")
}

// ownChains lists the SWY- chains per table in save output.
func ownChains(save string) map[string][]string {
	out := map[string][]string{}
	table := ""
	for _, line := range strings.Split(save, "\n") {
		if strings.HasPrefix(line, "*") {
			table = line[1:]
		}
		if strings.HasPrefix(line, ":"+ChainPrefix) {
			name, _, _ := strings.Cut(line[1:], " ")
			out[table] = append(out[table], name)
		}
	}
	for _, v := range out {
		sort.Strings(v)
	}
	return out
}

const foreignRules = `*filter
:FOREIGN-IN - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -m comment --comment "keep me" -j ACCEPT
-A INPUT -j FOREIGN-IN
-A FORWARD -s 10.1.0.0/16 -j DROP
-A FOREIGN-IN -m conntrack --ctstate ESTABLISHED -j ACCEPT
COMMIT
*nat
:FOREIGN-NAT - [0:0]
-A PREROUTING -j FOREIGN-NAT
-A POSTROUTING -o eth9 -j MASQUERADE
-A FOREIGN-NAT -d 192.0.2.99/32 -p udp -j DNAT --to-destination 192.0.2.100
COMMIT
`

func TestKernelApply(t *testing.T) {
	requireRoot(t)
	for _, m := range flavours(t) {
		t.Run(string(m), func(t *testing.T) {
			ns := newNetns(t, "swy-ipt-")
			ex := &recorder{Executor: NetnsExecutor(ns)}
			ctx := context.Background()
			for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
				foreign := foreignRules
				if f == proxier.IPv6 {
					foreign = strings.NewReplacer("10.1.0.0/16", "fd01::/64", "192.0.2.99/32", "2001:db8::99/128",
						"192.0.2.100", "2001:db8::100").Replace(foreign)
				}
				if _, stderr, err := ex.Run(ctx, []byte(foreign), toolsFor(m, f).Restore); err != nil {
					t.Fatalf("load foreign rules: %v: %s", err, stderr)
				}
			}
			before4, before6 := saveAll(t, ex, m, proxier.IPv4), saveAll(t, ex, m, proxier.IPv6)

			b, err := New(Config{Mode: m, Executor: ex, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			// Every golden case applies on the real kernel, each full sync
			// replacing the previous case's chains.
			cases := goldenCases()
			names := make([]string, 0, len(cases))
			for n := range cases {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, name := range names {
				snaps := cases[name]
				if _, err := b.Sync(ctx, snaps); err != nil {
					t.Fatalf("%s: sync: %v", name, err)
				}
				for _, s := range snaps {
					text, _ := Render([]*proxier.Snapshot{s})
					want := ownChains(text)
					got := ownChains(saveAll(t, ex, m, s.Family))
					for _, table := range tableOrder {
						if strings.Join(got[table], " ") != strings.Join(want[table], " ") {
							t.Errorf("%s %v %s: kernel chains\n%v\nwant\n%v", name, s.Family, table, got[table], want[table])
						}
					}
				}
				// An identical sync runs no restore.
				n := ex.restoreCount()
				for _, s := range snaps {
					s.FullSync = false
				}
				res, err := b.Sync(ctx, snaps)
				for _, s := range snaps {
					s.FullSync = true
				}
				if err != nil || res.Wrote || ex.restoreCount() != n {
					t.Fatalf("%s: second sync wrote (res %+v, err %v, restores %d -> %d)", name, res, err, n, ex.restoreCount())
				}
			}

			// A failed restore keeps the previous rules and names the line.
			s := goldenCases()["external"][0]
			if _, err := b.Sync(ctx, []*proxier.Snapshot{s}); err != nil {
				t.Fatal(err)
			}
			kept := saveAll(t, ex, m, proxier.IPv4)
			s2 := goldenCases()["no-endpoints"][0]
			s2.FullSync = false
			ex.corrupt = true
			_, err = b.Sync(ctx, []*proxier.Snapshot{s2})
			var re *RestoreError
			if !errors.As(err, &re) || re.Line == 0 {
				t.Fatalf("corrupted restore: got %v, want a RestoreError with a line", err)
			}
			// Restore commits table by table: the table holding the bad line
			// (nat, the last one) keeps its previous rules.
			if got, want := tableSection(saveAll(t, ex, m, proxier.IPv4), tableNAT), tableSection(kept, tableNAT); got != want {
				t.Fatalf("failed restore changed the nat table:\n%s", lineDiff(want, got))
			}
			res, err := b.Sync(ctx, []*proxier.Snapshot{s2})
			if err != nil || !res.Full {
				t.Fatalf("sync after failure: %+v %v, want full", res, err)
			}
			// The real tools' complaints map back to the offending line.
			for _, bad := range []string{
				"*nat\n:SWY-T - [0:0]\n-A SWY-T -p tcp --dport 80 -j SWY-NO-SUCH-CHAIN\n-A SWY-T -j RETURN\nCOMMIT\n",
				"*nat\n:SWY-T - [0:0]\n-A SWY-T -p tcp --bogus-option\nCOMMIT\n",
			} {
				err := b.restore(ctx, toolsFor(m, proxier.IPv4), []byte(bad))
				if !errors.As(err, &re) || re.Line != 3 || !strings.HasPrefix(re.Text, "-A SWY-T -p tcp") {
					t.Errorf("bad input %q: got %v, want the line named", bad, err)
				}
				t.Logf("real error: %v", err)
			}

			// Cleanup leaves the foreign rules byte for byte.
			if err := b.Cleanup(ctx); err != nil {
				t.Fatal(err)
			}
			if got := saveAll(t, ex, m, proxier.IPv4); got != before4 {
				t.Errorf("IPv4 after cleanup:\n%s", lineDiff(before4, got))
			}
			if got := saveAll(t, ex, m, proxier.IPv6); got != before6 {
				t.Errorf("IPv6 after cleanup:\n%s", lineDiff(before6, got))
			}
		})
	}
}
