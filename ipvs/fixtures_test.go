package ipvs

import (
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/planner"
)

func ep(addr string, local bool) proxier.Endpoint {
	return proxier.Endpoint{Addr: netip.MustParseAddrPort(addr), Ready: true, Serving: true, Local: local}
}

func ips(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func spn(ns, name, port string, p proxier.Protocol) proxier.ServicePortName {
	return proxier.ServicePortName{Namespace: ns, Name: name, Port: port, Protocol: p}
}

// svc builds a ClusterIP service port with cluster endpoints eps.
func svc(name string, proto proxier.Protocol, clusterIP string, port uint16, eps ...proxier.Endpoint) *proxier.ServicePort {
	sp := &proxier.ServicePort{
		Name: spn("default", name, "", proto), Protocol: proto,
		ClusterIP: netip.MustParseAddr(clusterIP), Port: port,
		AllEndpoints: eps,
	}
	return sp
}

// resolve has the planner decide sp's endpoint lists from AllEndpoints
// and its policy fields, as in production.
func resolve(sp *proxier.ServicePort) {
	all := slices.Clone(sp.AllEndpoints)
	slices.SortFunc(all, func(a, b proxier.Endpoint) int { return a.Addr.Compare(b.Addr) })
	planner.ResolveEndpoints(sp, all, &planner.NodeInfo{Name: "node-a"})
}

func snapshot(svcs ...*proxier.ServicePort) *proxier.Snapshot {
	for _, sp := range svcs {
		resolve(sp)
	}
	return &proxier.Snapshot{
		Family:            proxier.IPv4,
		NodeName:          "node-a",
		NodeIPs:           ips("192.168.50.10", "10.0.2.15"),
		NodePortAddresses: proxier.NodePortAddresses{All: true},
		Masquerade:        proxier.MasqueradeConfig{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, MarkBit: 14},
		Services:          svcs,
		FullSync:          true,
	}
}

// richSnapshot covers every address kind and policy.
func richSnapshot() *proxier.Snapshot {
	web := svc("web", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.5:8080", true), ep("10.244.2.7:8080", false))
	web.Name.Port = "http"
	web.NodePort = 30080
	web.Affinity = proxier.SessionAffinity{Timeout: 3 * time.Hour}

	dns := svc("dns", proxier.UDP, "10.96.0.53", 53, ep("10.244.2.9:53", false))
	dns.Scheduler = "sh"

	lb := svc("lb", proxier.TCP, "10.96.0.20", 443, ep("10.244.1.6:8443", true), ep("10.244.3.3:8443", false))
	lb.NodePort = 31443
	lb.ExternalPolicyLocal = true
	lb.HealthCheckNodePort = 32000
	lb.LoadBalancerIPs = ips("203.0.113.7")
	lb.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("192.168.50.0/24")}
	lb.ExternalIPs = ips("203.0.113.8")

	empty := svc("empty", proxier.TCP, "10.96.0.30", 80)
	empty.NodePort = 30030

	remote := svc("remote-only", proxier.SCTP, "10.96.0.40", 3868, ep("10.244.3.4:3868", false))
	remote.NodePort = 30868
	remote.ExternalPolicyLocal = true

	return snapshot(dns, empty, lb, remote, web)
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// noLocalAddresses makes a Backend use the snapshots' NodeIPs for node
// ports (tests must not depend on the machine's interfaces).
func noLocalAddresses() ([]netip.Addr, error) { return nil, nil }
