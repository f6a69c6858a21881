package ipvs

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if string(want) != got {
		wl, gl := strings.Split(string(want), "\n"), strings.Split(got, "\n")
		for i := 0; i < len(wl) || i < len(gl); i++ {
			var w, g string
			if i < len(wl) {
				w = wl[i]
			}
			if i < len(gl) {
				g = gl[i]
			}
			if w != g {
				t.Fatalf("%s differs at line %d:\nwant: %s\ngot:  %s", path, i+1, w, g)
			}
		}
	}
}

func TestGolden(t *testing.T) {
	v6 := snapshot(svc("web6", proxier.TCP, "fd00:96::10", 80, ep("[fd00:244::5]:8080", true)))
	v6.Family = proxier.IPv6
	v6.NodeIPs = ips("fd00:50::10")
	v6.Masquerade.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:244::/64")}
	v6.Services[0].NodePort = 30080
	resolve(v6.Services[0])
	masqAll := snapshot(svc("web", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.5:8080", true)))
	masqAll.Masquerade = proxier.MasqueradeConfig{All: true, MarkBit: 14}
	selected := snapshot(svc("web", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.5:8080", true)))
	selected.Services[0].NodePort = 30080
	resolve(selected.Services[0])
	selected.NodePortAddresses = proxier.NodePortAddresses{Addrs: ips("192.168.50.10")}
	selected.Masquerade.ClusterCIDRs = nil
	for name, snaps := range map[string][]*proxier.Snapshot{
		"rich":                {richSnapshot()},
		"dual-stack":          {snapshot(svc("web", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.5:8080", true))), v6},
		"masquerade-all":      {masqAll},
		"nodeport-addresses":  {selected},
		"scheduler-wlc-empty": {snapshot()},
	} {
		t.Run(name, func(t *testing.T) {
			sched := ""
			if strings.Contains(name, "wlc") {
				sched = "wlc"
			}
			b, err := New(Config{Scheduler: sched, LocalAddresses: noLocalAddresses})
			if err != nil {
				t.Fatal(err)
			}
			out, err := b.Render(snaps)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name, out)
		})
	}
}

func mustRender(t *testing.T, snaps ...*proxier.Snapshot) *State {
	t.Helper()
	st, err := Render(snaps, RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func key(addr string, p proxier.Protocol, port uint16) Key {
	return Key{Family: proxier.IPv4, Addr: netip.MustParseAddr(addr), Protocol: p, Port: port}
}

func dests(v *VirtualServer) string {
	var s []string
	for _, d := range v.Dests {
		s = append(s, d.Addr.String())
	}
	return strings.Join(s, " ")
}

func TestRenderAddressKindsAndEndpoints(t *testing.T) {
	st := mustRender(t, richSnapshot())
	// Node IPs are never bound; cluster, external and LB IPs are.
	var bound []string
	for _, a := range st.Addresses {
		bound = append(bound, a.String())
	}
	if got, want := strings.Join(bound, " "), "10.96.0.10 10.96.0.20 10.96.0.30 10.96.0.40 10.96.0.53 203.0.113.7 203.0.113.8"; got != want {
		t.Errorf("bound addresses = %s, want %s", got, want)
	}
	cases := []struct {
		k     Key
		dests string
	}{
		{key("10.96.0.20", proxier.TCP, 443), "10.244.1.6:8443 10.244.3.3:8443"}, // cluster IP: cluster endpoints
		{key("192.168.50.10", proxier.TCP, 31443), "10.244.1.6:8443"},            // eTP Local node port: local only
		{key("10.0.2.15", proxier.TCP, 31443), "10.244.1.6:8443"},                // every node IP (All)
		{key("203.0.113.7", proxier.TCP, 443), "10.244.1.6:8443"},                // LB IP: local only
		{key("203.0.113.8", proxier.TCP, 443), "10.244.1.6:8443"},                // external IP: local only
		{key("192.168.50.10", proxier.TCP, 30080), "10.244.1.5:8080 10.244.2.7:8080"},
		{key("10.0.2.15", proxier.SCTP, 30868), ""}, // eTP Local without local endpoints
	}
	for _, c := range cases {
		v := st.Server(c.k)
		if v == nil {
			t.Errorf("no virtual server %s", c.k)
			continue
		}
		if got := dests(v); got != c.dests {
			t.Errorf("%s dests = %q, want %q", c.k, got, c.dests)
		}
	}
	// Internal traffic to eTP Local addresses: a fwmark server with the
	// cluster endpoints, and mangle rules that select it.
	var fwm []*VirtualServer
	for _, v := range st.Servers {
		if v.FWMark != 0 {
			fwm = append(fwm, v)
		}
	}
	if len(fwm) != 2 {
		t.Fatalf("want 2 fwmark servers (lb, remote-only), got %d", len(fwm))
	}
	for _, v := range fwm {
		want := map[string]string{"default/lb": "10.244.1.6:8443 10.244.3.3:8443", "default/remote-only": "10.244.3.4:3868"}[v.Service]
		if got := dests(v); got != want {
			t.Errorf("fwmark %d (%s) dests %q, want %q", v.FWMark, v.Service, got, want)
		}
		if v.FWMark&FWMarkBit == 0 {
			t.Errorf("fwmark %#x lacks FWMarkBit", v.FWMark)
		}
		for _, addr := range []string{"203.0.113.7/32 -p tcp --dport 443", "192.168.50.10/32 -p tcp --dport 31443"} {
			if v.Service == "default/lb" && !strings.Contains(st.Rules[0].Text, "-A SWY-IPVS-ETP-LOCAL -d "+addr) {
				t.Errorf("missing mangle mark for %s", addr)
			}
		}
	}
	if !strings.Contains(st.Rules[0].Text, "-A SWY-IPVS-PREROUTING -s 10.244.0.0/16") {
		t.Error("pod traffic does not reach SWY-IPVS-ETP-LOCAL")
	}
	// Scheduler annotation and affinity.
	if v := st.Server(key("10.96.0.53", proxier.UDP, 53)); v.Scheduler != "sh" {
		t.Errorf("dns scheduler %q, want sh", v.Scheduler)
	}
	if v := st.Server(key("10.96.0.10", proxier.TCP, 80)); !v.Persistent || v.Timeout != 10800 || v.Scheduler != "rr" {
		t.Errorf("web: persistent=%v timeout=%d sched=%s", v.Persistent, v.Timeout, v.Scheduler)
	}
	// Sets.
	member := func(set, m string) bool {
		s := st.Set(set)
		return s != nil && strings.Contains(" "+strings.Join(s.Members, " ")+" ", " "+m+" ")
	}
	for _, c := range [][2]string{
		{"SWY-NO-ENDPOINTS", "10.96.0.30,tcp:80"},
		{"SWY-NO-ENDPOINTS", "192.168.50.10,tcp:30030"},
		{"SWY-NO-LOCAL-ENDPOINTS", "10.0.2.15,sctp:30868"},
		{"SWY-NODE-PORT-LOCAL-TCP", "31443"},
		{"SWY-NODE-PORT-SCTP", "30868"},
		{"SWY-LOAD-BALANCER-SOURCE-CIDR", "203.0.113.7,tcp:443,198.51.100.0/24"},
		{"SWY-LOAD-BALANCER-SOURCE-CIDR", "203.0.113.7,tcp:443,203.0.113.7"}, // a node IP is in a range
		{"SWY-LOOP-BACK", "10.244.1.5,tcp:8080,10.244.1.5"},
		{"SWY-EXTERNAL-IP-LOCAL", "203.0.113.8,tcp:443"},
		{"SWY-HEALTH-CHECK-NODE-PORT", "32000"},
		{"SWY-IPVS-IPS", "203.0.113.7"},
	} {
		if !member(c[0], c[1]) {
			t.Errorf("set %s lacks %s", c[0], c[1])
		}
	}
	if member("SWY-IPVS-IPS", "192.168.50.10") {
		t.Error("node IP in SWY-IPVS-IPS")
	}
}

func TestRenderUnknownScheduler(t *testing.T) {
	// An unknown annotation value falls back to the default scheduler: one
	// object must not fail every other service's sync.
	s := richSnapshot()
	s.Services[0].Scheduler = "nope\" -j ACCEPT"
	st, err := Render([]*proxier.Snapshot{s}, RenderOptions{Scheduler: "wlc"})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range st.Servers {
		if v.Service == s.Services[0].Name.String() && v.Scheduler != "wlc" {
			t.Errorf("%s: scheduler %q, want the default wlc", v.Service, v.Scheduler)
		}
	}
	if _, err := Render([]*proxier.Snapshot{s}, RenderOptions{Scheduler: "nope"}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("unknown default scheduler: err = %v", err)
	}
	if _, err := New(Config{Scheduler: "bogus"}); err == nil {
		t.Fatal("New accepted an unknown scheduler")
	}
}

func TestFWMarksStable(t *testing.T) {
	a := mustRender(t, richSnapshot())
	// Adding an unrelated eTP Local service keeps existing marks.
	s := richSnapshot()
	extra := svc("zzz", proxier.TCP, "10.96.0.99", 80, ep("10.244.9.9:80", true))
	extra.NodePort = 30999
	extra.ExternalPolicyLocal = true
	resolve(extra)
	s.Services = append(s.Services, extra)
	b := mustRender(t, s)
	marks := func(st *State) map[string]uint32 {
		m := map[string]uint32{}
		for _, v := range st.Servers {
			if v.FWMark != 0 {
				m[v.Service] = v.FWMark
			}
		}
		return m
	}
	ma, mb := marks(a), marks(b)
	for svc, m := range ma {
		if mb[svc] != m {
			t.Errorf("%s mark changed %#x -> %#x", svc, m, mb[svc])
		}
	}
	if len(mb) != 3 {
		t.Errorf("want 3 marks, got %v", mb)
	}
}

// With --nodeport-addresses empty (All), node ports answer on every local
// address of the family, not only the Node object's IPs: the lab's node
// has its outside gateway address too, and kube-proxy's IPVS mode binds
// node ports on all of them (found by test/ipvs-e2e). The planner lists
// them (NodePortAddresses.Addrs with All); the renderer binds each.
func TestRenderNodePortsOnLocalAddresses(t *testing.T) {
	snap := snapshot(svc("web", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.5:8080", true)))
	snap.Services[0].NodePort = 30080
	snap.Services[0].ExternalPolicyLocal = true
	resolve(snap.Services[0])
	snap.NodePortAddresses = proxier.NodePortAddresses{All: true, Addrs: ips("10.0.2.15", "192.0.2.1", "192.168.50.10")}
	st, err := Render([]*proxier.Snapshot{snap}, RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"192.0.2.1", "10.0.2.15", "192.168.50.10"} {
		if st.Server(key(a, proxier.TCP, 30080)) == nil {
			t.Errorf("no node-port virtual server on %s", a)
		}
	}
	if !strings.Contains(st.Rules[0].Text, "-d 192.0.2.1/32 -p tcp --dport 30080") {
		t.Errorf("no eTP Local mark rule for the extra local address:\n%s", st.Rules[0].Text)
	}
	// Selected addresses (--nodeport-addresses) are not widened.
	snap.NodePortAddresses = proxier.NodePortAddresses{Addrs: ips("10.0.2.15")}
	st, err = Render([]*proxier.Snapshot{snap}, RenderOptions{LocalAddrs: ips("192.0.2.1")})
	if err != nil {
		t.Fatal(err)
	}
	if st.Server(key("192.0.2.1", proxier.TCP, 30080)) != nil || st.Server(key("10.0.2.15", proxier.TCP, 30080)) == nil {
		t.Errorf("selected node-port addresses: servers %v", st.Servers)
	}
}
