package conformance

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// TestTracer runs every scenario's packets through the iptables mode's
// rendered rules (iptables.Render plus the jump rules Sync inserts).
//
//	go test -run TestTracer ./test/conformance/
func TestTracer(t *testing.T) {
	runTracer(t, iptablesMode{})
}

// TestTracerKernelRules runs the same table over the rules the real
// iptables backend programs into a namespace, read back with
// iptables-nft-save (root only).
func TestTracerKernelRules(t *testing.T) {
	requireRoot(t)
	runTracer(t, newIPTablesKernelMode(t))
}

// ruleDumper is a Tracer that can show the rules it traces.
type ruleDumper interface{ Rules() string }

// runTracer checks every packet of every scenario against mode, one subtest
// per scenario and packet.
func runTracer(t *testing.T, mode Mode) {
	for _, s := range scenarios.All() {
		t.Run(s.Name, func(t *testing.T) {
			snaps, err := Plan(s)
			if err != nil {
				t.Fatal(err)
			}
			tracer, err := mode.Load(snaps)
			if err != nil {
				t.Fatalf("%s: load: %v", mode.Name(), err)
			}
			objs, err := s.Objects()
			if err != nil {
				t.Fatal(err)
			}
			pods, err := objs.Pods()
			if err != nil {
				t.Fatal(err)
			}
			failed := false
			for _, p := range s.Packets {
				ok := t.Run(p.Name, func(t *testing.T) {
					src, err := p.Source(pods)
					if err != nil {
						t.Fatal(err)
					}
					tr, err := tracer.Trace(p, src)
					if err != nil {
						t.Fatalf("%s: trace %v: %v", mode.Name(), p, err)
					}
					if errs := Check(p, tr); len(errs) > 0 {
						t.Errorf("%s: %v (from %v)\n  want: %s\n  problems:\n    %s\n  traced outcomes:\n%s",
							mode.Name(), p, src, describe(p.Expect), strings.Join(errs, "\n    "), tr)
					}
				})
				failed = failed || !ok
			}
			if d, ok := tracer.(ruleDumper); ok && failed {
				t.Logf("rules traced for %s:\n%s", s.Name, d.Rules())
			}
		})
	}
}

// describe spells an expectation out for failure messages.
func describe(e scenarios.Expect) string {
	switch {
	case len(e.Endpoints) > 0:
		s := fmt.Sprintf("one of %v, source kept", e.Endpoints)
		if e.Masqueraded {
			s = fmt.Sprintf("one of %v, masqueraded", e.Endpoints)
		}
		if e.Affinity {
			s += ", with session affinity"
		}
		return s
	case e.Refused:
		return "refused at once"
	case e.Dropped:
		return "dropped"
	case e.Unserved:
		return "no endpoint receives it"
	}
	return "nothing (bad table row)"
}

// TestCheckCatchesMismatches proves Check fails on each kind of wrong trace.
func TestCheckCatchesMismatches(t *testing.T) {
	ep := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	two := []string{"10.244.0.2:8080", "10.244.1.2:8080"}
	good := &Trace{Outcomes: []Outcome{
		{Verdict: Delivered, Endpoint: ep(two[0])},
		{Verdict: Delivered, Endpoint: ep(two[1])},
	}}
	reach := scenarios.Packet{Name: "x", Expect: scenarios.Expect{Endpoints: two}}
	if errs := Check(reach, good); len(errs) != 0 {
		t.Fatalf("a conforming trace was rejected: %v", errs)
	}
	cases := []struct {
		name string
		p    scenarios.Packet
		tr   *Trace
		want string
	}{
		{"missing endpoint", reach, &Trace{Outcomes: good.Outcomes[:1]}, "never chosen"},
		{"extra endpoint", reach, &Trace{Outcomes: append([]Outcome{{Verdict: Delivered, Endpoint: ep("10.244.0.4:8080")}}, good.Outcomes...)}, "not allowed"},
		{"not masqueraded", scenarios.Packet{Expect: scenarios.Expect{Endpoints: two, Masqueraded: true}}, good, "masqueraded=false"},
		{"masqueraded", reach, &Trace{Outcomes: []Outcome{{Verdict: Delivered, Endpoint: ep(two[0]), Masqueraded: true}, good.Outcomes[1]}}, "masqueraded=true"},
		{"no affinity rules", scenarios.Packet{Expect: scenarios.Expect{Endpoints: two, Affinity: true}}, good, "session-affinity"},
		{"unexpected affinity", reach, &Trace{Outcomes: good.Outcomes, Affinity: true}, "session-affinity"},
		{"dropped branch", reach, &Trace{Outcomes: append([]Outcome{{Verdict: Dropped}}, good.Outcomes...)}, "dropped"},
		{"no DNAT", reach, &Trace{Outcomes: []Outcome{{Verdict: Delivered}}}, "no DNAT"},
		{"dropped, not refused", scenarios.Packet{Expect: scenarios.Expect{Refused: true}}, &Trace{Outcomes: []Outcome{{Verdict: Dropped}}}, "want refused"},
		{"refused, not dropped", scenarios.Packet{Expect: scenarios.Expect{Dropped: true}}, &Trace{Outcomes: []Outcome{{Verdict: Refused}}}, "want dropped"},
		{"served", scenarios.Packet{Expect: scenarios.Expect{Unserved: true}}, good, "want no endpoint"},
		{"empty trace", reach, &Trace{}, "no outcome"},
	}
	for _, c := range cases {
		errs := Check(c.p, c.tr)
		if !strings.Contains(strings.Join(errs, "\n"), c.want) {
			t.Errorf("%s: Check = %q, want a problem mentioning %q", c.name, errs, c.want)
		}
	}
}

// requireRoot skips t unless it runs as root; as root, the tools the
// kernel tests use must exist.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"ip", "iptables-nft", "iptables-nft-save", "iptables-nft-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("tool %s is required: %v", tool, err)
		}
	}
}

var netnsSeq atomic.Int32

// newNetns creates a network namespace (removed in t.Cleanup) and returns
// its name.
func newNetns(t testing.TB, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid()%100000, netnsSeq.Add(1))
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
