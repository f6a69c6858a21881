package ipvs

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/proxier"
)

func TestTimeoutsValidate(t *testing.T) {
	for _, tc := range []struct {
		t  Timeouts
		ok bool
	}{
		{Timeouts{}, true},
		{Timeouts{TCP: 900 * time.Second, TCPFin: 2 * time.Minute, UDP: 300 * time.Second}, true},
		{Timeouts{TCP: -time.Second}, false},
		{Timeouts{UDP: 500 * time.Millisecond}, false},
		{Timeouts{TCPFin: 1 << 62}, false},
	} {
		if err := tc.t.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: err %v, want ok=%v", tc.t, err, tc.ok)
		}
		if _, err := New(Config{Timeouts: tc.t}); (err == nil) != tc.ok {
			t.Errorf("New %+v: err %v, want ok=%v", tc.t, err, tc.ok)
		}
	}
}

func TestTimeoutsToWrite(t *testing.T) {
	have := Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 300 * time.Second}
	if _, ch := timeoutsToWrite(Timeouts{}, have); ch {
		t.Error("nothing wanted, something written")
	}
	if _, ch := timeoutsToWrite(Timeouts{TCP: 900 * time.Second, UDP: 300 * time.Second}, have); ch {
		t.Error("wanted values already set, something written")
	}
	w, ch := timeoutsToWrite(Timeouts{TCP: 900 * time.Second, UDP: 10 * time.Second}, have)
	if !ch || w != (Timeouts{UDP: 10 * time.Second}) {
		t.Errorf("write %+v %v, want only udp 10s", w, ch)
	}
}

// The timeouts are set on the first sync, not written again while they
// hold, repaired when someone changes them, and left alone when none is
// configured.
func TestSyncSetsTimeouts(t *testing.T) {
	h := newHarness()
	tk := &fakeTimeoutKernel{fakeKernel: h.k, t: Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 300 * time.Second}}
	want := Timeouts{TCP: 3600 * time.Second, UDP: 30 * time.Second}
	newB := func(to Timeouts) *Backend {
		b, err := New(Config{Kernel: tk, Executor: h.ex, Sysctl: h.sc, IPTablesMode: iptables.ModeNFT, Logger: discard(),
			Now: func() time.Time { return h.now }, LocalAddresses: noLocalAddresses, Timeouts: to})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := newB(want)
	mustSync(t, b, richSnapshot())
	if got := (Timeouts{TCP: 3600 * time.Second, TCPFin: 120 * time.Second, UDP: 30 * time.Second}); tk.t != got {
		t.Fatalf("kernel timeouts %+v, want %+v", tk.t, got)
	}
	h.resetCounts()
	if res := mustSync(t, b, richSnapshot()); res.Wrote || len(h.k.writes) != 0 {
		t.Fatalf("second sync wrote %v", h.k.writes)
	}
	tk.t.UDP = 300 * time.Second // ipvsadm --set by someone else
	if res := mustSync(t, b, richSnapshot()); !res.Wrote || !slices.Equal(h.k.writes, []string{"set-timeouts 0s 0s 30s"}) {
		t.Fatalf("repair wrote %v (wrote=%v)", h.k.writes, res.Wrote)
	}
	h.resetCounts()
	tk.t.TCP = 5 * time.Second
	mustSync(t, newB(Timeouts{}), richSnapshot())
	if tk.t.TCP != 5*time.Second || len(h.k.writes) != 0 {
		t.Fatalf("no timeouts configured, yet wrote %v (tcp %v)", h.k.writes, tk.t.TCP)
	}
	// A Kernel without timeouts cannot honour them: the sync says so.
	b2, err := New(Config{Kernel: newFakeKernel(), Executor: h.ex, Sysctl: h.sc, IPTablesMode: iptables.ModeNFT, Logger: discard(),
		LocalAddresses: noLocalAddresses, Timeouts: want})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Sync(context.Background(), []*proxier.Snapshot{richSnapshot()}); err == nil || !strings.Contains(err.Error(), "timeouts") {
		t.Fatalf("sync on a kernel without timeouts: %v", err)
	}
}

func TestDiffKeepsExcludedServers(t *testing.T) {
	st := mustRender(t, snapshot(svc("a", proxier.TCP, "10.96.0.1", 80, ep("10.244.1.1:80", true))))
	dump := dumpOf(st)
	// A foreign server on a node address in the node-port range and one on
	// an address of swy-ipvs0: both would be deleted without exclusion.
	nodeFor := &VirtualServer{Key: key("192.168.50.10", proxier.TCP, 30999), Scheduler: "rr"}
	onDummy := &VirtualServer{Key: key("10.96.0.99", proxier.TCP, 80), Scheduler: "rr"}
	v6 := &VirtualServer{Key: Key{Family: proxier.IPv6, Addr: netip.MustParseAddr("fd00::5"), Protocol: proxier.TCP, Port: 80}, Scheduler: "rr"}
	dump.Servers = append(dump.Servers, nodeFor, onDummy, v6)
	dump.Addresses = append(dump.Addresses, netip.MustParseAddr("10.96.0.99"), netip.MustParseAddr("fd00::5"))
	o := opts(nil)
	o.Owned = func(k Key) bool { return k.Addr == netip.MustParseAddr("192.168.50.10") && k.Port >= 30000 }
	ops, _ := Diff(st, dump, o)
	var dels []string
	for _, op := range ops {
		if op.Kind == OpDelService {
			dels = append(dels, op.Server.Key.String())
		}
	}
	if len(dels) != 3 {
		t.Fatalf("without exclusion: deletes %v, want 3", dels)
	}
	o.Exclude = []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24"), netip.MustParsePrefix("10.96.0.96/28"), netip.MustParsePrefix("fd00::/64")}
	ops, _ = Diff(st, dump, o)
	for _, op := range ops {
		if op.Kind == OpDelService {
			t.Errorf("excluded server deleted: %s", op.Server.Key)
		}
	}
	// Exclusion only protects from deletion: a desired server inside an
	// excluded CIDR is still programmed.
	o.Exclude = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/24")}
	ops, _ = Diff(st, &Dump{}, o)
	if !slices.ContainsFunc(ops, func(op Op) bool { return op.Kind == OpAddService && op.Server.Key == key("10.96.0.1", proxier.TCP, 80) }) {
		t.Errorf("desired server in an excluded CIDR not added: %v", opStrings(ops))
	}
}

// Sync and Cleanup keep a foreign server on a node address in the
// node-port range when its address is excluded.
func TestSyncAndCleanupKeepExcluded(t *testing.T) {
	h := newHarness()
	foreign := &VirtualServer{Key: key("192.168.50.10", proxier.TCP, 30999), Scheduler: "wlc"}
	if err := h.k.AddService(foreign); err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Kernel: h.k, Executor: h.ex, Sysctl: h.sc, IPTablesMode: iptables.ModeNFT, Logger: discard(),
		Now: func() time.Time { return h.now }, LocalAddresses: noLocalAddresses,
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("192.168.50.10/32")}})
	if err != nil {
		t.Fatal(err)
	}
	mustSync(t, b, richSnapshot())
	if h.k.servers[foreign.Key] == nil {
		t.Fatalf("sync deleted the excluded server: %v", h.k.writes)
	}
	if err := b.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Cleanup deletes what this process created unless it is excluded:
	// its own node ports on 192.168.50.10 stay too (exclusion wins, as
	// in kube-proxy), everything else goes.
	servers, _ := h.k.VirtualServers()
	if len(servers) < 2 || !slices.ContainsFunc(servers, func(v *VirtualServer) bool { return v.Key == foreign.Key }) {
		t.Fatalf("after cleanup: %v", servers)
	}
	for _, v := range servers {
		if v.Addr != netip.MustParseAddr("192.168.50.10") {
			t.Errorf("cleanup left %s (not excluded)", v.Key)
		}
	}
	// Without exclusion, the same sync deletes it (node address, node-port range).
	h2 := newHarness()
	if err := h2.k.AddService(foreign); err != nil {
		t.Fatal(err)
	}
	b2 := h2.backend(t)
	mustSync(t, b2, richSnapshot())
	if h2.k.servers[foreign.Key] != nil {
		t.Fatal("control: the server is not deleted without exclusion, the test proves nothing")
	}
	if err := b2.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if servers, _ := h2.k.VirtualServers(); len(servers) != 0 {
		t.Fatalf("control: cleanup without exclusion left %v", servers)
	}
}
