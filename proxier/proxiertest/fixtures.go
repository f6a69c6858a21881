// Package proxiertest builds Snapshots by hand for the backends' tests
// (the planner produces them in production): fixtures shared by the
// iptables and nftables modes' golden, kernel and benchmark tests, so both
// render the same cases.
package proxiertest

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/planner"
)

// EP is a ready, serving endpoint; local says it is on this node.
func EP(addr string, local bool) proxier.Endpoint {
	return proxier.Endpoint{Addr: netip.MustParseAddrPort(addr), Ready: true, Serving: true, Local: local}
}

// IPs parses addresses.
func IPs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// Prefixes parses CIDRs.
func Prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// Svc builds a service port with endpoints (AllEndpoints); Snapshot()
// has the planner decide the endpoint lists once the fixture's policy
// fields are set.
func Svc(ns, name, portName string, proto proxier.Protocol, clusterIP string, port uint16, eps ...proxier.Endpoint) *proxier.ServicePort {
	sp := &proxier.ServicePort{
		Name:         proxier.ServicePortName{Namespace: ns, Name: name, Port: portName, Protocol: proto},
		Protocol:     proto,
		Port:         port,
		AllEndpoints: eps,
	}
	if clusterIP != "" {
		sp.ClusterIP = netip.MustParseAddr(clusterIP)
	}
	return sp
}

// Resolve has the planner decide sp's endpoint lists from AllEndpoints
// and its policy fields, as in production.
func Resolve(sp *proxier.ServicePort) {
	all := slices.Clone(sp.AllEndpoints)
	slices.SortFunc(all, func(a, b proxier.Endpoint) int { return a.Addr.Compare(b.Addr) })
	planner.ResolveEndpoints(sp, all, &planner.NodeInfo{Name: "node-a"})
}

// Snapshot is a full-sync snapshot of node-a in family fam (cluster CIDR,
// node IP) with services, their endpoint lists decided by the planner.
func Snapshot(fam proxier.IPFamily, services ...*proxier.ServicePort) *proxier.Snapshot {
	s := &proxier.Snapshot{
		Family:            fam,
		NodeName:          "node-a",
		NodePortAddresses: proxier.NodePortAddresses{All: true},
		Masquerade:        proxier.MasqueradeConfig{MarkBit: 14, ClusterCIDRs: Prefixes("10.244.0.0/16")},
		Services:          services,
		FullSync:          true,
		NodeIPs:           IPs("192.0.2.10"),
	}
	if fam == proxier.IPv6 {
		s.Masquerade.ClusterCIDRs = Prefixes("fd00:10:244::/56")
		s.NodeIPs = IPs("2001:db8::10")
	}
	for _, sp := range s.Services {
		Resolve(sp)
	}
	SortServices(s)
	return s
}

// SortServices sorts s.Services by name, as the planner does.
func SortServices(s *proxier.Snapshot) {
	sort.Slice(s.Services, func(i, j int) bool { return s.Services[i].Name.Less(s.Services[j].Name) })
}

// GoldenCases are the Snapshot fixtures of the golden tests: every feature
// of the layout appears in at least one.
func GoldenCases() map[string][]*proxier.Snapshot {
	cases := map[string][]*proxier.Snapshot{}

	// ClusterIP over TCP, UDP and SCTP, one-CIDR off-cluster masquerade.
	cases["clusterip"] = []*proxier.Snapshot{Snapshot(proxier.IPv4,
		Svc("default", "web", "http", proxier.TCP, "10.96.0.10", 80,
			EP("10.244.1.5:8080", false), EP("10.244.1.6:8080", true), EP("10.244.2.7:8080", false)),
		Svc("kube-system", "dns", "dns", proxier.UDP, "10.96.0.53", 53, EP("10.244.1.2:53", true)),
		Svc("default", "sig", "", proxier.SCTP, "10.96.0.77", 3868, EP("10.244.2.9:3868", false)),
	)}

	// No endpoints at all: REJECT on every address.
	none := Svc("default", "empty", "http", proxier.TCP, "10.96.0.20", 80)
	none.NodePort = 30020
	none.ExternalIPs = IPs("203.0.113.20")
	none.LoadBalancerIPs = IPs("198.51.100.20")
	cases["no-endpoints"] = []*proxier.Snapshot{Snapshot(proxier.IPv4, none)}

	// NodePort, externalIPs and LoadBalancer with externalTrafficPolicy
	// Cluster and Local (with and without local endpoints), health checks.
	cluster := Svc("default", "np-cluster", "http", proxier.TCP, "10.96.0.30", 80,
		EP("10.244.1.5:8080", true), EP("10.244.2.5:8080", false))
	cluster.NodePort = 30030
	cluster.ExternalIPs = IPs("203.0.113.30")
	local := Svc("default", "np-local", "http", proxier.TCP, "10.96.0.31", 80,
		EP("10.244.1.8:8080", true), EP("10.244.2.8:8080", false))
	local.NodePort = 30031
	local.LoadBalancerIPs = IPs("198.51.100.31")
	local.ExternalPolicyLocal = true
	local.HealthCheckNodePort = 32031
	remote := Svc("default", "np-local-remote", "", proxier.UDP, "10.96.0.32", 53, EP("10.244.2.9:53", false))
	remote.NodePort = 30032
	remote.ExternalIPs = IPs("203.0.113.32")
	remote.LoadBalancerIPs = IPs("198.51.100.32")
	remote.ExternalPolicyLocal = true
	remote.HealthCheckNodePort = 32032
	cases["external"] = []*proxier.Snapshot{Snapshot(proxier.IPv4, cluster, local, remote)}

	// LoadBalancer source ranges, one of which covers the node.
	lb := Svc("default", "lb", "https", proxier.TCP, "10.96.0.40", 443, EP("10.244.1.4:8443", false), EP("10.244.2.4:8443", false))
	lb.NodePort = 30040
	lb.LoadBalancerIPs = IPs("198.51.100.40", "198.51.100.41")
	lb.LoadBalancerSourceRanges = Prefixes("203.0.113.0/24", "192.0.2.0/24")
	cases["lb-source-ranges"] = []*proxier.Snapshot{Snapshot(proxier.IPv4, lb)}

	// ClientIP session affinity (also on an eTP Local external chain).
	aff := Svc("default", "sticky", "http", proxier.TCP, "10.96.0.50", 80, EP("10.244.1.3:80", true), EP("10.244.2.3:80", false))
	aff.Affinity = proxier.SessionAffinity{Timeout: 10800 * time.Second}
	aff.NodePort = 30050
	aff.ExternalPolicyLocal = true
	cases["affinity"] = []*proxier.Snapshot{Snapshot(proxier.IPv4, aff)}

	// internalTrafficPolicy Local, with and without local endpoints.
	itp := Svc("default", "itp", "http", proxier.TCP, "10.96.0.60", 80, EP("10.244.1.6:80", true), EP("10.244.2.6:80", false))
	itp.InternalPolicyLocal = true
	itpNone := Svc("default", "itp-none", "http", proxier.TCP, "10.96.0.61", 80, EP("10.244.2.7:80", false))
	itpNone.InternalPolicyLocal = true
	cases["itp-local"] = []*proxier.Snapshot{Snapshot(proxier.IPv4, itp, itpNone)}

	// --masquerade-all and specific nodePortAddresses.
	ma := Snapshot(proxier.IPv4, func() *proxier.ServicePort {
		s := Svc("default", "web", "http", proxier.TCP, "10.96.0.10", 80, EP("10.244.1.5:8080", false))
		s.NodePort = 30010
		return s
	}())
	ma.Masquerade.All = true
	ma.NodePortAddresses = proxier.NodePortAddresses{Addrs: IPs("192.0.2.10", "127.0.0.1")}
	cases["masquerade-all"] = []*proxier.Snapshot{ma}

	// Several cluster CIDRs, and one with none.
	multi := Snapshot(proxier.IPv4, func() *proxier.ServicePort {
		s := Svc("default", "web", "http", proxier.TCP, "10.96.0.10", 80, EP("10.244.1.5:8080", true))
		s.NodePort = 30010
		s.ExternalPolicyLocal = true
		return s
	}())
	multi.Masquerade.ClusterCIDRs = Prefixes("10.244.0.0/16", "10.245.0.0/16")
	noCIDR := Snapshot(proxier.IPv4, Svc("default", "web", "http", proxier.TCP, "10.96.0.10", 80, EP("10.244.1.5:8080", true)))
	noCIDR.Masquerade.ClusterCIDRs = nil
	noCIDR.Masquerade.MarkBit = 5
	cases["cluster-cidrs"] = []*proxier.Snapshot{multi}
	cases["no-cluster-cidr"] = []*proxier.Snapshot{noCIDR}

	// Localhost node ports (IPv4): the iptables mode answers on 127.0.0.1
	// (and blocks incoming localnet connections); the nftables mode does
	// not support them (as upstream) and ignores the flag.
	lnp := Snapshot(proxier.IPv4, func() *proxier.ServicePort {
		s := Svc("default", "web", "http", proxier.TCP, "10.96.0.10", 80, EP("10.244.1.5:8080", false))
		s.NodePort = 30010
		return s
	}())
	lnp.LocalhostNodePorts = true
	cases["localhost-nodeports"] = []*proxier.Snapshot{lnp}

	// detect-local-mode InterfaceNamePrefix: pods are what arrives on veth+.
	ifc := Snapshot(proxier.IPv4, func() *proxier.ServicePort {
		s := Svc("default", "web", "http", proxier.TCP, "10.96.0.10", 80, EP("10.244.1.5:8080", true), EP("10.244.2.5:8080", false))
		s.NodePort = 30010
		s.ExternalPolicyLocal = true
		return s
	}())
	ifc.Masquerade.ClusterCIDRs, ifc.Masquerade.PodInterface = nil, "veth+"
	cases["pod-interface"] = []*proxier.Snapshot{ifc}

	// Dual stack: IPv4 and IPv6 sections.
	v6 := Svc("default", "web", "http", proxier.TCP, "fd00:96::10", 80, EP("[fd00:10:244:1::5]:8080", true), EP("[fd00:10:244:2::5]:8080", false))
	v6.NodePort = 30010
	v6.Affinity = proxier.SessionAffinity{Timeout: 60 * time.Second}
	v4 := Svc("default", "web", "http", proxier.TCP, "10.96.0.10", 80, EP("10.244.1.5:8080", true))
	v4.NodePort = 30010
	cases["dual-stack"] = []*proxier.Snapshot{Snapshot(proxier.IPv4, v4), Snapshot(proxier.IPv6, v6)}
	return cases
}

// BigSnapshot has n service ports with m endpoints each.
func BigSnapshot(n, m int) *proxier.Snapshot {
	services := make([]*proxier.ServicePort, 0, n)
	for i := 0; i < n; i++ {
		eps := make([]proxier.Endpoint, 0, m)
		for j := 0; j < m; j++ {
			eps = append(eps, EP(fmt.Sprintf("10.%d.%d.%d:8080", 128+(i*m+j)>>16, ((i*m+j)>>8)&255, (i*m+j)&255), j == 0))
		}
		s := Svc(fmt.Sprintf("ns%d", i%100), fmt.Sprintf("svc%05d", i), "http", proxier.TCP,
			fmt.Sprintf("10.%d.%d.%d", 96+(i>>16), (i>>8)&255, i&255), 80, eps...)
		if i%10 == 0 {
			s.NodePort = uint16(30000 + i/10%2700)
		}
		services = append(services, s)
	}
	return Snapshot(proxier.IPv4, services...)
}
