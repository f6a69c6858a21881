package conntrack

import (
	"net/netip"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// servingEndpoints returns the endpoints a UDP/SCTP flow of sp may stay
// pinned to: every serving endpoint of the port, whatever the traffic
// policies and topology (as kube-proxy's reconciler: changing a policy does
// not break existing flows). The planner's endpoint lists are the one input
// this package reads; keep it to this function.
func servingEndpoints(sp *proxier.ServicePort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, list := range [][]proxier.Endpoint{sp.ClusterEndpoints, sp.LocalEndpoints} {
		for _, e := range list {
			out = append(out, e.Addr)
		}
	}
	for _, e := range sp.AllEndpoints {
		if e.Serving {
			out = append(out, e.Addr)
		}
	}
	return out
}

// handled reports whether the reconciler cares about a protocol.
func handled(p proxier.Protocol) bool { return p == proxier.UDP || p == proxier.SCTP }

type frontend struct {
	proto proxier.Protocol
	addr  netip.AddrPort
}

type nodePort struct {
	proto proxier.Protocol
	port  uint16
}

type endpointSet map[netip.AddrPort]struct{}

// index maps every UDP/SCTP frontend of a snapshot to the set of endpoints
// its flows may be DNATed to.
type index struct {
	ips   map[frontend]endpointSet
	ports map[nodePort]endpointSet
}

// newIndex indexes the UDP/SCTP service ports of snap. The frontends of
// removed (service ports of the previous snapshot that are gone) get an
// empty set, unless a current service port uses the same frontend.
func newIndex(snap *proxier.Snapshot, removed []*proxier.ServicePort) *index {
	x := &index{ips: map[frontend]endpointSet{}, ports: map[nodePort]endpointSet{}}
	for _, sp := range removed {
		x.add(sp, endpointSet{})
	}
	for _, sp := range snap.Services {
		if !handled(sp.Protocol) {
			continue
		}
		eps := endpointSet{}
		for _, a := range servingEndpoints(sp) {
			eps[a] = struct{}{}
		}
		x.add(sp, eps)
	}
	return x
}

func (x *index) add(sp *proxier.ServicePort, eps endpointSet) {
	ip := func(a netip.Addr) {
		if a.IsValid() {
			x.ips[frontend{sp.Protocol, netip.AddrPortFrom(a.Unmap(), sp.Port)}] = eps
		}
	}
	ip(sp.ClusterIP)
	for _, a := range sp.ExternalIPs {
		ip(a)
	}
	for _, a := range sp.LoadBalancerIPs {
		ip(a)
	}
	// A node port is matched on the destination port alone: with no
	// serving endpoint it would delete every flow to that port number,
	// kube-proxy's or not, so it is left alone then (as in kube-proxy).
	if sp.NodePort != 0 && len(eps) > 0 {
		x.ports[nodePort{sp.Protocol, sp.NodePort}] = eps
	}
}

// protocols returns the protocols indexed (UDP first).
func (x *index) protocols() []proxier.Protocol {
	seen := map[proxier.Protocol]bool{}
	for k := range x.ips {
		seen[k.proto] = true
	}
	for k := range x.ports {
		seen[k.proto] = true
	}
	var out []proxier.Protocol
	for _, p := range []proxier.Protocol{proxier.UDP, proxier.SCTP} {
		if seen[p] {
			out = append(out, p)
		}
	}
	return out
}

// empty reports whether nothing is indexed.
func (x *index) empty() bool { return len(x.ips) == 0 && len(x.ports) == 0 }

// stale reports whether f is a flow to a frontend whose DNAT target is not
// one of the frontend's serving endpoints (never DNATed included).
func (x *index) stale(f *Flow) bool {
	if !handled(f.Protocol) {
		return false
	}
	dst := netip.AddrPortFrom(f.Orig.Dst.Addr().Unmap(), f.Orig.Dst.Port())
	target := netip.AddrPortFrom(f.Reply.Src.Addr().Unmap(), f.Reply.Src.Port())
	if eps, ok := x.ips[frontend{f.Protocol, dst}]; ok {
		_, serving := eps[target]
		return !serving
	}
	if eps, ok := x.ports[nodePort{f.Protocol, dst.Port()}]; ok {
		_, serving := eps[target]
		return !serving
	}
	return false
}
