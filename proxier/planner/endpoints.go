package planner

import (
	"fmt"
	"net/netip"
	"sort"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// rank orders duplicate endpoints (the same ip:port in two slices, as
// while an endpoint moves between slices or a terminating pod's IP is
// reused): like upstream, a non-terminating copy beats a terminating one;
// among those, a ready copy beats a serving one beats the rest, so a slice
// being replaced never hides a ready endpoint.
func rank(e *proxier.Endpoint) int {
	r := 0
	if !e.Terminating {
		r += 4
	}
	switch {
	case e.Ready:
		r += 2
	case e.Serving:
		r++
	}
	return r
}

type portKey struct {
	name  string
	proto proxier.Protocol
}

// endpointIndex holds one family's endpoints of a service, by slice port.
type endpointIndex map[portKey][]proxier.Endpoint

func (idx endpointIndex) forPort(name string, proto proxier.Protocol) []proxier.Endpoint {
	if idx == nil {
		return nil
	}
	return idx[portKey{name, proto}]
}

// collectEndpoints reads a service's slices into per-family endpoint lists,
// deduplicated by ip:port across slices, with upstream's condition defaults
// (ready nil = true, serving nil = true, terminating nil = false).
func (p *ServicePlan) collectEndpoints(slices []*discoveryv1.EndpointSlice, cfg *Config) map[proxier.IPFamily]endpointIndex {
	sorted := append([]*discoveryv1.EndpointSlice(nil), slices...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	out := map[proxier.IPFamily]endpointIndex{}
	for _, sl := range sorted {
		var fam proxier.IPFamily
		switch sl.AddressType {
		case discoveryv1.AddressTypeIPv4:
			fam = proxier.IPv4
		case discoveryv1.AddressTypeIPv6:
			fam = proxier.IPv6
		default:
			continue // FQDN slices are not proxied, as upstream.
		}
		if !cfg.HasFamily(fam) {
			continue
		}
		sliceName := sl.Namespace + "/" + sl.Name
		bad := func(format string, args ...any) {
			p.Problems = append(p.Problems, Problem{Kind: "EndpointSlice", Object: sliceName, Reason: fmt.Sprintf(format, args...)})
		}
		idx := out[fam]
		if idx == nil {
			idx = endpointIndex{}
			out[fam] = idx
		}
		// Parse the endpoints once; they are shared by all ports.
		type parsed struct {
			addr netip.Addr
			ep   proxier.Endpoint
		}
		eps := make([]parsed, 0, len(sl.Endpoints))
		for i := range sl.Endpoints {
			e := &sl.Endpoints[i]
			if len(e.Addresses) == 0 {
				continue
			}
			addr, err := netip.ParseAddr(e.Addresses[0])
			if err != nil || addr.Zone() != "" {
				bad("endpoint address %q is not a valid IP address; endpoint skipped", e.Addresses[0])
				continue
			}
			addr = addr.Unmap()
			if proxier.FamilyOf(addr) != fam {
				bad("endpoint address %s is not %s as the slice's addressType says; endpoint skipped", addr, fam)
				continue
			}
			c := proxier.Endpoint{}
			c.Ready = e.Conditions.Ready == nil || *e.Conditions.Ready
			c.Serving = e.Conditions.Serving == nil || *e.Conditions.Serving
			c.Terminating = e.Conditions.Terminating != nil && *e.Conditions.Terminating
			if e.NodeName != nil {
				c.NodeName = *e.NodeName
				c.Local = *e.NodeName == cfg.Node.Name && cfg.Node.Name != ""
			}
			if e.Zone != nil {
				c.Zone = *e.Zone
			}
			if e.Hints != nil {
				for _, z := range e.Hints.ForZones {
					c.ZoneHints = append(c.ZoneHints, z.Name)
				}
				for _, n := range e.Hints.ForNodes {
					c.NodeHints = append(c.NodeHints, n.Name)
				}
			}
			eps = append(eps, parsed{addr, c})
		}
		for _, sp := range sl.Ports {
			if sp.Port == nil {
				continue
			}
			if *sp.Port < 1 || *sp.Port > 65535 {
				bad("port %d out of range; port skipped", *sp.Port)
				continue
			}
			k := portKey{proto: proxier.TCP}
			if sp.Name != nil {
				k.name = *sp.Name
			}
			if sp.Protocol != nil {
				switch *sp.Protocol {
				case corev1.ProtocolTCP:
				case corev1.ProtocolUDP:
					k.proto = proxier.UDP
				case corev1.ProtocolSCTP:
					k.proto = proxier.SCTP
				default:
					bad("port %q: protocol %q unknown; port skipped", k.name, *sp.Protocol)
					continue
				}
			}
			list := idx[k]
			if list == nil {
				list = make([]proxier.Endpoint, 0, len(eps))
			}
			for _, e := range eps {
				c := e.ep
				c.Addr = netip.AddrPortFrom(e.addr, uint16(*sp.Port))
				list = append(list, c)
			}
			idx[k] = list
		}
	}
	for _, idx := range out {
		for k, list := range idx {
			idx[k] = sortAndDedupe(list)
		}
	}
	return out
}

// sortAndDedupe sorts endpoints by address and keeps one copy of each
// ip:port: the best-ranked, the first slice (by name) among equals.
func sortAndDedupe(list []proxier.Endpoint) []proxier.Endpoint {
	sort.SliceStable(list, func(i, j int) bool { return list[i].Addr.Compare(list[j].Addr) < 0 })
	out := list[:0]
	for i := range list {
		c := list[i]
		if n := len(out); n > 0 && out[n-1].Addr == c.Addr {
			if rank(&c) > rank(&out[n-1]) {
				out[n-1] = c
			}
			continue
		}
		out = append(out, c)
	}
	return out
}

// Topology modes, as upstream kube-proxy names them.
const (
	topologyNone  = ""
	topologyNode  = "PreferSameNode"
	topologyZones = "PreferSameZone"
)

// topologyMode decides whether hints are used, as upstream: node hints when
// every ready endpoint has one and one names this node; otherwise zone
// hints when every ready endpoint has one and one names this node's zone;
// otherwise none.
func topologyMode(eps []proxier.Endpoint, node *NodeInfo) string {
	anyReady := false
	allNode, anyNode := true, false
	allZone, anyZone := true, false
	for i := range eps {
		e := &eps[i]
		if !e.Ready {
			continue
		}
		anyReady = true
		if len(e.NodeHints) == 0 {
			allNode = false
		} else if contains(e.NodeHints, node.Name) {
			anyNode = true
		}
		if len(e.ZoneHints) == 0 {
			allZone = false
		} else if contains(e.ZoneHints, node.Zone) {
			anyZone = true
		}
	}
	switch {
	case !anyReady:
		return topologyNone
	case allNode && anyNode:
		return topologyNode
	case allZone && anyZone:
		return topologyZones
	}
	return topologyNone
}

func availableForTopology(e *proxier.Endpoint, mode string, node *NodeInfo) bool {
	switch mode {
	case topologyNode:
		return contains(e.NodeHints, node.Name)
	case topologyZones:
		return contains(e.ZoneHints, node.Zone)
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ResolveEndpoints decides every endpoint field of sp from all, the port's
// deduplicated endpoints (sorted by address), with upstream kube-proxy's
// semantics (serviceport.go UsesClusterEndpoints/UsesLocalEndpoints and
// topology.go CategorizeEndpoints). sp's policy fields (InternalPolicyLocal,
// ExternalPolicyLocal) and addresses must be set. It is the one place that
// chooses endpoints; backends only translate its result.
//
//   - The port uses Cluster endpoints when its internal policy is Cluster
//     or it is externally accessible at all (even under
//     externalTrafficPolicy Local: pods and the node itself reach its
//     external addresses through them). Cluster endpoints: the ready ones
//     allowed by topology; if none, the serving-terminating ones.
//   - It uses Local endpoints when its internal policy is Local, or its
//     external policy is Local and it is externally accessible. Local
//     endpoints: this node's ready ones; if none, its serving-terminating
//     ones; topology does not apply.
//   - The cluster IP is served by the Local list under
//     internalTrafficPolicy Local, else by the Cluster list; external
//     traffic from outside likewise with externalTrafficPolicy; traffic
//     from the node and its pods to external addresses (the short-circuit)
//     by the Cluster list when the external policy is Local.
//   - Unserved traffic is rejected when no endpoint anywhere is usable,
//     and dropped otherwise.
func ResolveEndpoints(sp *proxier.ServicePort, all []proxier.Endpoint, node *NodeInfo) {
	sp.AllEndpoints = all
	sp.ClusterEndpoints, sp.LocalEndpoints, sp.ReachableEndpoints = nil, nil, nil
	sp.HasAnyEndpoints, sp.LocalReadyEndpoints = false, 0
	sp.Internal, sp.External, sp.ShortCircuit = proxier.NoEndpoints, proxier.NoEndpoints, proxier.NoEndpoints
	for i := range all {
		e := &all[i]
		if e.Ready || (e.Serving && e.Terminating) {
			sp.HasAnyEndpoints = true
		}
		if e.Local && e.Ready {
			sp.LocalReadyEndpoints++
		}
	}
	external := sp.ExternallyAccessible()
	usesCluster := !sp.InternalPolicyLocal || external
	usesLocal := sp.InternalPolicyLocal || (sp.ExternalPolicyLocal && external)

	if usesCluster {
		mode := topologyMode(all, node)
		sp.ClusterEndpoints = pick(all, func(e *proxier.Endpoint) bool {
			return e.Ready && availableForTopology(e, mode, node)
		})
		if len(sp.ClusterEndpoints) == 0 {
			// No ready endpoint anywhere (topology is only used when one is
			// available here): fall back to serving-terminating ones.
			sp.ClusterEndpoints = pick(all, func(e *proxier.Endpoint) bool { return e.Serving && e.Terminating })
		}
	}
	if usesLocal {
		sp.LocalEndpoints = pick(all, func(e *proxier.Endpoint) bool { return e.Local && e.Ready })
		if len(sp.LocalEndpoints) == 0 {
			sp.LocalEndpoints = pick(all, func(e *proxier.Endpoint) bool { return e.Local && e.Serving && e.Terminating })
		}
	}

	choose := func(local bool) proxier.EndpointChoice {
		switch {
		case local && len(sp.LocalEndpoints) > 0:
			return proxier.LocalPolicy
		case !local && len(sp.ClusterEndpoints) > 0:
			return proxier.ClusterPolicy
		}
		return proxier.NoEndpoints
	}
	sp.Internal = choose(sp.InternalPolicyLocal)
	if external {
		sp.External = choose(sp.ExternalPolicyLocal)
		if sp.ExternalPolicyLocal {
			sp.ShortCircuit = choose(false)
		}
	}
	sp.Unserved = proxier.Reject
	if sp.HasAnyEndpoints {
		sp.Unserved = proxier.Drop
	}

	switch {
	case len(sp.LocalEndpoints) == 0:
		sp.ReachableEndpoints = sp.ClusterEndpoints
	case len(sp.ClusterEndpoints) == 0:
		sp.ReachableEndpoints = sp.LocalEndpoints
	default:
		sp.ReachableEndpoints = union(sp.ClusterEndpoints, sp.LocalEndpoints)
	}
}

// union merges two address-sorted endpoint lists, keeping one copy of each
// address.
func union(a, b []proxier.Endpoint) []proxier.Endpoint {
	out := make([]proxier.Endpoint, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i].Addr.Compare(b[j].Addr) < 0):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j].Addr.Compare(a[i].Addr) < 0:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i, j = i+1, j+1
		}
	}
	return out
}

// pick returns the endpoints keep accepts, in their (address) order.
func pick(eps []proxier.Endpoint, keep func(*proxier.Endpoint) bool) []proxier.Endpoint {
	n := 0
	for i := range eps {
		if keep(&eps[i]) {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]proxier.Endpoint, 0, n)
	for i := range eps {
		if keep(&eps[i]) {
			out = append(out, eps[i])
		}
	}
	return out
}
