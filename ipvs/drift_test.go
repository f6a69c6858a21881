package ipvs

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// periodic returns richSnapshot as a periodic sync sees it.
func periodic() *proxier.Snapshot {
	s := richSnapshot()
	s.FullSync, s.Verify = false, true
	return s
}

// partial returns richSnapshot as a triggered sync sees it.
func partial() *proxier.Snapshot {
	s := richSnapshot()
	s.FullSync = false
	return s
}

func TestDriftRepairedAndReported(t *testing.T) {
	web := key("10.96.0.10", proxier.TCP, 80)
	dns := key("10.96.0.53", proxier.UDP, 53)
	for _, tc := range []struct {
		name   string
		tamper func(h *harness)
		want   map[string]int
		snap   func() *proxier.Snapshot
	}{
		{"virtual server deleted", func(h *harness) { delete(h.k.servers, web) }, map[string]int{"virtual-server": 1}, partial},
		{"real server deleted", func(h *harness) { h.k.servers[web].Dests = h.k.servers[web].Dests[1:] }, map[string]int{"real-servers": 1}, partial},
		{"real server quiesced", func(h *harness) {
			d := slices.Clone(h.k.servers[web].Dests)
			d[0].Weight = 0
			h.k.servers[web].Dests = d
		}, map[string]int{"real-servers": 1}, partial},
		{"real server added", func(h *harness) {
			h.k.servers[dns].Dests = append(slices.Clone(h.k.servers[dns].Dests), RealServer{Addr: netip.MustParseAddrPort("192.0.2.9:53"), Weight: 1})
		}, map[string]int{"real-servers": 1}, partial},
		{"scheduler changed", func(h *harness) { h.k.servers[dns].Scheduler = "rr" }, map[string]int{"virtual-server": 1}, partial},
		{"virtual server added on a service address", func(h *harness) {
			k := key("10.96.0.10", proxier.TCP, 8080)
			h.k.servers[k] = &VirtualServer{Key: k, Scheduler: "rr"}
		}, map[string]int{"virtual-server": 1}, partial},
		{"address removed from swy-ipvs0", func(h *harness) { delete(h.k.addrs, netip.MustParseAddr("10.96.0.53")) }, map[string]int{"address": 1}, partial},
		{"address added to swy-ipvs0", func(h *harness) { h.k.addrs[netip.MustParseAddr("10.96.9.9")] = true }, map[string]int{"address": 1}, partial},
		{"ipset entry deleted", func(h *harness) {
			s := h.ex.sets["SWY-CLUSTER-IP"]
			s.Members = s.Members[1:]
		}, map[string]int{"ipset-entries": 1}, partial},
		{"ipset destroyed", func(h *harness) { delete(h.ex.sets, "SWY-NODE-PORT-TCP") }, map[string]int{"ipset": 1}, partial},
		{"iptables chain flushed", func(h *harness) { h.ex.table("iptables-nft", "nat").rules[chainServices] = nil }, map[string]int{"chain": 1}, periodic},
		{"iptables chain rule changed", func(h *harness) {
			f := h.ex.table("iptables-nft", "filter")
			r := slices.Clone(f.rules[chainInput])
			r[0] = "-j ACCEPT"
			f.rules[chainInput] = r
		}, map[string]int{"chain": 1}, periodic},
		{"hook deleted (periodic: iptables-save)", func(h *harness) { h.ex.table("iptables-nft", "nat").rules["OUTPUT"] = nil }, map[string]int{"jump": 1}, periodic},
		{"hook deleted (triggered: iptables -C)", func(h *harness) { h.ex.table("iptables-nft", "nat").rules["PREROUTING"] = nil }, map[string]int{"jump": 1}, partial},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness()
			b := h.backend(t)
			mustSync(t, b, richSnapshot())
			want := h.ex.table("iptables-nft", "nat")
			wantNat := maps.Clone(want.rules)
			tc.tamper(h)
			res := mustSync(t, b, tc.snap())
			if !res.Wrote || !reflect.DeepEqual(res.Repaired, tc.want) {
				t.Fatalf("sync after drift: %+v, want %v repaired", res, tc.want)
			}
			assertMatches(t, h, richSnapshot())
			if got := h.ex.table("iptables-nft", "nat").rules; !reflect.DeepEqual(got, wantNat) {
				t.Fatalf("nat rules after repair:\n%v\nwant\n%v", got, wantNat)
			}
			h.resetCounts()
			if res := mustSync(t, b, periodic()); res.Wrote || res.Repaired != nil || len(h.k.writes) != 0 || h.ex.restores != 0 {
				t.Fatalf("sync after repair: %+v writes %v restores %d", res, h.k.writes, h.ex.restores)
			}
		})
	}
}

// Changes switchyard makes itself, graceful termination included, are not
// drift.
func TestNoDriftForOwnChanges(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	two := snapshot(svc("web", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.1:80", true), ep("10.244.1.2:80", true)))
	one := snapshot(svc("web", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.1:80", true)))
	mustSync(t, b, two)
	h.k.setConns(key("10.96.0.10", proxier.TCP, 80), netip.MustParseAddrPort("10.244.1.2:80"), 1, 0)
	for i, s := range []*proxier.Snapshot{one, one, two, richSnapshot(), one} {
		s.Verify = true
		if res := mustSync(t, b, s); res.Repaired != nil {
			t.Fatalf("sync %d reports drift %v", i, res.Repaired)
		}
	}
	// An idle periodic sync reads and writes nothing else.
	h.resetCounts()
	if res := mustSync(t, b, one); res.Wrote || len(h.k.writes) != 0 || h.ex.restores != 0 {
		t.Fatalf("idle periodic sync wrote: %+v %v", res, h.k.writes)
	}
}
