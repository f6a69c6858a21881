package nfttrace_test

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sort"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/nftables"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/nfttrace"
)

var node = nfttrace.Node{LocalAddrs: []netip.Addr{netip.MustParseAddr("10.0.0.10")}}

func ep(s string, local bool) proxier.Endpoint {
	return proxier.Endpoint{Addr: netip.MustParseAddrPort(s), Ready: true, Serving: true, Local: local}
}

// table syncs one hand-planned service port into a fake.
func table(t *testing.T, sp *proxier.ServicePort) *knftables.Fake {
	t.Helper()
	fake := knftables.NewFake(knftables.IPv4Family, nftables.TableName)
	b, err := nftables.New(nftables.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		NewInterface: func(proxier.IPFamily) (knftables.Interface, error) { return fake, nil }})
	if err != nil {
		t.Fatal(err)
	}
	snap := &proxier.Snapshot{Family: proxier.IPv4, NodeIPs: node.LocalAddrs,
		NodePortAddresses: proxier.NodePortAddresses{All: true},
		Masquerade:        proxier.MasqueradeConfig{MarkBit: 14, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
		Services:          []*proxier.ServicePort{sp}, FullSync: true}
	if _, err := b.Sync(context.Background(), []*proxier.Snapshot{snap}); err != nil {
		t.Fatal(err)
	}
	return fake
}

func web(eps ...proxier.Endpoint) *proxier.ServicePort {
	sp := &proxier.ServicePort{
		Name:     proxier.ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: proxier.TCP},
		Protocol: proxier.TCP, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80, NodePort: 30080,
		ClusterEndpoints: eps, ReachableEndpoints: eps, AllEndpoints: eps, HasAnyEndpoints: len(eps) > 0,
		Internal: proxier.ClusterPolicy, External: proxier.ClusterPolicy,
	}
	if len(eps) == 0 {
		sp.Internal, sp.External = proxier.NoEndpoints, proxier.NoEndpoints
	}
	return sp
}

func outcomes(t *testing.T, fake *knftables.Fake, p nfttrace.Packet) []string {
	t.Helper()
	res, err := nfttrace.Trace(fake.Table, node, p)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, o := range res.Outcomes {
		s := []string{"accept", "drop", "reject"}[o.Verdict]
		if o.DNAT.IsValid() {
			s += " " + o.DNAT.String()
		}
		if o.Masqueraded {
			s += " masq"
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func TestTrace(t *testing.T) {
	pod := netip.MustParseAddr("10.244.0.5")
	outside := netip.MustParseAddr("192.0.2.7")
	cip := netip.MustParseAddr("10.96.0.10")
	two := table(t, web(ep("10.244.1.2:8080", false), ep("10.244.0.5:8080", true)))
	for _, c := range []struct {
		name string
		p    nfttrace.Packet
		want []string
	}{
		{"pod to cluster IP", nfttrace.Packet{Src: netip.MustParseAddr("10.244.0.9"), Dst: cip, Proto: "tcp", DstPort: 80, Origin: nfttrace.FromPod, InIface: "pod0"},
			[]string{"accept 10.244.0.5:8080", "accept 10.244.1.2:8080"}},
		{"hairpin", nfttrace.Packet{Src: pod, Dst: cip, Proto: "tcp", DstPort: 80, Origin: nfttrace.FromPod, InIface: "pod0"},
			[]string{"accept 10.244.0.5:8080 masq", "accept 10.244.1.2:8080"}},
		{"outside to node port", nfttrace.Packet{Src: outside, Dst: node.LocalAddrs[0], Proto: "tcp", DstPort: 30080, Origin: nfttrace.FromOutside, InIface: "ext0"},
			[]string{"accept 10.244.0.5:8080 masq", "accept 10.244.1.2:8080 masq"}},
		{"node to cluster IP", nfttrace.Packet{Src: node.LocalAddrs[0], Dst: cip, Proto: "tcp", DstPort: 80, Origin: nfttrace.FromNode},
			[]string{"accept 10.244.0.5:8080 masq", "accept 10.244.1.2:8080 masq"}},
		{"other port of the cluster IP", nfttrace.Packet{Src: pod, Dst: cip, Proto: "tcp", DstPort: 81, Origin: nfttrace.FromPod, InIface: "pod0"},
			[]string{"accept"}},
		{"udp", nfttrace.Packet{Src: pod, Dst: cip, Proto: "udp", DstPort: 80, Origin: nfttrace.FromPod, InIface: "pod0"},
			[]string{"accept"}},
	} {
		if got := outcomes(t, two, c.p); !equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	none := table(t, web())
	p := nfttrace.Packet{Src: pod, Dst: cip, Proto: "tcp", DstPort: 80, Origin: nfttrace.FromPod, InIface: "pod0"}
	if got := outcomes(t, none, p); !equal(got, []string{"reject"}) {
		t.Errorf("no endpoints: %v, want reject", got)
	}
	p = nfttrace.Packet{Src: outside, Dst: node.LocalAddrs[0], Proto: "tcp", DstPort: 30080, Origin: nfttrace.FromOutside, InIface: "ext0"}
	if got := outcomes(t, none, p); !equal(got, []string{"reject"}) {
		t.Errorf("no endpoints, node port: %v, want reject", got)
	}
}

// The tracer sees a broken table: without the masquerading chain's rules
// nothing is masqueraded; without the service's map element the cluster IP
// is not DNATed; an unknown expression is an error, not a pass.
func TestTraceSeesBrokenRules(t *testing.T) {
	fake := table(t, web(ep("10.244.1.2:8080", false)))
	node2 := nfttrace.Packet{Src: node.LocalAddrs[0], Dst: netip.MustParseAddr("10.96.0.10"), Proto: "tcp", DstPort: 80, Origin: nfttrace.FromNode}
	tx := fake.NewTransaction()
	tx.Flush(&knftables.Chain{Name: "masquerading"})
	if err := fake.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	if got := outcomes(t, fake, node2); !equal(got, []string{"accept 10.244.1.2:8080"}) {
		t.Errorf("without masquerading rules: %v", got)
	}
	tx = fake.NewTransaction()
	tx.Delete(&knftables.Element{Map: "service-ips", Key: []string{"10.96.0.10", "tcp", "80"}})
	if err := fake.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	if got := outcomes(t, fake, node2); !equal(got, []string{"accept"}) {
		t.Errorf("without the map element: %v", got)
	}
	tx = fake.NewTransaction()
	tx.Add(&knftables.Rule{Chain: "services", Rule: "tcp flags syn counter"})
	if err := fake.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	if _, err := nfttrace.Trace(fake.Table, node, node2); err == nil {
		t.Error("an expression the tracer does not know must be an error")
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
