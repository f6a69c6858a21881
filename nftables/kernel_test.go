package nftables

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/lab"
)

// Real-kernel tests: the backend writes with the real nft binary into
// network namespaces the test creates (swy-nft-*), through knftables run
// on a thread inside the namespace.

func requireNFT(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("tool %s is required: %v", tool, err)
		}
	}
}

var nsSeq atomic.Int32

// kernelNS creates a namespace, removed in t.Cleanup.
func kernelNS(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("swy-nft-%d-%d", os.Getpid()%100000, nsSeq.Add(1))
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

// nsInterface is a knftables interface whose every call runs inside ns.
type nsInterface struct {
	ns     string
	family proxier.IPFamily
	nft    knftables.Interface
}

func newNSInterface(ns string, f proxier.IPFamily) (knftables.Interface, error) {
	x := &nsInterface{ns: ns, family: f}
	err := lab.InNS(ns, func() error {
		var err error
		x.nft, err = newKernelNFT(f)
		return err
	})
	return x, err
}

// listElements runs the production netlink element dump inside the namespace.
func (x *nsInterface) listElements(ctx context.Context, s *setSpec) (out []*knftables.Element, err error) {
	err = x.in(func() error { out, err = netlinkElements(x.family, s); return err })
	return out, err
}

// ruleSummary runs the production netlink rule dump inside the namespace.
func (x *nsInterface) ruleSummary(ctx context.Context, chains []string) (out map[string]*seenChain, err error) {
	err = x.in(func() error { out, err = netlinkRuleSummary(x.family, chains); return err })
	return out, err
}

func (x *nsInterface) in(fn func() error) error { return lab.InNS(x.ns, fn) }

func (x *nsInterface) NewTransaction() *knftables.Transaction { return x.nft.NewTransaction() }
func (x *nsInterface) Run(ctx context.Context, tx *knftables.Transaction) error {
	return x.in(func() error { return x.nft.Run(ctx, tx) })
}
func (x *nsInterface) Check(ctx context.Context, tx *knftables.Transaction) error {
	return x.in(func() error { return x.nft.Check(ctx, tx) })
}
func (x *nsInterface) ListAll(ctx context.Context) (out map[string][]string, err error) {
	err = x.in(func() error { out, err = x.nft.ListAll(ctx); return err })
	return out, err
}
func (x *nsInterface) List(ctx context.Context, typ string) (out []string, err error) {
	err = x.in(func() error { out, err = x.nft.List(ctx, typ); return err })
	return out, err
}
func (x *nsInterface) ListRules(ctx context.Context, chain string) (out []*knftables.Rule, err error) {
	err = x.in(func() error { out, err = x.nft.ListRules(ctx, chain); return err })
	return out, err
}
func (x *nsInterface) ListElements(ctx context.Context, typ, name string) (out []*knftables.Element, err error) {
	err = x.in(func() error { out, err = x.nft.ListElements(ctx, typ, name); return err })
	return out, err
}
func (x *nsInterface) ListCounters(ctx context.Context) (out []*knftables.Counter, err error) {
	err = x.in(func() error { out, err = x.nft.ListCounters(ctx); return err })
	return out, err
}

// kernelBackend returns a backend writing into ns.
func kernelBackend(t testing.TB, ns string) *Backend {
	t.Helper()
	b, err := New(Config{Logger: quietLogger(), NewInterface: func(f proxier.IPFamily) (knftables.Interface, error) {
		return newNSInterface(ns, f)
	}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// nftIn runs nft in ns.
func nftIn(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v in %s: %v\n%s", args, ns, err, out)
	}
	return string(out)
}

// listing is the sorted lines of `nft -s list table` for every family
// table switchyard has in ns (element order inside a map is the kernel's,
// so lines are compared as a set).
func listing(t *testing.T, ns string) string {
	t.Helper()
	var lines []string
	for _, fam := range []string{"ip", "ip6"} {
		out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-s", "list", "table", fam, TableName).CombinedOutput()
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(out), "\n") {
			for _, part := range strings.Split(l, ",") {
				if p := strings.TrimSpace(part); p != "" {
					lines = append(lines, p)
				}
			}
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func verifying(snaps []*proxier.Snapshot) []*proxier.Snapshot {
	out := make([]*proxier.Snapshot, len(snaps))
	for i, s := range snaps {
		c := *s
		c.FullSync, c.Verify, c.Changed = false, true, nil
		out[i] = &c
	}
	return out
}

// TestKernelGoldenIdleVerify applies every golden case with the real nft
// (hostile names included) and checks that a verifying sync right after
// finds no drift and writes nothing: what verify reads back (rule counts
// and comments, map elements and their verdicts) matches what was written.
func TestKernelGoldenIdleVerify(t *testing.T) {
	requireNFT(t)
	cases := goldenCases()
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			ns := kernelNS(t)
			b := kernelBackend(t, ns)
			snaps := cases[name]
			if _, err := b.Sync(context.Background(), snaps); err != nil {
				t.Fatalf("full sync: %v", err)
			}
			before := listing(t, ns)
			res, err := b.Sync(context.Background(), verifying(snaps))
			if err != nil {
				t.Fatalf("verifying sync: %v", err)
			}
			if res.Wrote || len(res.Repaired) > 0 {
				t.Errorf("idle verifying sync wrote %d operations, repaired %v", res.Rules, res.Repaired)
			}
			if after := listing(t, ns); after != before {
				t.Errorf("table changed by an idle verify")
			}
			if err := b.Cleanup(context.Background()); err != nil {
				t.Fatal(err)
			}
			if out := nftIn(t, ns, "list", "tables"); strings.Contains(out, TableName) {
				t.Errorf("tables left after Cleanup: %s", out)
			}
		})
	}
}

// TestKernelDriftRepair changes switchyard's table by hand with nft and
// checks that the next verifying sync restores exactly the table it wrote.
func TestKernelDriftRepair(t *testing.T) {
	requireNFT(t)
	snaps := goldenCases()["external"]
	sp := snaps[0].Services[0]
	svcChain := ServiceChain(sp.Name)
	extChain := namesFor(sp.Name).ext
	hp := sp.ClusterEndpoints[0].Addr
	hairpin := fmt.Sprintf("{ %s . %s . %s . %d }", hp.Addr(), hp.Addr(), sp.Protocol.Lower(), hp.Port())
	key := fmt.Sprintf("%s . %s . %d", sp.ClusterIP, sp.Protocol.Lower(), sp.Port)
	cases := []struct {
		name string
		edit [][]string
		kind string
	}{
		{"delete a service-ips element", [][]string{{"delete", "element", "ip", TableName, mapServiceIPs, "{ " + key + " }"}}, "element"},
		{"change a service-ips verdict", [][]string{
			{"delete", "element", "ip", TableName, mapServiceIPs, "{ " + key + " }"},
			{"add", "element", "ip", TableName, mapServiceIPs, "{ " + key + " : drop }"}}, "element"},
		{"flush a service chain", [][]string{{"flush", "chain", "ip", TableName, svcChain}}, "chain"},
		{"flush an external chain", [][]string{{"flush", "chain", "ip", TableName, extChain}}, "chain"},
		{"delete a hairpin element", [][]string{{"delete", "element", "ip", TableName, setHairpin, hairpin}}, "element"},
		{"delete the nat-prerouting base chain", [][]string{{"delete", "chain", "ip", TableName, chainNATPrerouting}}, "chain"},
		{"add a rule to the services chain", [][]string{{"add", "rule", "ip", TableName, chainServices, "ip daddr 10.1.2.3 drop"}}, "chain"},
		{"add a chain", [][]string{{"add", "chain", "ip", TableName, "bogus"}}, "unexpected-chain"},
		{"add an element", [][]string{{"add", "element", "ip", TableName, mapServiceIPs, "{ 10.1.2.3 . tcp . 80 : drop }"}}, "unexpected-element"},
		{"delete the table", [][]string{{"delete", "table", "ip", TableName}}, "table"},
	}
	aff := goldenCases()["affinity"]
	affEP := aff[0].Services[0].ClusterEndpoints[0]
	cases = append(cases, struct {
		name string
		edit [][]string
		kind string
	}{"flush an affinity endpoint chain", [][]string{{"flush", "chain", "ip", TableName, EndpointChain(aff[0].Services[0].Name, affEP)}}, "chain"})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			snaps := snaps
			if strings.Contains(c.name, "affinity") {
				snaps = aff
			}
			ns := kernelNS(t)
			b := kernelBackend(t, ns)
			if _, err := b.Sync(context.Background(), snaps); err != nil {
				t.Fatal(err)
			}
			want := listing(t, ns)
			for _, args := range c.edit {
				nftIn(t, ns, args...)
			}
			if listing(t, ns) == want {
				t.Fatal("the edit changed nothing")
			}
			res, err := b.Sync(context.Background(), verifying(snaps))
			if err != nil {
				t.Fatalf("verifying sync: %v", err)
			}
			if res.Repaired[c.kind] == 0 {
				t.Errorf("repairs %v, want a %q repair", res.Repaired, c.kind)
			}
			if got := listing(t, ns); got != want {
				t.Errorf("table not restored:\n--- want\n%s\n--- got\n%s", want, got)
			}
			res, err = b.Sync(context.Background(), verifying(snaps))
			if err != nil || res.Wrote {
				t.Errorf("verify after the repair: wrote %v, err %v", res.Wrote, err)
			}
		})
	}
}

// TestKernelPartialEqualsFull changes one endpoint of one service, removes
// a service and adds one with partial syncs, and checks that the table
// equals a full sync of the final snapshot into a fresh namespace.
func TestKernelPartialEqualsFull(t *testing.T) {
	requireNFT(t)
	first := goldenCases()["external"]
	ns := kernelNS(t)
	b := kernelBackend(t, ns)
	if _, err := b.Sync(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	// The second state: np-cluster's endpoints move, np-local-remote is
	// gone, a sticky service appears.
	cluster := svc("default", "np-cluster", "http", proxier.TCP, "10.96.0.30", 80,
		ep("10.244.1.5:8080", true), ep("10.244.2.6:8080", false), ep("10.244.2.7:8080", false))
	cluster.NodePort = 30030
	cluster.ExternalIPs = ips("203.0.113.30")
	local := goldenCases()["external"][0].Services[1]
	aff := goldenCases()["affinity"][0].Services[0]
	second := snapshot(proxier.IPv4, cluster, local, aff)
	second.FullSync = false
	second.Changed = map[proxier.ServicePortName]bool{
		cluster.Name: true, aff.Name: true,
		first[0].Services[2].Name: true,
	}
	res, err := b.Sync(context.Background(), []*proxier.Snapshot{second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Full || !res.Wrote {
		t.Errorf("want a partial sync that writes, got %+v", res)
	}
	got := listing(t, ns)
	fresh := kernelNS(t)
	full := *second
	full.FullSync = true
	if _, err := kernelBackend(t, fresh).Sync(context.Background(), []*proxier.Snapshot{&full}); err != nil {
		t.Fatal(err)
	}
	if want := listing(t, fresh); got != want {
		t.Errorf("partial syncs differ from a full sync:\n--- full\n%s\n--- partial\n%s", want, got)
	}
}

// TestKernelRestartOverOldTable starts a second backend (a restarted
// process) over a table the first one wrote for other services: its first
// sync replaces the table in one transaction, deleting the stale chains,
// sets and elements, and equals a fresh full sync.
func TestKernelRestartOverOldTable(t *testing.T) {
	requireNFT(t)
	ns := kernelNS(t)
	if _, err := kernelBackend(t, ns).Sync(context.Background(), goldenCases()["affinity"]); err != nil {
		t.Fatal(err)
	}
	next := goldenCases()["lb-source-ranges"]
	if _, err := kernelBackend(t, ns).Sync(context.Background(), next); err != nil {
		t.Fatalf("sync of a restarted backend over the old table: %v", err)
	}
	fresh := kernelNS(t)
	if _, err := kernelBackend(t, fresh).Sync(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	if got, want := listing(t, ns), listing(t, fresh); got != want {
		t.Errorf("restarted sync differs from a fresh one:\n--- fresh\n%s\n--- restarted\n%s", want, got)
	}
}
