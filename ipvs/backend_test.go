package ipvs

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/proxier"
)

type fakeSysctl struct {
	vals   map[string]string
	writes []string
}

func (s *fakeSysctl) Get(name string) (string, error) {
	v, ok := s.vals[name]
	if !ok {
		return "", fmt.Errorf("no sysctl %s", name)
	}
	return v, nil
}

func (s *fakeSysctl) Set(name, value string) error {
	s.vals[name] = value
	s.writes = append(s.writes, name+"="+value)
	return nil
}

func newFakeSysctl(osrelease string) *fakeSysctl {
	return &fakeSysctl{vals: map[string]string{
		"kernel/osrelease": osrelease, "net/ipv4/ip_forward": "0", "net/ipv4/vs/conntrack": "0",
		"net/ipv4/vs/expire_nodest_conn": "0", "net/ipv4/vs/expire_quiescent_template": "0",
		"net/ipv4/vs/conn_reuse_mode": "1", "net/ipv4/conf/all/arp_ignore": "0", "net/ipv4/conf/all/arp_announce": "0",
	}}
}

type harness struct {
	k   *fakeKernel
	ex  *fakeExec
	sc  *fakeSysctl
	now time.Time
}

func newHarness() *harness {
	return &harness{k: newFakeKernel(), ex: newFakeExec(), sc: newFakeSysctl("6.1.0-26-amd64"), now: t0}
}

func (h *harness) backend(t *testing.T) *Backend {
	t.Helper()
	b, err := New(Config{Kernel: h.k, Executor: h.ex, Sysctl: h.sc, IPTablesMode: iptables.ModeNFT, Logger: discard(), Now: func() time.Time { return h.now }, LocalAddresses: noLocalAddresses})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (h *harness) resetCounts() {
	h.k.writes, h.ex.restores, h.sc.writes = nil, 0, nil
}

func mustSync(t *testing.T, b *Backend, snaps ...*proxier.Snapshot) proxier.SyncResult {
	t.Helper()
	res, err := b.Sync(context.Background(), snaps)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// assertMatches checks the fake kernel holds exactly the rendered state.
func assertMatches(t *testing.T, h *harness, snaps ...*proxier.Snapshot) {
	t.Helper()
	st := mustRender(t, snaps...)
	servers, _ := h.k.VirtualServers()
	addrs, _ := h.k.DummyAddresses()
	sets := parseIPSetSave([]byte(FormatIPSets(func() []*IPSet {
		var s []*IPSet
		for _, v := range h.ex.sets {
			s = append(s, v)
		}
		return s
	}())))
	if ops, _ := Diff(st, &Dump{Servers: servers, Addresses: addrs, Sets: sets}, opts(nil)); len(ops) != 0 {
		t.Fatalf("kernel differs from desired: %v", opStrings(ops))
	}
}

func TestSyncIdempotent(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	snap := richSnapshot()
	res := mustSync(t, b, snap)
	if !res.Wrote || len(h.k.writes) == 0 || h.ex.restores != 2 {
		t.Fatalf("first sync: wrote=%v kernel writes=%d restores=%d", res.Wrote, len(h.k.writes), h.ex.restores)
	}
	assertMatches(t, h, snap)
	for _, c := range []string{"SWY-IPVS-SERVICES", "SWY-IPVS-POSTROUTING"} {
		if !slices.Contains(h.ex.ownChainNames("iptables-nft", "nat"), c) {
			t.Errorf("nat chain %s missing", c)
		}
	}
	if got := h.ex.table("iptables-nft", "nat").rules["PREROUTING"]; len(got) != 1 || !strings.HasSuffix(got[0], "-j SWY-IPVS-SERVICES") {
		t.Errorf("nat PREROUTING = %v", got)
	}
	if !slices.Contains(h.sc.writes, "net/ipv4/vs/conntrack=1") || slices.Contains(h.sc.writes, "net/ipv4/vs/conn_reuse_mode=0") {
		t.Errorf("sysctl writes %v (6.1 kernel: conn_reuse_mode left alone)", h.sc.writes)
	}

	h.resetCounts()
	h.k.reads = 0
	res = mustSync(t, b, snap)
	if res.Wrote || len(h.k.writes) != 0 || h.ex.restores != 0 || len(h.sc.writes) != 0 {
		t.Fatalf("second sync wrote: %v, kernel %v, restores %d, sysctls %v", res.Wrote, h.k.writes, h.ex.restores, h.sc.writes)
	}
	if h.k.reads != 1 {
		t.Errorf("want one dump per sync, got %d", h.k.reads)
	}

	// A restarted switchyard (new Backend, same kernel) writes no netlink
	// operations either; it rewrites its iptables rules once.
	h.resetCounts()
	mustSync(t, h.backend(t), snap)
	if len(h.k.writes) != 0 {
		t.Fatalf("restart wrote netlink ops: %v", h.k.writes)
	}
}

func TestSyncChangeWritesOnlyDifference(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	mustSync(t, b, richSnapshot())
	h.resetCounts()
	s := richSnapshot()
	dns := s.Lookup(spn("default", "dns", "", proxier.UDP))
	dns.AllEndpoints = append(dns.AllEndpoints, ep("10.244.4.4:53", false))
	resolve(dns)
	mustSync(t, b, s)
	want := []string{"add-dest UDP  10.96.0.53:53 -> 10.244.4.4:53"}
	if !slices.Equal(h.k.writes, want) {
		t.Fatalf("writes %v, want %v", h.k.writes, want)
	}
	if h.ex.restores != 1 { // the LOOP-BACK member; no iptables change
		t.Fatalf("restores %d, want 1 (ipset)", h.ex.restores)
	}
	assertMatches(t, h, s)
}

func TestSyncGracefulTerminationAndRestart(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	two := snapshot(svc("web", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.1:80", true), ep("10.244.1.2:80", true)))
	one := snapshot(svc("web", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.1:80", true)))
	k := key("10.96.0.10", proxier.TCP, 80)
	gone := netip.MustParseAddrPort("10.244.1.2:80")
	mustSync(t, b, two)
	h.k.setConns(k, gone, 1, 0)

	h.resetCounts()
	mustSync(t, b, one)
	if !slices.Equal(h.k.writes, []string{"update-dest TCP  10.96.0.10:80 -> 10.244.1.2:80 weight 0"}) {
		t.Fatalf("writes %v", h.k.writes)
	}
	// Restart while it is quiesced, endpoint back: weight restored.
	h.resetCounts()
	b2 := h.backend(t)
	mustSync(t, b2, two)
	if !slices.Equal(h.k.writes, []string{"update-dest TCP  10.96.0.10:80 -> 10.244.1.2:80 weight 1"}) {
		t.Fatalf("restart writes %v", h.k.writes)
	}
	// Removed again; after the grace period it goes despite connections.
	mustSync(t, b2, one)
	h.resetCounts()
	h.now = h.now.Add(DefaultGracePeriod - time.Second)
	mustSync(t, b2, one)
	if len(h.k.writes) != 0 {
		t.Fatalf("deleted before the grace period: %v", h.k.writes)
	}
	h.now = h.now.Add(time.Second)
	mustSync(t, b2, one)
	if !slices.Equal(h.k.writes, []string{"del-dest TCP  10.96.0.10:80 -> 10.244.1.2:80"}) {
		t.Fatalf("writes %v", h.k.writes)
	}
}

func TestSyncRemovesIptablesModeChainsAndStaleOnes(t *testing.T) {
	h := newHarness()
	// Leftovers of the iptables mode, plus a foreign rule.
	err := h.ex.iptRestore("iptables-nft-restore", "*nat\n:SWY-SERVICES - [0:0]\n:SWY-SVC-ABC - [0:0]\n:CNI-X - [0:0]\n"+
		"-A PREROUTING -m comment --comment \"switchyard services\" -j SWY-SERVICES\n-A PREROUTING -j CNI-X\n"+
		"-A SWY-SERVICES -d 10.96.0.10/32 -j SWY-SVC-ABC\nCOMMIT\n")
	if err != nil {
		t.Fatal(err)
	}
	mustSync(t, h.backend(t), richSnapshot())
	nat := h.ex.table("iptables-nft", "nat")
	if slices.Contains(nat.order, "SWY-SERVICES") || slices.Contains(nat.order, "SWY-SVC-ABC") {
		t.Fatalf("iptables-mode chains left: %v", nat.order)
	}
	if !slices.Contains(nat.rules["PREROUTING"], "-j CNI-X") || !slices.Contains(nat.order, "CNI-X") {
		t.Fatalf("foreign rule touched: %v", nat.rules["PREROUTING"])
	}
}

func TestSyncReinsertsMissingHook(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	mustSync(t, b, richSnapshot())
	nat := h.ex.table("iptables-nft", "nat")
	nat.rules["POSTROUTING"] = nil // someone flushed it
	h.resetCounts()
	mustSync(t, b, richSnapshot())
	if h.ex.restores != 1 || len(nat.rules["POSTROUTING"]) != 1 || len(h.k.writes) != 0 {
		t.Fatalf("restores %d POSTROUTING %v writes %v", h.ex.restores, nat.rules["POSTROUTING"], h.k.writes)
	}
}

func TestCleanupRemovesOnlyOurs(t *testing.T) {
	h := newHarness()
	foreign := &VirtualServer{Key: key("172.17.0.1", proxier.TCP, 8080), Scheduler: "wlc"}
	if err := h.k.AddService(foreign); err != nil {
		t.Fatal(err)
	}
	h.ex.sets["OTHER"] = &IPSet{Name: "OTHER", Type: "hash:ip"}
	if err := h.ex.iptRestore("iptables-nft-restore", "*filter\n:CNI-FW - [0:0]\n-A INPUT -j CNI-FW\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	b := h.backend(t)
	mustSync(t, b, richSnapshot())
	if err := b.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	servers, _ := h.k.VirtualServers()
	if len(servers) != 1 || servers[0].Key != foreign.Key {
		t.Fatalf("servers after cleanup: %v", servers)
	}
	if h.k.dummy {
		t.Error("dummy interface left")
	}
	for name := range h.ex.sets {
		if strings.HasPrefix(name, SetPrefix) {
			t.Errorf("set %s left", name)
		}
	}
	if h.ex.sets["OTHER"] == nil {
		t.Error("foreign set removed")
	}
	for _, table := range tables {
		if own := h.ex.ownChainNames("iptables-nft", table); len(own) != 0 {
			t.Errorf("%s chains left: %v", table, own)
		}
	}
	if got := h.ex.table("iptables-nft", "filter").rules["INPUT"]; !slices.Equal(got, []string{"-j CNI-FW"}) {
		t.Errorf("filter INPUT = %v", got)
	}
}

func TestSysctlsPerKernel(t *testing.T) {
	for _, c := range []struct {
		rel       string
		strictARP bool
		want      []string
	}{
		{"5.4.0-150-generic", false, []string{"net/ipv4/vs/conn_reuse_mode=0"}},
		{"6.1.0-26-amd64", true, []string{"net/ipv4/conf/all/arp_ignore=1", "net/ipv4/conf/all/arp_announce=2"}},
	} {
		s := newFakeSysctl(c.rel)
		if _, err := ensureSysctls(s, c.strictARP, discard()); err != nil {
			t.Fatal(err)
		}
		for _, w := range c.want {
			if !slices.Contains(s.writes, w) {
				t.Errorf("%s: writes %v lack %s", c.rel, s.writes, w)
			}
		}
	}
}

// TestQuickCleanupSavesOnlyTablesWithOurChains: a mode switch's cleanup
// lists a few chains instead of saving tables that hold none of ours, and
// still removes what is there.
func TestQuickCleanupSavesOnlyTablesWithOurChains(t *testing.T) {
	h := newHarness()
	quick := func() *Backend {
		b, err := New(Config{Kernel: h.k, Executor: h.ex, Sysctl: h.sc, IPTablesMode: iptables.ModeNFT, Logger: discard(),
			Now: func() time.Time { return h.now }, LocalAddresses: noLocalAddresses, QuickCleanup: true})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	saves := func() (n int) {
		for _, c := range h.ex.calls {
			if strings.Contains(c, "-save -t") {
				n++
			}
		}
		return n
	}
	if err := quick().Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := saves(); n != 0 {
		t.Errorf("quick cleanup of a node without IPVS-mode chains saved %d tables: %v", n, h.ex.calls)
	}
	mustSync(t, h.backend(t), richSnapshot())
	h.ex.calls = nil
	if err := quick().Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if saves() == 0 {
		t.Error("quick cleanup did not save the tables holding our chains")
	}
	for _, table := range tables {
		if own := h.ex.ownChainNames("iptables-nft", table); len(own) != 0 {
			t.Errorf("%s chains left: %v", table, own)
		}
	}
}
