package hostport

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/conntrack"
	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func hp(pod string, proto proxier.Protocol, hostIP string, port uint16, podIP string, cport uint16) proxier.HostPort {
	h := proxier.HostPort{Pod: pod, Protocol: proto, HostPort: port, PodIP: netip.MustParseAddr(podIP), ContainerPort: cport}
	if hostIP != "" {
		h.HostIP = netip.MustParseAddr(hostIP)
	}
	return h
}

func snap(fam proxier.IPFamily, hps ...proxier.HostPort) *proxier.Snapshot {
	return &proxier.Snapshot{Family: fam, Masquerade: proxier.MasqueradeConfig{MarkBit: 14}, HostPorts: hps}
}

func TestRenderGolden(t *testing.T) {
	snaps := []*proxier.Snapshot{
		snap(proxier.IPv4,
			hp("default/web", proxier.TCP, "", 8080, "10.244.0.5", 80),
			hp("default/web", proxier.UDP, "", 8080, "10.244.0.5", 80),
			hp("kube-system/dns", proxier.UDP, "10.0.0.10", 53, "10.244.0.7", 5353),
			hp("kube-system/dns", proxier.SCTP, "10.0.0.10", 9000, "10.244.0.7", 9000)),
		snap(proxier.IPv6, hp("default/web", proxier.TCP, "", 8080, "fd00:10:244::5", 80)),
	}
	got := Render(snaps)
	path := filepath.Join("testdata", "render.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("render differs from %s (go test -update to accept):\n%s", path, got)
	}
}

func TestChainNameStable(t *testing.T) {
	a := hp("ns/a", proxier.TCP, "", 8080, "10.244.0.5", 80)
	b := a
	b.PodIP, b.Pod = netip.MustParseAddr("10.244.0.9"), "ns/b"
	if ChainName(proxier.IPv4, a) != ChainName(proxier.IPv4, b) {
		t.Error("the chain name must depend on the frontend only")
	}
	c := a
	c.Protocol = proxier.UDP
	if ChainName(proxier.IPv4, a) == ChainName(proxier.IPv4, c) || ChainName(proxier.IPv4, a) == ChainName(proxier.IPv6, a) {
		t.Error("protocol and family must give distinct chains")
	}
	if n := ChainName(proxier.IPv4, a); len(n) > 28 || !strings.HasPrefix(n, ChainPrefix) {
		t.Errorf("bad chain name %q", n)
	}
}

type rig struct {
	nat  *fakeNAT
	sock *fakeSockets
	ct   *fakeConntrack
	p    *Programmer
}

func newRig() *rig {
	r := &rig{nat: newFakeNAT(), sock: &fakeSockets{open: map[string]bool{}, busy: map[string]bool{}}, ct: &fakeConntrack{}}
	r.p = Wrap(&fakeBackend{}, Config{Mode: iptexec.ModeNFT, Executor: r.nat, Listen: r.sock.listen, Conntrack: r.ct,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	return r
}

func (r *rig) sync(t *testing.T, s ...*proxier.Snapshot) proxier.SyncResult {
	t.Helper()
	res, err := r.p.Sync(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestSyncOChange(t *testing.T) {
	r := newRig()
	web := hp("default/web", proxier.TCP, "", 8080, "10.244.0.5", 80)
	dns := hp("default/dns", proxier.UDP, "", 5353, "10.244.0.7", 53)
	r.ct.flows = []conntrack.Flow{
		{Protocol: proxier.UDP, Orig: conntrack.Tuple{Src: netip.MustParseAddrPort("192.0.2.100:4000"), Dst: netip.MustParseAddrPort("10.0.0.10:5353")},
			Reply: conntrack.Tuple{Src: netip.MustParseAddrPort("10.0.0.10:5353"), Dst: netip.MustParseAddrPort("192.0.2.100:4000")}},
		{Protocol: proxier.UDP, Orig: conntrack.Tuple{Src: netip.MustParseAddrPort("192.0.2.100:4000"), Dst: netip.MustParseAddrPort("10.0.0.10:53")},
			Reply: conntrack.Tuple{Src: netip.MustParseAddrPort("10.0.0.10:53"), Dst: netip.MustParseAddrPort("192.0.2.100:4000")}},
	}

	// First sync: everything, with the jumps.
	res := r.sync(t, snap(proxier.IPv4, web))
	if len(r.nat.restores) != 1 || !res.Wrote {
		t.Fatalf("first sync: %d restores", len(r.nat.restores))
	}
	first := r.nat.restores[0]
	for _, want := range []string{"-A PREROUTING -m addrtype --dst-type LOCAL", "-A OUTPUT -m addrtype", ChainName(proxier.IPv4, web), "DNAT --to-destination 10.244.0.5:80"} {
		if !strings.Contains(first, want) {
			t.Errorf("first restore lacks %q:\n%s", want, first)
		}
	}
	if !r.sock.open["tcp4 0.0.0.0:8080"] {
		t.Errorf("port not reserved: %v", r.sock.open)
	}

	// Same mappings: no read, no write.
	saves := r.nat.saves
	res = r.sync(t, snap(proxier.IPv4, web))
	if len(r.nat.restores) != 1 || res.Wrote || r.nat.saves != saves {
		t.Fatalf("unchanged sync wrote or read: %d restores, %d saves", len(r.nat.restores), r.nat.saves-saves)
	}

	// A new UDP mapping: only its chain and the dispatch chain; conntrack
	// entries to its port go, others stay.
	r.sync(t, snap(proxier.IPv4, web, dns))
	if len(r.nat.restores) != 2 {
		t.Fatalf("want one more restore, got %d", len(r.nat.restores)-1)
	}
	second := r.nat.restores[1]
	if strings.Contains(second, ChainName(proxier.IPv4, web)+" -") || strings.Contains(second, "PREROUTING") {
		t.Errorf("the unchanged mapping or the jumps were rewritten:\n%s", second)
	}
	if !strings.Contains(second, ":"+ChainName(proxier.IPv4, dns)) || !strings.Contains(second, ":"+DispatchChain) {
		t.Errorf("new chain or dispatch missing:\n%s", second)
	}
	if len(r.ct.deleted) != 1 || r.ct.deleted[0].Orig.Dst.Port() != 5353 || len(r.ct.flows) != 1 {
		t.Errorf("conntrack: deleted %v, kept %v", r.ct.deleted, r.ct.flows)
	}
	if !r.sock.open["udp4 0.0.0.0:5353"] {
		t.Errorf("udp port not reserved: %v", r.sock.open)
	}

	// Removing the web pod deletes its chain and releases its port.
	r.sync(t, snap(proxier.IPv4, dns))
	third := r.nat.restores[2]
	if !strings.Contains(third, "-X "+ChainName(proxier.IPv4, web)) {
		t.Errorf("removed chain not deleted:\n%s", third)
	}
	if r.sock.open["tcp4 0.0.0.0:8080"] {
		t.Error("port of removed mapping still reserved")
	}
	tbl := r.nat.table("iptables-nft")
	if _, ok := tbl[ChainName(proxier.IPv4, web)]; ok {
		t.Error("chain still in the kernel")
	}

	// Verify with nothing drifted: a read, no write.
	s := snap(proxier.IPv4, dns)
	s.Verify = true
	saves = r.nat.saves
	if res := r.sync(t, s); res.Wrote || len(r.nat.restores) != 3 {
		t.Fatalf("verify of an untouched kernel wrote: %+v", res)
	}
	if r.nat.saves != saves || r.nat.lists != 1 {
		t.Errorf("verify should list its chains (%d lists), not save the nat table (%d saves)", r.nat.lists, r.nat.saves-saves)
	}
	// Someone flushes the mapping chain and deletes a jump: repaired.
	tbl[ChainName(proxier.IPv4, dns)] = nil
	tbl["OUTPUT"] = nil
	res = r.sync(t, s)
	if !res.Wrote || res.Repaired["chain"] != 1 || res.Repaired["jump"] != 1 {
		t.Fatalf("drift not repaired: %+v", res)
	}
	if len(tbl) == 0 || len(r.nat.table("iptables-nft")["OUTPUT"]) != 1 || len(r.nat.table("iptables-nft")[ChainName(proxier.IPv4, dns)]) != 3 {
		t.Errorf("kernel after repair: %v", r.nat.table("iptables-nft"))
	}

	// Cleanup removes every chain and jump and releases every port.
	if err := r.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	for c, rules := range r.nat.table("iptables-nft") {
		if strings.HasPrefix(c, ChainPrefix) || len(rules) > 0 {
			t.Errorf("left after cleanup: %s %v", c, rules)
		}
	}
	if len(r.sock.open) != 0 {
		t.Errorf("sockets left: %v", r.sock.open)
	}
}

func TestRestartAdoptsKernelState(t *testing.T) {
	r := newRig()
	web := hp("default/web", proxier.TCP, "10.0.0.10", 8080, "10.244.0.5", 80)
	gone := hp("default/gone", proxier.TCP, "", 9090, "10.244.0.6", 80)
	r.sync(t, snap(proxier.IPv4, web, gone))
	// A new process: the first sync reads the kernel and writes only the
	// difference (the gone pod's chain).
	r2 := newRig()
	r2.nat = r.nat
	r2.p.cfg.Executor = r.nat
	before := len(r.nat.restores)
	r2.sync(t, snap(proxier.IPv4, web))
	if len(r.nat.restores) != before+1 {
		t.Fatalf("restores: %d", len(r.nat.restores)-before)
	}
	text := r.nat.restores[before]
	if strings.Contains(text, ":"+ChainName(proxier.IPv4, web)) || !strings.Contains(text, "-X "+ChainName(proxier.IPv4, gone)) || strings.Contains(text, "PREROUTING") {
		t.Errorf("restart restore:\n%s", text)
	}
}

func TestBusyPortStillProgrammed(t *testing.T) {
	r := newRig()
	r.sock.busy["tcp4 10.0.0.10:8080"] = true
	web := hp("default/web", proxier.TCP, "10.0.0.10", 8080, "10.244.0.5", 80)
	r.sync(t, snap(proxier.IPv4, web))
	if _, ok := r.nat.table("iptables-nft")[ChainName(proxier.IPv4, web)]; !ok {
		t.Error("mapping of a busy port not programmed")
	}
	// The squatter leaves: the next sync takes the port.
	delete(r.sock.busy, "tcp4 10.0.0.10:8080")
	r.sync(t, snap(proxier.IPv4, web))
	if !r.sock.open["tcp4 10.0.0.10:8080"] {
		t.Error("port not reserved once free")
	}
}

func TestDisabledRemovesLeftovers(t *testing.T) {
	r := newRig()
	r.sync(t, snap(proxier.IPv4, hp("default/web", proxier.TCP, "", 8080, "10.244.0.5", 80)))
	off := Wrap(&fakeBackend{}, Config{Mode: iptexec.ModeNFT, Executor: r.nat, Disabled: true, Listen: r.sock.listen, Conntrack: r.ct,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, err := off.Sync(context.Background(), []*proxier.Snapshot{snap(proxier.IPv4, hp("default/web", proxier.TCP, "", 8080, "10.244.0.5", 80))}); err != nil {
		t.Fatal(err)
	}
	for c, rules := range r.nat.table("iptables-nft") {
		if strings.HasPrefix(c, ChainPrefix) || len(rules) > 0 {
			t.Errorf("left with --hostport-mode=off: %s %v", c, rules)
		}
	}
	n := len(r.nat.restores)
	if _, err := off.Sync(context.Background(), []*proxier.Snapshot{snap(proxier.IPv4)}); err != nil || len(r.nat.restores) != n {
		t.Errorf("off mode wrote again: %v", err)
	}
	text, _ := off.Render([]*proxier.Snapshot{snap(proxier.IPv4)})
	if strings.Contains(text, DispatchChain) {
		t.Error("off mode renders host ports")
	}
}

func TestAutoLeavesHostPortsToPortmap(t *testing.T) {
	for _, portmap := range []bool{false, true} {
		r := newRig()
		if portmap {
			r.nat.table("iptables-nft")[PortmapChain] = nil
		}
		r.p.cfg.Auto = true
		r.sync(t, snap(proxier.IPv4, hp("default/web", proxier.TCP, "", 8080, "10.244.0.5", 80)))
		_, programmed := r.nat.table("iptables-nft")[DispatchChain]
		if programmed == portmap {
			t.Errorf("portmap chain present %v: switchyard programmed host ports %v", portmap, programmed)
		}
		if portmap && len(r.sock.open) != 0 {
			t.Errorf("ports reserved beside portmap: %v", r.sock.open)
		}
	}
}
