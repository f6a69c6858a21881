package iptrace

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

const testSets = `
create HIP hash:ip family inet hashsize 1024 maxelem 65536
add HIP 10.96.0.10
create HNET hash:net family inet hashsize 1024 maxelem 65536
add HNET 192.0.2.0/25
create HIPPORT hash:ip,port family inet hashsize 1024 maxelem 65536
add HIPPORT 10.96.0.10,tcp:80
add HIPPORT 10.96.0.53,udp:53
add HIPPORT 10.96.0.99,8080
create HIPPORTIP hash:ip,port,ip family inet hashsize 1024 maxelem 65536
add HIPPORTIP 10.244.0.2,tcp:8080,10.244.0.2
create HIPPORTNET hash:ip,port,net family inet hashsize 1024 maxelem 65536
add HIPPORTNET 198.51.100.20,tcp:80,192.0.2.0/25
add HIPPORTNET 198.51.100.20,tcp:80,10.0.0.10
create PORTS bitmap:port range 0-65535
add PORTS 30080
create SIX hash:ip family inet6 hashsize 1024 maxelem 65536
add SIX fd00::10
`

// setRules accepts in filter INPUT whatever matches the set given as rule
// text, and drops the rest.
func setRules(t *testing.T, match string) *Ruleset {
	t.Helper()
	rs, err := Parse("*filter\n:INPUT DROP [0:0]\n-A INPUT " + match + " -j ACCEPT\nCOMMIT\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.LoadIPSets(testSets); err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestMatchSetTypesAndDirections(t *testing.T) {
	to := func(src, dst string, proto string, sport, dport uint16) Packet {
		return Packet{Origin: FromOutside, InIface: "eth0", Src: ip(src), Dst: ip(dst), Proto: proto, SrcPort: sport, DstPort: dport}
	}
	// Every destination is made local so filter INPUT decides.
	node := testNode
	node.LocalAddrs = append(append([]netip.Addr(nil), node.LocalAddrs...), ip("10.96.0.10"), ip("10.96.0.53"), ip("10.96.0.99"), ip("198.51.100.20"), ip("10.244.0.2"))
	cases := []struct {
		name, match string
		p           Packet
		accept      bool
	}{
		{"hash:ip dst in", "-m set --match-set HIP dst", to("192.0.2.9", "10.96.0.10", "tcp", 1, 80), true},
		{"hash:ip dst out", "-m set --match-set HIP dst", to("192.0.2.9", "10.96.0.53", "tcp", 1, 80), false},
		{"hash:ip src", "-m set --match-set HIP src", to("10.96.0.10", "10.0.0.10", "tcp", 1, 80), true},
		{"hash:ip negated", "-m set ! --match-set HIP dst", to("192.0.2.9", "10.96.0.10", "tcp", 1, 80), false},
		{"hash:ip negated miss", "-m set ! --match-set HIP dst", to("192.0.2.9", "10.96.0.53", "tcp", 1, 80), true},
		{"hash:ip extra directions ignored", "-m set --match-set HIP dst,src", to("192.0.2.9", "10.96.0.10", "tcp", 1, 80), true},
		{"hash:net in", "-m set --match-set HNET src", to("192.0.2.100", "10.0.0.10", "tcp", 1, 80), true},
		{"hash:net out", "-m set --match-set HNET src", to("192.0.2.200", "10.0.0.10", "tcp", 1, 80), false},
		{"hash:ip,port", "-m set --match-set HIPPORT dst,dst", to("192.0.2.9", "10.96.0.10", "tcp", 1, 80), true},
		{"hash:ip,port wrong port", "-m set --match-set HIPPORT dst,dst", to("192.0.2.9", "10.96.0.10", "tcp", 1, 81), false},
		{"hash:ip,port wrong protocol", "-m set --match-set HIPPORT dst,dst", to("192.0.2.9", "10.96.0.10", "udp", 1, 80), false},
		{"hash:ip,port udp", "-m set --match-set HIPPORT dst,dst", to("192.0.2.9", "10.96.0.53", "udp", 1, 53), true},
		{"hash:ip,port member without protocol is tcp", "-m set --match-set HIPPORT dst,dst", to("192.0.2.9", "10.96.0.99", "tcp", 1, 8080), true},
		{"hash:ip,port port from the source", "-m set --match-set HIPPORT dst,src", to("192.0.2.9", "10.96.0.10", "tcp", 80, 9), true},
		{"hash:ip,port,ip hairpin", "-m set --match-set HIPPORTIP dst,dst,src", to("10.244.0.2", "10.244.0.2", "tcp", 1, 8080), true},
		{"hash:ip,port,ip other source", "-m set --match-set HIPPORTIP dst,dst,src", to("10.244.0.3", "10.244.0.2", "tcp", 1, 8080), false},
		{"hash:ip,port,net in range", "-m set --match-set HIPPORTNET dst,dst,src", to("192.0.2.100", "198.51.100.20", "tcp", 1, 80), true},
		{"hash:ip,port,net host member", "-m set --match-set HIPPORTNET dst,dst,src", to("10.0.0.10", "198.51.100.20", "tcp", 1, 80), true},
		{"hash:ip,port,net out of range", "-m set --match-set HIPPORTNET dst,dst,src", to("192.0.2.200", "198.51.100.20", "tcp", 1, 80), false},
		{"bitmap:port any protocol", "-m set --match-set PORTS dst", to("192.0.2.9", "10.0.0.10", "udp", 1, 30080), true},
		{"bitmap:port miss", "-m set --match-set PORTS dst", to("192.0.2.9", "10.0.0.10", "tcp", 1, 30081), false},
		{"inet6 set never matches IPv4", "-m set --match-set SIX dst", to("192.0.2.9", "10.96.0.10", "tcp", 1, 80), false},
	}
	for _, c := range cases {
		rs := setRules(t, c.match)
		res, err := rs.Trace(node, c.p)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		want := Drop
		if c.accept {
			want = Accept
		}
		if !res.Only(want) {
			t.Errorf("%s: %q on %v: %s, want %v", c.name, c.match, c.p, res, want)
		}
	}
}

func TestMatchSetErrors(t *testing.T) {
	p := Packet{Origin: FromOutside, InIface: "eth0", Src: ip("192.0.2.9"), Dst: nodeIP, Proto: "tcp", SrcPort: 1, DstPort: 80}
	for match, want := range map[string]string{
		"-m set --match-set MISSING dst":   "ipset MISSING is not loaded",
		"-m set --match-set HIPPORT dst":   "1 direction(s) for a hash:ip,port set of dimension 2",
		"-m set --match-set HIPPORTIP dst": "never matches",
	} {
		_, err := setRules(t, match).Trace(testNode, p)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want it to mention %q", match, err, want)
		}
	}
	for text, want := range map[string]string{
		"create X hash:mac":                             `ipset type "hash:mac" is not modelled`,
		"add NOPE 1.2.3.4":                              "set NOPE does not exist",
		"create X hash:ip,port\nadd X 1.2.3.4":          "has 1 parts, want 2",
		"create X hash:ip,port\nadd X 1.2.3.4,icmp:0":   `protocol "icmp" is not modelled`,
		"create X hash:ip\nadd X 10.0.0.0/8":            "not a single address",
		"create X hash:ip family inet\nadd X fd00::1":   "wrong address family",
		"create X bitmap:port range 0-65535\nadd X 1-9": "ranges are not modelled",
		"flush X": `unsupported ipset command "flush"`,
	} {
		err := New().LoadIPSets(text)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadIPSets(%q): err = %v, want it to mention %q", text, err, want)
		}
	}
	// A failed load leaves the loaded sets alone.
	rs := New()
	if err := rs.LoadIPSets("create A hash:ip\nadd A 1.2.3.4\n"); err != nil {
		t.Fatal(err)
	}
	if err := rs.LoadIPSets("create A hash:ip\ncreate B hash:mac\n"); err == nil {
		t.Fatal("bad load accepted")
	}
	if s := rs.IPSet("A"); s == nil || s.Len() != 1 {
		t.Errorf("set A after a failed load: %+v", s)
	}
}

// TestMangleRunsBeforeNat checks the hook order: a mark set in mangle
// PREROUTING (OUTPUT) is seen by nat PREROUTING (OUTPUT).
func TestMangleRunsBeforeNat(t *testing.T) {
	rs := MustParse(`
*mangle
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d 10.96.0.1/32 -j MARK --set-xmark 0x10/0xffffffff
-A OUTPUT -d 10.96.0.1/32 -j MARK --set-xmark 0x10/0xffffffff
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -m mark --mark 0x10 -j DNAT --to-destination 10.244.0.2:80
-A OUTPUT -m mark --mark 0x10 -j DNAT --to-destination 10.244.0.2:80
COMMIT
`)
	for _, o := range []Origin{FromPod, FromNode} {
		res := trace(t, rs, Packet{Origin: o, InIface: "cni0", Src: ip("10.244.0.7"), Dst: ip("10.96.0.1"), DstPort: 80})
		if got := dests(res); !reflect.DeepEqual(got, []string{"10.244.0.2:80"}) || res.Outcomes[0].Mark != 0x10 {
			t.Errorf("%v: %s, want DNAT to 10.244.0.2:80 with mark 0x10", o, res)
		}
		if o == FromPod && res.Outcomes[0].Path[0] != "mangle/PREROUTING" {
			t.Errorf("path %v, want mangle/PREROUTING first", res.Outcomes[0].Path)
		}
	}
}

// ipvsRules is a small IPVS-mode layout: masquerade-marking of off-cluster
// sources in nat, hairpin by ipset, a reject for a port without endpoints
// and a fwmark for internal traffic in mangle.
const ipvsRules = `
*mangle
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -s 10.244.0.0/16 -d 198.51.100.10/32 -p tcp --dport 80 -j MARK --set-xmark 0x10000001/0xffffffff
-A OUTPUT -d 198.51.100.10/32 -p tcp --dport 80 -j MARK --set-xmark 0x10000001/0xffffffff
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SVC - [0:0]
:POST - [0:0]
-A PREROUTING -j SVC
-A OUTPUT -j SVC
-A POSTROUTING -j POST
-A SVC ! -s 10.244.0.0/16 -m set --match-set CLUSTER dst,dst -j MARK --or-mark 0x4000
-A POST -m set --match-set LOOP dst,dst,src -j MASQUERADE
-A POST -m mark --mark 0x10000000/0x10000000 -m addrtype --src-type LOCAL -j MASQUERADE
-A POST -m mark ! --mark 0x4000/0x4000 -j RETURN
-A POST -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -m set --match-set NOEP dst,dst -j REJECT
-A INPUT -d 198.51.100.10/32 -p tcp --dport 81 -j DROP
COMMIT
`

const ipvsSets = `
create CLUSTER hash:ip,port
add CLUSTER 10.96.0.10,tcp:80
add CLUSTER 10.96.0.20,tcp:80
create LOOP hash:ip,port,ip
add LOOP 10.244.0.2,tcp:8080,10.244.0.2
create NOEP hash:ip,port
add NOEP 10.96.0.30,tcp:80
`

func ipvsNode() Node {
	n := testNode
	n.LocalAddrs = append(append([]netip.Addr(nil), n.LocalAddrs...),
		ip("10.96.0.10"), ip("10.96.0.20"), ip("10.96.0.30"), ip("10.96.0.40"), ip("198.51.100.10"))
	ap := netip.MustParseAddrPort
	n.IPVS = &IPVS{Servers: []VirtualServer{
		{Addr: ip("10.96.0.10"), Proto: "tcp", Port: 80, RealServers: []RealServer{
			{Addr: ap("10.244.0.2:8080"), Weight: 1}, {Addr: ap("10.244.1.2:8080"), Weight: 1}, {Addr: ap("10.244.1.9:8080"), Weight: 0},
		}},
		{Addr: ip("10.96.0.20"), Proto: "tcp", Port: 80, Persistent: true, RealServers: []RealServer{{Addr: ap("10.244.0.3:8080"), Weight: 1}}},
		{Addr: ip("10.96.0.30"), Proto: "tcp", Port: 80},
		{Addr: ip("10.96.0.40"), Proto: "tcp", Port: 80, RealServers: []RealServer{{Addr: ap("10.244.1.9:8080"), Weight: 0}}},
		{Addr: ip("198.51.100.10"), Proto: "tcp", Port: 80, RealServers: []RealServer{{Addr: ap("10.244.0.2:8080"), Weight: 1}}},
		{FWMark: 0x10000001, RealServers: []RealServer{{Addr: ap("10.244.0.2:8080"), Weight: 1}, {Addr: ap("10.244.1.2:8080"), Weight: 1}}},
		{Addr: ip("10.0.0.10"), Proto: "tcp", Port: 30001, RealServers: []RealServer{{Addr: ap("10.0.0.10:10250"), Weight: 1}}},
	}}
	return n
}

func TestIPVSModel(t *testing.T) {
	rs := MustParse(ipvsRules)
	if err := rs.LoadIPSets(ipvsSets); err != nil {
		t.Fatal(err)
	}
	node := ipvsNode()
	pod := func(src, dst string, port uint16) Packet {
		return Packet{Origin: FromPod, InIface: "cni0", Proto: "tcp", Src: ip(src), Dst: ip(dst), SrcPort: 40000, DstPort: port}
	}
	outside := func(src, dst string, port uint16) Packet {
		p := pod(src, dst, port)
		p.Origin, p.InIface = FromOutside, "eth0"
		return p
	}
	fromNode := func(dst string, port uint16) Packet {
		p := pod(nodeIP.String(), dst, port)
		p.Origin, p.InIface = FromNode, ""
		return p
	}
	type want struct {
		verdict  Verdict
		dests    []string // accepted DNAT destinations
		masq     []bool   // per outcome, in order (nil: not checked)
		local    bool     // every outcome delivered locally
		affinity bool
	}
	cases := []struct {
		name string
		p    Packet
		want want
	}{
		{"pod to cluster IP: weight-0 server left out, source kept", pod("10.244.0.7", "10.96.0.10", 80),
			want{verdict: Accept, dests: []string{"10.244.0.2:8080", "10.244.1.2:8080"}, masq: []bool{false, false}}},
		{"outside to cluster IP: marked in nat, masqueraded after IPVS", outside("192.0.2.9", "10.96.0.10", 80),
			want{verdict: Accept, dests: []string{"10.244.0.2:8080", "10.244.1.2:8080"}, masq: []bool{true, true}}},
		{"hairpin: the endpoint itself is masqueraded by the ipset rule", pod("10.244.0.2", "10.96.0.10", 80),
			want{verdict: Accept, dests: []string{"10.244.0.2:8080", "10.244.1.2:8080"}, masq: []bool{true, false}}},
		{"node to cluster IP: IPVS at LOCAL_OUT, masqueraded", fromNode("10.96.0.10", 80),
			want{verdict: Accept, dests: []string{"10.244.0.2:8080", "10.244.1.2:8080"}, masq: []bool{true, true}}},
		{"persistent service is session affinity", pod("10.244.0.7", "10.96.0.20", 80),
			want{verdict: Accept, dests: []string{"10.244.0.3:8080"}, affinity: true}},
		{"no service on the port: delivered locally", pod("10.244.0.7", "10.96.0.10", 81),
			want{verdict: Accept, local: true}},
		{"filter INPUT rejects before IPVS", pod("10.244.0.7", "10.96.0.30", 80), want{verdict: Reject}},
		{"node: service without real servers answers port unreachable", fromNode("10.96.0.30", 80), want{verdict: Reject}},
		{"only weight-0 servers: port unreachable", outside("192.0.2.9", "10.96.0.40", 80), want{verdict: Reject}},
		{"fwmark service first: pod to external IP gets the cluster servers", pod("10.244.0.7", "198.51.100.10", 80),
			want{verdict: Accept, dests: []string{"10.244.0.2:8080", "10.244.1.2:8080"}, masq: []bool{false, false}}},
		{"node to external IP: fwmark service, masqueraded by the fwmark rule", fromNode("198.51.100.10", 80),
			want{verdict: Accept, dests: []string{"10.244.0.2:8080", "10.244.1.2:8080"}, masq: []bool{true, true}}},
		{"outside to external IP: address service, source kept", outside("192.0.2.9", "198.51.100.10", 80),
			want{verdict: Accept, dests: []string{"10.244.0.2:8080"}, masq: []bool{false}}},
		{"filter INPUT drop", outside("192.0.2.9", "198.51.100.10", 81), want{verdict: Drop}},
		{"local real server: delivered locally after the rewrite", outside("192.0.2.9", "10.0.0.10", 30001),
			want{verdict: Accept, dests: []string{"10.0.0.10:10250"}, local: true}},
	}
	for _, c := range cases {
		res, err := rs.Trace(node, c.p)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !res.Only(c.want.verdict) {
			t.Errorf("%s: %s\nwant only %v", c.name, res, c.want.verdict)
			continue
		}
		if c.want.verdict != Accept {
			continue
		}
		if got := dests(res); !reflect.DeepEqual(got, c.want.dests) {
			t.Errorf("%s: destinations %v, want %v\n%s", c.name, got, c.want.dests, res)
		}
		if c.want.masq != nil {
			var got []bool
			for _, o := range res.Outcomes {
				got = append(got, o.Masqueraded)
			}
			if !reflect.DeepEqual(got, c.want.masq) {
				t.Errorf("%s: masqueraded %v, want %v\n%s", c.name, got, c.want.masq, res)
			}
		}
		for _, o := range res.Outcomes {
			if o.Local != c.want.local {
				t.Errorf("%s: local=%v, want %v: %s", c.name, o.Local, c.want.local, o)
			}
		}
		if res.AffinityRules != c.want.affinity {
			t.Errorf("%s: affinity %v, want %v", c.name, res.AffinityRules, c.want.affinity)
		}
	}
	// Without Node.IPVS the same packet is simply delivered to the VIP.
	plain := testNode
	plain.LocalAddrs = node.LocalAddrs
	res, err := rs.Trace(plain, pod("10.244.0.7", "10.96.0.10", 80))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Outcomes) != 1 || !res.Outcomes[0].Local || res.Outcomes[0].DNAT.IsValid() {
		t.Errorf("no IPVS table: %s, want one local delivery without rewrite", res)
	}
}

// TestIPVSPath shows the hooks an IPVS-scheduled packet crosses.
func TestIPVSPath(t *testing.T) {
	rs := MustParse(ipvsRules)
	if err := rs.LoadIPSets(ipvsSets); err != nil {
		t.Fatal(err)
	}
	res, err := rs.Trace(ipvsNode(), Packet{Origin: FromOutside, InIface: "eth0", Proto: "tcp", Src: ip("192.0.2.9"), Dst: ip("198.51.100.10"), SrcPort: 1, DstPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	want := "mangle/PREROUTING nat/PREROUTING nat/SVC filter/INPUT ipvs/LOCAL_IN TCP  198.51.100.10:80 mangle/OUTPUT filter/OUTPUT nat/POSTROUTING nat/POST"
	if len(res.Outcomes) != 1 || strings.Join(res.Outcomes[0].Path, " ") != want {
		t.Errorf("path:\n got %s\nwant %s", res, want)
	}
}
