package ipvs

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// dumpOf copies a desired state as the kernel would report it.
func dumpOf(st *State) *Dump {
	d := &Dump{Addresses: slices.Clone(st.Addresses)}
	for _, v := range st.Servers {
		c := *v
		c.Service, c.ServiceProtocol = "", ""
		c.Dests = slices.Clone(v.Dests)
		d.Servers = append(d.Servers, &c)
	}
	for _, s := range st.Sets {
		c := *s
		c.Comment = ""
		c.Members = slices.Clone(s.Members)
		d.Sets = append(d.Sets, &c)
	}
	return d
}

func opStrings(ops []Op) []string {
	var out []string
	for _, o := range ops {
		out = append(out, o.String())
	}
	return out
}

// netOps drops set member operations.
func netOps(ops []Op) []Op {
	return slices.DeleteFunc(slices.Clone(ops), func(o Op) bool { return o.Kind == OpAddMember || o.Kind == OpDelMember })
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func opts(term map[DestKey]time.Time) DiffOptions {
	return DiffOptions{Now: t0, GracePeriod: 15 * time.Minute, Terminating: term}
}

func TestDiffEqualIsEmpty(t *testing.T) {
	st := mustRender(t, richSnapshot())
	ops, term := Diff(st, dumpOf(st), opts(nil))
	if len(ops) != 0 || len(term) != 0 {
		t.Fatalf("ops on equal state: %v", opStrings(ops))
	}
}

func TestDiffFromEmpty(t *testing.T) {
	st := mustRender(t, snapshot(svc("web", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.5:8080", true))))
	st.Sets = nil // sets checked elsewhere
	ops, _ := Diff(st, &Dump{}, opts(nil))
	want := []string{
		"add-address 10.96.0.10",
		"add-service TCP  10.96.0.10:80 rr",
		"add-dest TCP  10.96.0.10:80 -> 10.244.1.5:8080 weight 1",
	}
	if got := opStrings(ops); !slices.Equal(got, want) {
		t.Fatalf("ops:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDiffExactOperations(t *testing.T) {
	old := mustRender(t, snapshot(
		svc("a", proxier.TCP, "10.96.0.1", 80, ep("10.244.1.1:80", true), ep("10.244.1.2:80", true)),
		svc("gone", proxier.TCP, "10.96.0.9", 80, ep("10.244.1.9:80", true)),
	))
	a := svc("a", proxier.TCP, "10.96.0.1", 80, ep("10.244.1.1:80", true), ep("10.244.1.3:80", true))
	a.Scheduler = "lc"
	now := mustRender(t, snapshot(a))
	dump := dumpOf(old)
	ops, _ := Diff(now, dump, opts(nil))
	var got []string
	for _, s := range opStrings(ops) {
		if !strings.Contains(s, "member") {
			got = append(got, s)
		}
	}
	want := []string{
		"update-service TCP  10.96.0.1:80 lc",
		"add-dest TCP  10.96.0.1:80 -> 10.244.1.3:80 weight 1",
		"del-dest TCP  10.96.0.1:80 -> 10.244.1.2:80 weight 1", // no connections: deleted at once
		"del-service TCP  10.96.0.9:80",
		"del-address 10.96.0.9",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ops:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var members []string
	for _, s := range opStrings(ops) {
		if strings.Contains(s, "member") {
			members = append(members, s)
		}
	}
	for _, w := range []string{"del-member SWY-CLUSTER-IP 10.96.0.9,tcp:80", "add-member SWY-LOOP-BACK 10.244.1.3,tcp:80,10.244.1.3", "del-member SWY-IPVS-IPS 10.96.0.9"} {
		if !slices.Contains(members, w) {
			t.Errorf("missing %q in %v", w, members)
		}
	}
}

func TestDiffGracefulTermination(t *testing.T) {
	k := key("10.96.0.1", proxier.TCP, 80)
	old := mustRender(t, snapshot(svc("a", proxier.TCP, "10.96.0.1", 80, ep("10.244.1.1:80", true), ep("10.244.1.2:80", true))))
	now := mustRender(t, snapshot(svc("a", proxier.TCP, "10.96.0.1", 80, ep("10.244.1.1:80", true))))
	dump := dumpOf(old)
	gone := netip.MustParseAddrPort("10.244.1.2:80")
	dump.Server(k).Dests[1].ActiveConns = 3
	dk := DestKey{Server: k, Dest: gone}

	// 1. Still has connections: quiesce.
	ops, term := Diff(now, dump, opts(nil))
	ops = netOps(ops)
	if got := opStrings(ops); !slices.Equal(got, []string{"update-dest TCP  10.96.0.1:80 -> 10.244.1.2:80 weight 0"}) {
		t.Fatalf("ops %v", got)
	}
	if !term[dk].Equal(t0) {
		t.Fatalf("terminating %v", term)
	}
	// 2. Weight 0, connections left, within the grace period: nothing.
	dump.Server(k).Dests[1].Weight = 0
	o := opts(term)
	o.Now = t0.Add(5 * time.Minute)
	ops, term = Diff(now, dump, o)
	ops = netOps(ops)
	if len(ops) != 0 || !term[dk].Equal(t0) {
		t.Fatalf("ops %v term %v", opStrings(ops), term)
	}
	// 3. Grace period over: deleted.
	o = opts(term)
	o.Now = t0.Add(15 * time.Minute)
	ops, term = Diff(now, dump, o)
	ops = netOps(ops)
	if got := opStrings(ops); !slices.Equal(got, []string{"del-dest TCP  10.96.0.1:80 -> 10.244.1.2:80 weight 0"}) || len(term) != 0 {
		t.Fatalf("ops %v term %v", got, term)
	}
	// 4. Connections drained before the timeout: deleted.
	dump.Server(k).Dests[1].ActiveConns = 0
	ops, _ = Diff(now, dump, opts(map[DestKey]time.Time{dk: t0}))
	ops = netOps(ops)
	if got := opStrings(ops); !slices.Equal(got, []string{"del-dest TCP  10.96.0.1:80 -> 10.244.1.2:80 weight 0"}) {
		t.Fatalf("ops %v", got)
	}
	// 5. After a restart (no memory), a weight-0 server with connections
	// waits a full grace period from now.
	dump.Server(k).Dests[1].InactiveConns = 1
	ops, term = Diff(now, dump, opts(nil))
	ops = netOps(ops)
	if len(ops) != 0 || !term[dk].Equal(t0) {
		t.Fatalf("ops %v term %v", opStrings(ops), term)
	}
}

// kubernetes#92019: a weight-0 real server that is desired again (also
// after a restart, with no memory of it) gets its weight back.
func TestDiffRecoversWeightZero(t *testing.T) {
	st := mustRender(t, snapshot(svc("a", proxier.TCP, "10.96.0.1", 80, ep("10.244.1.1:80", true), ep("10.244.1.2:80", true))))
	dump := dumpOf(st)
	k := key("10.96.0.1", proxier.TCP, 80)
	dump.Server(k).Dests[1].Weight = 0
	dump.Server(k).Dests[1].ActiveConns = 2
	dk := DestKey{Server: k, Dest: netip.MustParseAddrPort("10.244.1.2:80")}
	for _, term := range []map[DestKey]time.Time{nil, {dk: t0.Add(-time.Minute)}} {
		ops, newTerm := Diff(st, dump, opts(term))
		if got := opStrings(ops); !slices.Equal(got, []string{"update-dest TCP  10.96.0.1:80 -> 10.244.1.2:80 weight 1"}) {
			t.Fatalf("ops %v", got)
		}
		if len(newTerm) != 0 {
			t.Fatalf("still terminating: %v", newTerm)
		}
	}
}

func TestDiffUDPDeletesAtOnce(t *testing.T) {
	old := mustRender(t, snapshot(svc("dns", proxier.UDP, "10.96.0.53", 53, ep("10.244.1.1:53", true), ep("10.244.1.2:53", true))))
	now := mustRender(t, snapshot(svc("dns", proxier.UDP, "10.96.0.53", 53, ep("10.244.1.1:53", true))))
	dump := dumpOf(old)
	dump.Server(key("10.96.0.53", proxier.UDP, 53)).Dests[1].InactiveConns = 7
	ops, _ := Diff(now, dump, opts(nil))
	var got []string
	for _, s := range opStrings(ops) {
		if !strings.Contains(s, "member") {
			got = append(got, s)
		}
	}
	if !slices.Equal(got, []string{"del-dest UDP  10.96.0.53:53 -> 10.244.1.2:53 weight 1"}) {
		t.Fatalf("ops %v", got)
	}
}

func TestDiffLeavesForeignServers(t *testing.T) {
	st := mustRender(t, snapshot(svc("a", proxier.TCP, "10.96.0.1", 80, ep("10.244.1.1:80", true))))
	dump := dumpOf(st)
	foreign := &VirtualServer{Key: key("172.17.0.1", proxier.TCP, 8080), Scheduler: "wlc"}
	foreignNode := &VirtualServer{Key: key("192.168.50.10", proxier.TCP, 8080), Scheduler: "rr"}
	foreignFWM := &VirtualServer{Key: Key{Family: proxier.IPv4, FWMark: 7}, Scheduler: "rr"}
	ourFWM := &VirtualServer{Key: Key{Family: proxier.IPv4, FWMark: FWMarkBit | 5}, Scheduler: "rr"}
	staleNodePort := &VirtualServer{Key: key("192.168.50.10", proxier.TCP, 30999), Scheduler: "rr"}
	dump.Servers = append(dump.Servers, foreign, foreignNode, foreignFWM, ourFWM, staleNodePort)
	o := opts(nil)
	o.Owned = func(k Key) bool { return k.Addr == netip.MustParseAddr("192.168.50.10") && k.Port >= 30000 }
	ops, _ := Diff(st, dump, o)
	want := []string{"del-service FWM  268435461 IPv4", "del-service TCP  192.168.50.10:30999"}
	if got := opStrings(ops); !slices.Equal(got, want) {
		t.Fatalf("ops %v, want %v", got, want)
	}
}

// Server finds a dumped virtual server.
func (d *Dump) Server(k Key) *VirtualServer {
	for _, v := range d.Servers {
		if v.Key == k {
			return v
		}
	}
	return nil
}
