package iptrace

import (
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"testing"
)

var (
	nodeIP   = netip.MustParseAddr("10.0.0.10")
	extIP    = netip.MustParseAddr("192.0.2.1")
	testNode = Node{
		LocalAddrs: []netip.Addr{nodeIP, extIP},
		Routes: []Route{
			{Dst: netip.MustParsePrefix("10.244.0.0/24"), Iface: "cni0"},
			{Dst: netip.MustParsePrefix("10.244.1.0/24"), Iface: "tun0"},
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), Iface: "eth0"},
		},
	}
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func trace(t *testing.T, rs *Ruleset, p Packet) *Result {
	t.Helper()
	if p.Proto == "" {
		p.Proto = "tcp"
	}
	if p.SrcPort == 0 {
		p.SrcPort = 40000
	}
	res, err := rs.Trace(testNode, p)
	if err != nil {
		t.Fatalf("Trace(%v): %v", p, err)
	}
	return res
}

func dests(r *Result) []string {
	var out []string
	for _, d := range r.Destinations() {
		out = append(out, d.String())
	}
	return out
}

func TestPoliciesOfBuiltinChains(t *testing.T) {
	rs := MustParse(`
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp --dport 22 -j ACCEPT
-A FORWARD -d 10.244.0.5/32 -j RETURN
COMMIT
`)
	cases := []struct {
		name string
		p    Packet
		want Verdict
	}{
		{"input policy drop", Packet{Origin: FromOutside, Src: ip("192.0.2.9"), Dst: nodeIP, DstPort: 80}, Drop},
		{"input accept rule", Packet{Origin: FromOutside, Src: ip("192.0.2.9"), Dst: nodeIP, DstPort: 22}, Accept},
		{"RETURN in built-in chain takes the policy", Packet{Origin: FromOutside, Src: ip("192.0.2.9"), Dst: ip("10.244.0.5"), DstPort: 80}, Drop},
		{"output policy accept", Packet{Origin: FromNode, Src: nodeIP, Dst: ip("10.244.0.5"), DstPort: 80}, Accept},
		// A node-local packet is received on lo through INPUT, whose policy drops it.
		{"node to itself crosses INPUT", Packet{Origin: FromNode, Src: nodeIP, Dst: nodeIP, DstPort: 80}, Drop},
	}
	for _, c := range cases {
		res := trace(t, rs, c.p)
		if !res.Only(c.want) {
			t.Errorf("%s: got\n%s\nwant only %v", c.name, res, c.want)
		}
	}
	if got := rs.Policy("filter", "FORWARD"); got != "DROP" {
		t.Errorf("Policy(filter, FORWARD) = %q", got)
	}
}

func TestJumpVersusGotoReturn(t *testing.T) {
	text := `
*nat
:PREROUTING ACCEPT [0:0]
:A - [0:0]
:B - [0:0]
:C - [0:0]
-A PREROUTING -j A
-A A -%s B
-A A -j MARK --or-mark 0x1
-A B -j C
-A B -j MARK --or-mark 0x2
-A C -j MARK --or-mark 0x10
-A C -j RETURN
-A C -j MARK --or-mark 0x20
COMMIT
`
	p := Packet{Origin: FromPod, Src: ip("10.244.0.2"), Dst: ip("10.244.0.3"), DstPort: 80}
	for _, c := range []struct {
		flag string
		want uint32
	}{
		// jump: C returns into B (sets 0x2), B returns into A (sets 0x1).
		{"j", 0x13},
		// goto: B's end returns straight to PREROUTING, skipping A's mark 0x1.
		{"g", 0x12},
	} {
		rs := MustParse(fmt.Sprintf(text, c.flag))
		res := trace(t, rs, p)
		if len(res.Outcomes) != 1 || res.Outcomes[0].Mark != c.want {
			t.Errorf("-%s: outcomes\n%s\nwant one with mark %#x (got %#x)", c.flag, res, c.want, res.Outcomes[0].Mark)
		}
	}
	// goto whose target RETURNs from inside the called chain.
	rs := MustParse(`
*nat
:OUTPUT ACCEPT [0:0]
:A - [0:0]
:B - [0:0]
-A OUTPUT -j A
-A OUTPUT -j MARK --or-mark 0x100
-A A -g B
-A A -j MARK --or-mark 0x1
-A B -j RETURN
COMMIT
`)
	res := trace(t, rs, Packet{Origin: FromNode, Src: nodeIP, Dst: ip("10.244.0.3"), DstPort: 80})
	if res.Outcomes[0].Mark != 0x100 {
		t.Errorf("goto then RETURN: mark %#x, want 0x100", res.Outcomes[0].Mark)
	}
	wantPath := []string{"nat/OUTPUT", "nat/A", "nat/B", "filter/OUTPUT", "nat/POSTROUTING"}
	if !reflect.DeepEqual(res.Outcomes[0].Path, wantPath) {
		t.Errorf("path %v, want %v", res.Outcomes[0].Path, wantPath)
	}
}

func TestStatisticFollowsEveryBranch(t *testing.T) {
	rs := MustParse(`
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SVC - [0:0]
:SEP1 - [0:0]
:SEP2 - [0:0]
:SEP3 - [0:0]
-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SVC
-A OUTPUT -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SVC
-A SVC -m statistic --mode random --probability 0.33333333349 -j SEP1
-A SVC -m statistic --mode random --probability 0.50000000000 -j SEP2
-A SVC -j SEP3
-A SEP1 -p tcp -j DNAT --to-destination 10.244.0.2:8080
-A SEP2 -p tcp -j DNAT --to-destination 10.244.0.3:8080
-A SEP3 -p tcp -j DNAT --to-destination 10.244.1.4:8080
COMMIT
`)
	for _, o := range []Origin{FromPod, FromNode, FromOutside} {
		res := trace(t, rs, Packet{Origin: o, Src: ip("10.244.0.9"), Dst: ip("10.96.0.10"), DstPort: 80})
		want := []string{"10.244.0.2:8080", "10.244.0.3:8080", "10.244.1.4:8080"}
		if got := dests(res); !reflect.DeepEqual(got, want) || len(res.Outcomes) != 3 || !res.Only(Accept) {
			t.Errorf("%v: outcomes\n%s\nwant one each of %v", o, res, want)
		}
	}
	// Wrong port: no DNAT at all.
	res := trace(t, rs, Packet{Origin: FromPod, Src: ip("10.244.0.9"), Dst: ip("10.96.0.10"), DstPort: 81})
	if len(res.Destinations()) != 0 || len(res.Outcomes) != 1 {
		t.Errorf("port 81: %s", res)
	}
	// Probability 1 always matches, 0 never does: no branching.
	rs = MustParse(`
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -m statistic --mode random --probability 0.0 -j DNAT --to-destination 10.244.0.2
-A PREROUTING -m statistic --mode random --probability 1.0 -j DNAT --to-destination 10.244.0.3
COMMIT
`)
	res = trace(t, rs, Packet{Origin: FromPod, Src: ip("10.244.0.9"), Dst: ip("10.96.0.10"), DstPort: 80})
	if got := dests(res); !reflect.DeepEqual(got, []string{"10.244.0.3:80"}) || len(res.Outcomes) != 1 {
		t.Errorf("probability 0/1: %s", res)
	}
}

func TestMarkSetInNatReadInFilterAndPostrouting(t *testing.T) {
	rs := MustParse(`
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:MARK-MASQ - [0:0]
:POST - [0:0]
-A PREROUTING ! -s 10.244.0.0/16 -d 10.96.0.1/32 -j MARK-MASQ
-A PREROUTING -d 10.96.0.1/32 -j DNAT --to-destination 10.244.0.2:80
-A MARK-MASQ -j MARK --or-mark 0x4000
-A POSTROUTING -j POST
-A POST -m mark ! --mark 0x4000/0x4000 -j RETURN
-A POST -j MARK --xor-mark 0x4000
-A POST -j MASQUERADE --random-fully
COMMIT
*filter
:FORWARD DROP [0:0]
-A FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
-A FORWARD -m conntrack --ctstate DNAT -s 10.244.0.0/16 -j ACCEPT
COMMIT
`)
	out := trace(t, rs, Packet{Origin: FromOutside, InIface: "eth0", Src: ip("192.0.2.50"), Dst: ip("10.96.0.1"), DstPort: 80})
	if len(out.Outcomes) != 1 {
		t.Fatalf("outside: %s", out)
	}
	o := out.Outcomes[0]
	if o.Verdict != Accept || !o.Masqueraded || o.Mark != 0 || o.DNAT.String() != "10.244.0.2:80" {
		t.Errorf("outside client: %+v, want accepted, masqueraded, mark cleared, dnat 10.244.0.2:80", o)
	}
	in := trace(t, rs, Packet{Origin: FromPod, InIface: "veth1", Src: ip("10.244.0.7"), Dst: ip("10.96.0.1"), DstPort: 80})
	if o := in.Outcomes[0]; len(in.Outcomes) != 1 || o.Verdict != Accept || o.Masqueraded {
		t.Errorf("pod client: %s, want accepted without masquerade", in)
	}
	// No DNAT, no mark: FORWARD's policy drops it.
	other := trace(t, rs, Packet{Origin: FromOutside, Src: ip("192.0.2.50"), Dst: ip("10.244.0.9"), DstPort: 80})
	if !other.Only(Drop) {
		t.Errorf("unmarked forward: %s, want Drop", other)
	}
}

// kubeLike is a hand-written rule set in kube-proxy's iptables layout.
const kubeLike = `
# Generated by hand
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SWY-SERVICES - [0:0]
:SWY-EXTERNAL - [0:0]
:SWY-FORWARD - [0:0]
-A INPUT -m conntrack --ctstate NEW -j SWY-EXTERNAL
-A FORWARD -m conntrack --ctstate NEW -j SWY-SERVICES
-A FORWARD -j SWY-FORWARD
-A OUTPUT -m conntrack --ctstate NEW -j SWY-SERVICES
-A SWY-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "default/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A SWY-EXTERNAL -m addrtype --dst-type LOCAL -p tcp -m comment --comment "default/empty:http has no endpoints" -m tcp --dport 30020 -j REJECT --reject-with icmp-port-unreachable
-A SWY-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SWY-SERVICES - [0:0]
:SWY-NODEPORTS - [0:0]
:SWY-POSTROUTING - [0:0]
:SWY-MARK-MASQ - [0:0]
:SWY-SVC-WEB - [0:0]
:SWY-EXT-WEB - [0:0]
:SWY-SEP-A - [0:0]
:SWY-SEP-B - [0:0]
:SWY-SVC-AFF - [0:0]
:SWY-SEP-C - [0:0]
:SWY-SEP-D - [0:0]
-A PREROUTING -m comment --comment "switchyard service portals" -j SWY-SERVICES
-A OUTPUT -m comment --comment "switchyard service portals" -j SWY-SERVICES
-A POSTROUTING -m comment --comment "switchyard postrouting rules" -j SWY-POSTROUTING
-A SWY-MARK-MASQ -j MARK --or-mark 0x4000
-A SWY-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A SWY-POSTROUTING -j MARK --xor-mark 0x4000
-A SWY-POSTROUTING -m comment --comment "switchyard service traffic requiring SNAT" -j MASQUERADE --random-fully
-A SWY-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j SWY-SVC-WEB
-A SWY-SERVICES -d 10.96.0.30/32 -p udp -m comment --comment "default/aff:dns cluster IP" -m udp --dport 53 -j SWY-SVC-AFF
-A SWY-SERVICES -m comment --comment "switchyard service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j SWY-NODEPORTS
-A SWY-NODEPORTS -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j SWY-EXT-WEB
-A SWY-EXT-WEB -m comment --comment "masquerade traffic for default/web:http external destinations" -j SWY-MARK-MASQ
-A SWY-EXT-WEB -j SWY-SVC-WEB
-A SWY-SVC-WEB -d 10.96.0.10/32 ! -s 10.244.0.0/16 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j SWY-MARK-MASQ
-A SWY-SVC-WEB -m comment --comment "default/web:http -> 10.244.0.2:8080" -m statistic --mode random --probability 0.50000000000 -j SWY-SEP-A
-A SWY-SVC-WEB -m comment --comment "default/web:http -> 10.244.1.3:8080" -j SWY-SEP-B
-A SWY-SEP-A -s 10.244.0.2/32 -m comment --comment default/web:http -j SWY-MARK-MASQ
-A SWY-SEP-A -p tcp -m comment --comment default/web:http -m tcp -j DNAT --to-destination 10.244.0.2:8080
-A SWY-SEP-B -s 10.244.1.3/32 -m comment --comment default/web:http -j SWY-MARK-MASQ
-A SWY-SEP-B -p tcp -m comment --comment default/web:http -m tcp -j DNAT --to-destination 10.244.1.3:8080
-A SWY-SVC-AFF -m comment --comment "default/aff:dns -> 10.244.0.4:53" -m recent --name SWY-SEP-C --mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j SWY-SEP-C
-A SWY-SVC-AFF -m comment --comment "default/aff:dns -> 10.244.0.5:53" -m recent --name SWY-SEP-D --mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j SWY-SEP-D
-A SWY-SVC-AFF -m statistic --mode random --probability 0.50000000000 -j SWY-SEP-C
-A SWY-SVC-AFF -j SWY-SEP-D
-A SWY-SEP-C -p udp -m recent --set --name SWY-SEP-C --mask 255.255.255.255 --rsource -m udp -j DNAT --to-destination 10.244.0.4:53
-A SWY-SEP-D -p udp -m recent --set --name SWY-SEP-D --mask 255.255.255.255 --rsource -m udp -j DNAT --to-destination 10.244.0.5:53
COMMIT
`

func TestKubeProxyLikeLayout(t *testing.T) {
	rs := MustParse(kubeLike)
	web := []string{"10.244.0.2:8080", "10.244.1.3:8080"}
	cases := []struct {
		name     string
		p        Packet
		verdict  Verdict
		dests    []string
		masq     []bool // per destination, in dests order
		affinity bool
	}{
		{"pod to cluster IP", Packet{Origin: FromPod, InIface: "veth9", Src: ip("10.244.0.9"), Dst: ip("10.96.0.10"), DstPort: 80}, Accept, web, []bool{false, false}, false},
		{"off-cluster source to cluster IP", Packet{Origin: FromOutside, InIface: "eth0", Src: ip("192.0.2.9"), Dst: ip("10.96.0.10"), DstPort: 80}, Accept, web, []bool{true, true}, false},
		{"node to cluster IP", Packet{Origin: FromNode, Src: nodeIP, Dst: ip("10.96.0.10"), DstPort: 80}, Accept, web, []bool{true, true}, false},
		{"hairpin", Packet{Origin: FromPod, InIface: "veth2", Src: ip("10.244.0.2"), Dst: ip("10.96.0.10"), DstPort: 80}, Accept, web, []bool{true, false}, false},
		{"outside to node port", Packet{Origin: FromOutside, InIface: "eth0", Src: ip("192.0.2.9"), Dst: nodeIP, DstPort: 30080}, Accept, web, []bool{true, true}, false},
		{"outside to node port on second address", Packet{Origin: FromOutside, InIface: "eth0", Src: ip("192.0.2.9"), Dst: extIP, DstPort: 30080}, Accept, web, []bool{true, true}, false},
		{"node port on a non-local address is nothing", Packet{Origin: FromOutside, InIface: "eth0", Src: ip("192.0.2.9"), Dst: ip("192.0.2.77"), DstPort: 30080}, Accept, nil, nil, false},
		{"no endpoints: cluster IP rejected", Packet{Origin: FromPod, Src: ip("10.244.0.9"), Dst: ip("10.96.0.20"), DstPort: 80}, Reject, nil, nil, false},
		{"no endpoints: from node rejected", Packet{Origin: FromNode, Src: nodeIP, Dst: ip("10.96.0.20"), DstPort: 80}, Reject, nil, nil, false},
		{"no endpoints: node port rejected", Packet{Origin: FromOutside, Src: ip("192.0.2.9"), Dst: nodeIP, DstPort: 30020}, Reject, nil, nil, false},
		{"affinity udp", Packet{Origin: FromPod, Proto: "udp", Src: ip("10.244.0.9"), Dst: ip("10.96.0.30"), DstPort: 53}, Accept, []string{"10.244.0.4:53", "10.244.0.5:53"}, []bool{false, false}, true},
		{"udp to tcp service port", Packet{Origin: FromPod, Proto: "udp", Src: ip("10.244.0.9"), Dst: ip("10.96.0.10"), DstPort: 80}, Accept, nil, nil, false},
	}
	for _, c := range cases {
		res := trace(t, rs, c.p)
		if !res.Only(c.verdict) {
			t.Errorf("%s: verdicts %v, want only %v\n%s", c.name, res.Verdicts(), c.verdict, res)
			continue
		}
		if got := dests(res); !reflect.DeepEqual(got, c.dests) {
			t.Errorf("%s: destinations %v, want %v\n%s", c.name, got, c.dests, res)
		}
		for i, d := range c.dests {
			for _, o := range res.Outcomes {
				if o.DNAT.String() == d && o.Masqueraded != c.masq[i] {
					t.Errorf("%s: to %s masqueraded=%v, want %v\n%s", c.name, d, o.Masqueraded, c.masq[i], o)
				}
			}
		}
		if res.AffinityRules != c.affinity {
			t.Errorf("%s: AffinityRules = %v, want %v", c.name, res.AffinityRules, c.affinity)
		}
	}

	// Affinity: each endpoint is reachable both through a sticky hit and a
	// fresh random choice, and every path records the endpoint's name.
	res := trace(t, rs, Packet{Origin: FromPod, Proto: "udp", Src: ip("10.244.0.9"), Dst: ip("10.96.0.30"), DstPort: 53})
	kinds := map[string]bool{}
	for _, o := range res.Outcomes {
		kinds[fmt.Sprintf("%s hit=%v set=%v", o.DNAT, o.AffinityHit, o.RecentSet)] = true
	}
	var got []string
	for k := range kinds {
		got = append(got, k)
	}
	sort.Strings(got)
	want := []string{
		"10.244.0.4:53 hit=false set=[SWY-SEP-C]",
		"10.244.0.4:53 hit=true set=[SWY-SEP-C]",
		"10.244.0.5:53 hit=false set=[SWY-SEP-D]",
		"10.244.0.5:53 hit=true set=[SWY-SEP-D]",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("affinity outcomes:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The path of a node port packet names every chain in order.
	res = trace(t, rs, Packet{Origin: FromOutside, Src: ip("192.0.2.9"), Dst: nodeIP, DstPort: 30080})
	var path string
	for _, o := range res.Outcomes {
		if o.DNAT.String() == "10.244.1.3:8080" {
			path = strings.Join(o.Path, " ")
		}
	}
	wantPath := "nat/PREROUTING nat/SWY-SERVICES nat/SWY-NODEPORTS nat/SWY-EXT-WEB nat/SWY-MARK-MASQ nat/SWY-SVC-WEB nat/SWY-SEP-B " +
		"filter/FORWARD filter/SWY-SERVICES filter/SWY-FORWARD nat/POSTROUTING nat/SWY-POSTROUTING"
	if path != wantPath {
		t.Errorf("node port path\n got %s\nwant %s", path, wantPath)
	}
}

func TestInterfacesAndPorts(t *testing.T) {
	rs := MustParse(`
*filter
:FORWARD DROP [0:0]
:INPUT ACCEPT [0:0]
-A FORWARD -i veth+ -o tun0 -p tcp -m multiport --dports 80,443,8000:8100 -j ACCEPT
-A FORWARD -i eth0 -p udp ! --dport 53 -j ACCEPT
-A INPUT -i eth0 -p sctp --dport 9000 -j REJECT
-A INPUT -i eth0 -p tcp -m tcp --syn --sport 1000:2000 -j DROP
COMMIT
`)
	cases := []struct {
		p    Packet
		want Verdict
	}{
		{Packet{Origin: FromPod, InIface: "veth3", Src: ip("10.244.0.3"), Dst: ip("10.244.1.3"), DstPort: 443}, Accept},
		{Packet{Origin: FromPod, InIface: "veth3", Src: ip("10.244.0.3"), Dst: ip("10.244.1.3"), DstPort: 8050}, Accept},
		{Packet{Origin: FromPod, InIface: "veth3", Src: ip("10.244.0.3"), Dst: ip("10.244.1.3"), DstPort: 8101}, Drop},
		{Packet{Origin: FromPod, InIface: "veth3", Src: ip("10.244.0.3"), Dst: ip("10.244.0.4"), DstPort: 443}, Drop}, // -o cni0
		{Packet{Origin: FromPod, InIface: "eth1", Src: ip("10.244.0.3"), Dst: ip("10.244.1.3"), DstPort: 443}, Drop},
		{Packet{Origin: FromOutside, InIface: "eth0", Proto: "udp", Src: ip("192.0.2.3"), Dst: ip("10.244.1.3"), DstPort: 54}, Accept},
		{Packet{Origin: FromOutside, InIface: "eth0", Proto: "udp", Src: ip("192.0.2.3"), Dst: ip("10.244.1.3"), DstPort: 53}, Drop},
		{Packet{Origin: FromOutside, InIface: "eth0", Proto: "sctp", Src: ip("192.0.2.3"), Dst: nodeIP, DstPort: 9000}, Reject},
		{Packet{Origin: FromOutside, InIface: "eth0", Src: ip("192.0.2.3"), SrcPort: 1500, Dst: nodeIP, DstPort: 9000}, Drop},
		{Packet{Origin: FromOutside, InIface: "eth0", Src: ip("192.0.2.3"), SrcPort: 2500, Dst: nodeIP, DstPort: 9000}, Accept},
	}
	for _, c := range cases {
		if res := trace(t, rs, c.p); !res.Only(c.want) {
			t.Errorf("%v: %s, want %v", c.p, res, c.want)
		}
	}
}

func TestRestoreCommands(t *testing.T) {
	rs := MustParse(`
*nat
:PREROUTING ACCEPT [0:0]
:SWY-A - [0:0]
:SWY-OLD - [0:0]
[5:300] -A PREROUTING -j SWY-A
-A SWY-A -j MARK --set-xmark 0x1/0xff
-A SWY-OLD -j RETURN
COMMIT
`)
	// --noflush: declaring a chain flushes it; -I inserts; -D deletes; -X
	// removes the now-empty, unreferenced chain; -N creates one.
	err := rs.Restore(`
*nat
:SWY-A - [0:0]
:SWY-OLD - [0:0]
-N SWY-NEW
-A SWY-A -j MARK --set-mark 0x2/0x2
-I SWY-A -j MARK --or-mark 0x10
-I SWY-A 2 -j MARK --or-mark 0x20
-A SWY-A -j SWY-NEW
-D SWY-A -j MARK --or-mark 0x20
-X SWY-OLD
COMMIT
`, true)
	if err != nil {
		t.Fatal(err)
	}
	rules, _ := rs.Rules("nat", "SWY-A")
	want := []string{"-A SWY-A -j MARK --or-mark 0x10", "-A SWY-A -j MARK --set-mark 0x2/0x2", "-A SWY-A -j SWY-NEW"}
	if !reflect.DeepEqual(rules, want) {
		t.Errorf("SWY-A = %q, want %q", rules, want)
	}
	if got := rs.ChainNames("nat"); !reflect.DeepEqual(got, []string{"INPUT", "OUTPUT", "POSTROUTING", "PREROUTING", "SWY-A", "SWY-NEW"}) {
		t.Errorf("chains %v", got)
	}
	if pre, _ := rs.Rules("nat", "PREROUTING"); len(pre) != 1 {
		t.Errorf("noflush restore touched PREROUTING: %q", pre)
	}
	res := trace(t, rs, Packet{Origin: FromPod, Src: ip("10.244.0.2"), Dst: ip("10.244.0.3"), DstPort: 1})
	if res.Outcomes[0].Mark != 0x12 {
		t.Errorf("mark %#x, want 0x12", res.Outcomes[0].Mark)
	}

	// A failing restore changes nothing.
	before, _ := rs.Rules("nat", "SWY-A")
	err = rs.Restore("*nat\n:SWY-A - [0:0]\n-A SWY-A -j NOPE\nCOMMIT\n", true)
	if err == nil || !strings.Contains(err.Error(), "NOPE") {
		t.Errorf("restore with unknown target: err = %v", err)
	}
	if after, _ := rs.Rules("nat", "SWY-A"); !reflect.DeepEqual(before, after) {
		t.Errorf("failed restore changed SWY-A: %q -> %q", before, after)
	}

	// A full restore (no --noflush) replaces the table.
	if err := rs.Restore("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", false); err != nil {
		t.Fatal(err)
	}
	if got := rs.ChainNames("nat"); len(got) != 4 {
		t.Errorf("after full restore chains = %v", got)
	}
}

func TestErrorsNameTheRule(t *testing.T) {
	cases := []struct{ text, want string }{
		{"*nat\n:X - [0:0]\n-A X -m foo --bar 1 -j ACCEPT\nCOMMIT\n", `unsupported match module "foo"`},
		{"*filter\n-A INPUT -j LOG --log-prefix x\nCOMMIT\n", "unsupported option --log-prefix for target LOG"},
		{"*filter\n-A INPUT -j LOG\nCOMMIT\n", `unknown target or chain "LOG"`},
		{"*filter\n-A INPUT -p tcp -m tcp --tcp-flags SYN SYN -j ACCEPT\nCOMMIT\n", "unsupported option --tcp-flags for match tcp"},
		{"*filter\n-A INPUT --dport 80 -j ACCEPT\nCOMMIT\n", "unsupported option --dport"},
		{"*filter\n-A INPUT -j SWY-MISSING\nCOMMIT\n", `unknown target or chain "SWY-MISSING"`},
		{"*nat\n-A PREROUTING -j REJECT\nCOMMIT\n", "REJECT is only valid in the filter table"},
		{"*filter\n-A INPUT -j DNAT --to-destination 1.2.3.4\nCOMMIT\n", "DNAT is only valid in the nat table"},
		{"*filter\n-A INPUT -m comment ! --comment x -j ACCEPT\nCOMMIT\n", "cannot be negated"},
		{"*filter\n-A INPUT -m addrtype --dst-type BROADCAST -j ACCEPT\nCOMMIT\n", "addrtype BROADCAST is not modelled"},
		{"*filter\n-A INPUT -m recent --name x -j ACCEPT\nCOMMIT\n", "exactly one of --set"},
		{"*filter\n-A INPUT -j ACCEPT\n", "COMMIT expected"},
		{"*raw\n-A PREROUTING -j ACCEPT\nCOMMIT\n", "only mangle, nat and filter are traced"},
		{"*mangle\n-A PREROUTING -j DNAT --to-destination 1.2.3.4\nCOMMIT\n", "DNAT is only valid in the nat table"},
		{"*filter\n-A INPUT -m set --match-set S src,sideways -j ACCEPT\nCOMMIT\n", `bad direction "sideways"`},
		{"*filter\n-A INPUT -m set --match-set S -j ACCEPT\nCOMMIT\n", "unexpected word"},
		{"*filter\n-A INPUT -m set --return-nomatch -j ACCEPT\nCOMMIT\n", "unsupported option --return-nomatch for match set"},
		{"*filter\n-A INPUT -m ipvs --vaddr 10.0.0.1 -j ACCEPT\nCOMMIT\n", `unsupported match module "ipvs"`},
		{"*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-X B\nCOMMIT\n", "still referenced"},
		{"*nat\n:A - [0:0]\n-A A -j RETURN\n-X A\nCOMMIT\n", "still holds 1 rules"},
		{"*nat\n-X PREROUTING\nCOMMIT\n", "built-in"},
		{"*filter\n-A INPUT -s 10.0.0.300 -j ACCEPT\nCOMMIT\n", "bad address"},
		{"*nat\n-A PREROUTING -j DNAT --to-destination 10.0.0.1:80-90\nCOMMIT\n", "unsupported NAT address"},
	}
	for _, c := range cases {
		_, err := Parse(c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q): err = %v, want it to mention %q", c.text, err, c.want)
		}
	}
	// An empty mangle table, as iptables-save prints it, is fine.
	if _, err := Parse("*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n*nat\nCOMMIT\n"); err != nil {
		t.Errorf("empty mangle table: %v", err)
	}
}

func TestTraceErrors(t *testing.T) {
	rs := MustParse(`
*nat
:POSTROUTING ACCEPT [0:0]
:D - [0:0]
-A POSTROUTING -j D
-A D -j DNAT --to-destination 10.244.0.2
COMMIT
`)
	_, err := rs.Trace(testNode, Packet{Origin: FromPod, Proto: "tcp", Src: ip("10.244.0.3"), Dst: ip("10.244.1.2"), DstPort: 80})
	if err == nil || !strings.Contains(err.Error(), "DNAT reached from hook POSTROUTING") {
		t.Errorf("DNAT in POSTROUTING: err = %v", err)
	}
	if _, err := rs.Trace(testNode, Packet{Proto: "icmp", Src: ip("10.244.0.3"), Dst: ip("10.244.1.2")}); err == nil {
		t.Error("icmp packet accepted")
	}
}

func TestTokenizeQuotes(t *testing.T) {
	toks, err := tokenize(`-A X -m comment --comment "ns/svc:port \"quoted\" here" -j ACCEPT`)
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 8 || toks[5].s != `ns/svc:port "quoted" here` || !toks[5].quoted {
		t.Errorf("tokens %+v", toks)
	}
	if _, err := tokenize(`-A X --comment "open`); err == nil {
		t.Error("unterminated quote accepted")
	}
}
