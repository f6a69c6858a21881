package nodeport

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func node(as ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{Status: corev1.NodeStatus{Addresses: as}}
}

func internal(a string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a}
}

func external(a string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: a}
}

func TestNodeIPs(t *testing.T) {
	tests := []struct {
		name     string
		node     *corev1.Node
		override []netip.Addr
		want     []netip.Addr
	}{
		{name: "nil node, no override", want: nil},
		{name: "no addresses", node: node(), want: nil},
		{
			name: "v4 internal",
			node: node(internal("10.0.0.1")),
			want: addrs("10.0.0.1"),
		},
		{
			name: "internal before external, whatever the listed order",
			node: node(external("203.0.113.5"), internal("10.0.0.1"), external("203.0.113.6"), internal("10.0.0.2")),
			want: addrs("10.0.0.1", "10.0.0.2", "203.0.113.5", "203.0.113.6"),
		},
		{
			name: "hostname and other types are ignored",
			node: node(corev1.NodeAddress{Type: corev1.NodeHostName, Address: "node-a"},
				corev1.NodeAddress{Type: corev1.NodeInternalDNS, Address: "node-a.internal"},
				internal("10.0.0.1")),
			want: addrs("10.0.0.1"),
		},
		{
			name: "v6 only",
			node: node(internal("fd00::1"), external("2001:db8::1")),
			want: addrs("fd00::1", "2001:db8::1"),
		},
		{
			name: "dual-stack, v6 primary",
			node: node(internal("fd00::1"), internal("10.0.0.1")),
			want: addrs("fd00::1", "10.0.0.1"),
		},
		{
			name: "duplicates, garbage, unspecified and mapped addresses",
			node: node(internal("10.0.0.1"), internal("bogus"), internal("0.0.0.0"), internal("::"),
				external("10.0.0.1"), internal("::ffff:10.0.0.2"), internal("")),
			want: addrs("10.0.0.1", "10.0.0.2"),
		},
		{
			name:     "override replaces its family only",
			node:     node(internal("10.0.0.1"), internal("fd00::1"), external("203.0.113.5")),
			override: addrs("192.168.1.1"),
			want:     addrs("192.168.1.1", "fd00::1"),
		},
		{
			name:     "dual-stack override replaces everything, in its order",
			node:     node(internal("10.0.0.1"), internal("fd00::1")),
			override: addrs("fd00::9", "192.168.1.1"),
			want:     addrs("fd00::9", "192.168.1.1"),
		},
		{
			name:     "override without node",
			override: addrs("192.168.1.1", "192.168.1.1"),
			want:     addrs("192.168.1.1"),
		},
		{
			name:     "unspecified override is ignored",
			node:     node(internal("10.0.0.1")),
			override: []netip.Addr{netip.IPv4Unspecified(), {}},
			want:     addrs("10.0.0.1"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := NodeIPs(tc.node, tc.override)
			if !slices.Equal(got, tc.want) {
				t.Errorf("NodeIPs = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPrimaryAndFamilies(t *testing.T) {
	ips := NodeIPs(node(internal("fd00::1"), internal("10.0.0.1"), external("203.0.113.5"), external("2001:db8::1")), nil)

	if f, ok := PrimaryFamily(ips); !ok || f != proxier.IPv6 {
		t.Errorf("PrimaryFamily = %v %v, want IPv6 true", f, ok)
	}
	if a, ok := Primary(ips, proxier.IPv4); !ok || a != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("Primary(v4) = %v %v", a, ok)
	}
	if a, ok := Primary(ips, proxier.IPv6); !ok || a != netip.MustParseAddr("fd00::1") {
		t.Errorf("Primary(v6) = %v %v", a, ok)
	}
	if got, want := OfFamily(ips, proxier.IPv4), addrs("10.0.0.1", "203.0.113.5"); !slices.Equal(got, want) {
		t.Errorf("OfFamily(v4) = %v, want %v", got, want)
	}
	if got, want := OfFamily(ips, proxier.IPv6), addrs("fd00::1", "2001:db8::1"); !slices.Equal(got, want) {
		t.Errorf("OfFamily(v6) = %v, want %v", got, want)
	}

	v4only := addrs("10.0.0.1")
	if a, ok := Primary(v4only, proxier.IPv6); ok {
		t.Errorf("Primary(v6) of a v4-only node = %v, want none", a)
	}
	if _, ok := PrimaryFamily(nil); ok {
		t.Error("PrimaryFamily(nil) reported a family")
	}
}
