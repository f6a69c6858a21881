package nodeport

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
)

func TestParseAddresses(t *testing.T) {
	tests := []struct {
		name    string
		values  []string
		want    string // Selector.String()
		primary bool
		wantErr string
	}{
		{name: "empty", values: nil, want: ""},
		{name: "v4", values: []string{"10.0.0.0/8"}, want: "10.0.0.0/8"},
		{name: "host bits ignored, duplicates dropped", values: []string{"10.1.2.3/16", "10.1.0.0/16"}, want: "10.1.0.0/16"},
		{name: "dual-stack", values: []string{"10.0.0.0/8", " fd00::/64 "}, want: "10.0.0.0/8,fd00::/64"},
		{name: "mapped v4 becomes v4", values: []string{"::ffff:10.0.0.0/104"}, want: "10.0.0.0/8"},
		{name: "primary", values: []string{"primary"}, want: "primary", primary: true},
		{name: "bare IP", values: []string{"10.0.0.1"}, wantErr: `entry 1 "10.0.0.1" is neither a CIDR nor "primary" (for one address write 10.0.0.1/32)`},
		{name: "garbage", values: []string{"10.0.0.0/8", "foo"}, wantErr: `entry 2 "foo"`},
		{name: "empty entry", values: []string{""}, wantErr: `entry 1 ""`},
		{name: "bad mask", values: []string{"10.0.0.0/33"}, wantErr: `entry 1 "10.0.0.0/33"`},
		{name: "primary mixed with CIDRs", values: []string{"primary", "10.0.0.0/8"}, wantErr: `cannot be combined with CIDRs`},
		{name: "primary twice", values: []string{"primary", "primary"}, wantErr: `cannot be combined with CIDRs`},
		{name: "keyword is case-sensitive", values: []string{"Primary"}, wantErr: `entry 1 "Primary"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseAddresses(tc.values)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if s.String() != tc.want || s.IsPrimary() != tc.primary || s.IsEmpty() != (tc.want == "") {
				t.Errorf("got %q primary=%v empty=%v, want %q primary=%v", s.String(), s.IsPrimary(), s.IsEmpty(), tc.want, tc.primary)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	// A dual-stack node: eth0 10.0.0.5/24 + 10.0.0.6 (secondary) and
	// fd00::5, eth1 192.168.1.5, loopback, an IPv6 link-local address.
	local := addrs("127.0.0.1", "::1", "10.0.0.5", "10.0.0.6", "192.168.1.5", "fd00::5", "fe80::1", "10.0.0.5")
	dualNode := addrs("10.0.0.5", "fd00::5")
	v4Node := addrs("10.0.0.5")
	all := proxier.NodePortAddresses{All: true}
	none := proxier.NodePortAddresses{}
	some := func(ss ...string) proxier.NodePortAddresses { return proxier.NodePortAddresses{Addrs: addrs(ss...)} }

	tests := []struct {
		name    string
		values  []string
		family  proxier.IPFamily
		nodeIPs []netip.Addr
		local   []netip.Addr
		want    proxier.NodePortAddresses
	}{
		{name: "empty v4", family: proxier.IPv4, nodeIPs: dualNode, local: local, want: all},
		{name: "empty v6", family: proxier.IPv6, nodeIPs: dualNode, local: local, want: all},
		{name: "v4 CIDR", values: []string{"10.0.0.0/24"}, family: proxier.IPv4, nodeIPs: dualNode, local: local, want: some("10.0.0.5", "10.0.0.6")},
		{name: "two v4 CIDRs, sorted and deduplicated", values: []string{"192.168.0.0/16", "10.0.0.5/32", "10.0.0.0/8"}, family: proxier.IPv4, nodeIPs: dualNode, local: local, want: some("10.0.0.5", "10.0.0.6", "192.168.1.5")},
		{name: "v4 CIDR leaves v6 matching all", values: []string{"10.0.0.0/24"}, family: proxier.IPv6, nodeIPs: dualNode, local: local, want: all},
		{name: "v6 CIDR", values: []string{"fd00::/64"}, family: proxier.IPv6, nodeIPs: dualNode, local: local, want: some("fd00::5")},
		{name: "v6 CIDR leaves v4 matching all", values: []string{"fd00::/64"}, family: proxier.IPv4, nodeIPs: dualNode, local: local, want: all},
		{name: "dual-stack CIDRs, v4", values: []string{"fd00::/64", "192.168.1.0/24"}, family: proxier.IPv4, nodeIPs: dualNode, local: local, want: some("192.168.1.5")},
		{name: "dual-stack CIDRs, v6", values: []string{"fd00::/64", "192.168.1.0/24"}, family: proxier.IPv6, nodeIPs: dualNode, local: local, want: some("fd00::5")},
		{name: "loopback CIDR is kept", values: []string{"127.0.0.0/8"}, family: proxier.IPv4, nodeIPs: dualNode, local: local, want: some("127.0.0.1")},
		{name: "link-local v6", values: []string{"fe80::/10"}, family: proxier.IPv6, nodeIPs: dualNode, local: local, want: some("fe80::1")},
		{name: "zero CIDR means all", values: []string{"10.0.0.0/24", "0.0.0.0/0"}, family: proxier.IPv4, nodeIPs: dualNode, local: local, want: all},
		{name: "zero v6 CIDR means all", values: []string{"::/0"}, family: proxier.IPv6, nodeIPs: dualNode, local: local, want: all},
		{name: "CIDR matching nothing selects none", values: []string{"172.16.0.0/12"}, family: proxier.IPv4, nodeIPs: dualNode, local: local, want: none},
		{name: "CIDR with no local addresses known", values: []string{"10.0.0.0/8"}, family: proxier.IPv4, nodeIPs: dualNode, local: nil, want: none},
		{name: "primary v4", values: []string{"primary"}, family: proxier.IPv4, nodeIPs: dualNode, local: local, want: some("10.0.0.5")},
		{name: "primary v6", values: []string{"primary"}, family: proxier.IPv6, nodeIPs: dualNode, local: local, want: some("fd00::5")},
		{name: "primary, v6 primary first", values: []string{"primary"}, family: proxier.IPv4, nodeIPs: addrs("fd00::5", "10.0.0.6", "10.0.0.5"), local: local, want: some("10.0.0.6")},
		{name: "primary on a single-stack node: other family matches all", values: []string{"primary"}, family: proxier.IPv6, nodeIPs: v4Node, local: local, want: all},
		{name: "primary without node IPs matches all", values: []string{"primary"}, family: proxier.IPv4, nodeIPs: nil, local: local, want: all},
		{name: "loopback primary matches all", values: []string{"primary"}, family: proxier.IPv4, nodeIPs: addrs("127.0.0.1"), local: local, want: all},
		{name: "primary not configured locally selects none", values: []string{"primary"}, family: proxier.IPv4, nodeIPs: addrs("203.0.113.9"), local: local, want: none},
		{name: "mapped local addresses count as v4", values: []string{"10.0.0.0/24"}, family: proxier.IPv4, nodeIPs: v4Node, local: addrs("::ffff:10.0.0.7"), want: some("10.0.0.7")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseAddresses(tc.values)
			if err != nil {
				t.Fatal(err)
			}
			got := s.Select(tc.family, tc.nodeIPs, tc.local)
			if got.All != tc.want.All || !slices.Equal(got.Addrs, tc.want.Addrs) {
				t.Errorf("Select = %+v, want %+v", got, tc.want)
			}
			if NoMatch(got) != (!tc.want.All && len(tc.want.Addrs) == 0) {
				t.Errorf("NoMatch(%+v) = %v", got, NoMatch(got))
			}
		})
	}
}

func TestLocalAddresses(t *testing.T) {
	got, err := LocalAddresses()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("LocalAddresses() = %v, want it to contain 127.0.0.1", got)
	}
	if !slices.IsSortedFunc(got, netip.Addr.Compare) {
		t.Errorf("LocalAddresses() = %v, not sorted", got)
	}
	if len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Errorf("LocalAddresses() = %v, has duplicates", got)
	}
	for _, a := range got {
		if a.Is4In6() || a.Zone() != "" {
			t.Errorf("LocalAddresses() returned %v, want unmapped and zoneless", a)
		}
	}
}

func TestUsable(t *testing.T) {
	in := []netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("fe80::1%eth0"),
		netip.MustParseAddr("::ffff:192.0.2.1"), netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("224.0.0.1"),
		netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("fd00::1")}
	if got := fmt.Sprint(Usable(in)); got != "[10.0.0.10 192.0.2.1 fd00::1]" {
		t.Errorf("Usable = %s", got)
	}
}
