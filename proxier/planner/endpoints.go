package planner

import (
	"fmt"
	"net/netip"
	"sort"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// candidate is an endpoint together with its topology hints.
type candidate struct {
	ep        proxier.Endpoint
	zoneHints []string
	nodeHints []string
}

func (c *candidate) usable() bool { return c.ep.Ready || (c.ep.Serving && c.ep.Terminating) }

// rank orders duplicate endpoints: a ready copy beats a serving one beats
// the rest, so a slice being replaced never hides a ready endpoint.
func (c *candidate) rank() int {
	switch {
	case c.ep.Ready:
		return 2
	case c.ep.Serving:
		return 1
	}
	return 0
}

type portKey struct {
	name  string
	proto proxier.Protocol
}

// endpointIndex holds one family's endpoints of a service, by slice port.
type endpointIndex map[portKey][]candidate

func (idx endpointIndex) forPort(name string, proto proxier.Protocol) []candidate {
	if idx == nil {
		return nil
	}
	return idx[portKey{name, proto}]
}

// collectEndpoints reads a service's slices into per-family endpoint lists,
// deduplicated by ip:port across slices, with condition defaults applied
// (ready nil = true, serving nil = ready, terminating nil = false).
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
			c    candidate
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
			c := candidate{}
			c.ep.Ready = e.Conditions.Ready == nil || *e.Conditions.Ready
			c.ep.Serving = c.ep.Ready
			if e.Conditions.Serving != nil {
				c.ep.Serving = *e.Conditions.Serving
			}
			c.ep.Terminating = e.Conditions.Terminating != nil && *e.Conditions.Terminating
			if e.NodeName != nil {
				c.ep.NodeName = *e.NodeName
				c.ep.Local = *e.NodeName == cfg.Node.Name && cfg.Node.Name != ""
			}
			if e.Zone != nil {
				c.ep.Zone = *e.Zone
			}
			if e.Hints != nil {
				for _, z := range e.Hints.ForZones {
					c.zoneHints = append(c.zoneHints, z.Name)
				}
				for _, n := range e.Hints.ForNodes {
					c.nodeHints = append(c.nodeHints, n.Name)
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
				list = make([]candidate, 0, len(eps))
			}
			for _, e := range eps {
				c := e.c
				c.ep.Addr = netip.AddrPortFrom(e.addr, uint16(*sp.Port))
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

// sortAndDedupe sorts candidates by address and keeps one copy of each
// ip:port: the best-ranked, the first slice (by name) among equals.
func sortAndDedupe(list []candidate) []candidate {
	sort.SliceStable(list, func(i, j int) bool { return list[i].ep.Addr.Compare(list[j].ep.Addr) < 0 })
	out := list[:0]
	for _, c := range list {
		if n := len(out); n > 0 && out[n-1].ep.Addr == c.ep.Addr {
			if c.rank() > out[n-1].rank() {
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

// topologyMode decides whether hints are used: node hints when every ready
// endpoint has one and one names this node; otherwise zone hints when every
// ready endpoint has one and one names this node's zone; otherwise none.
func topologyMode(cands []candidate, node *NodeInfo) string {
	allNode, anyNode := true, false
	allZone, anyZone := true, false
	for i := range cands {
		c := &cands[i]
		if !c.ep.Ready {
			continue
		}
		if len(c.nodeHints) == 0 {
			allNode = false
		} else if contains(c.nodeHints, node.Name) {
			anyNode = true
		}
		if len(c.zoneHints) == 0 {
			allZone = false
		} else if node.Zone != "" && contains(c.zoneHints, node.Zone) {
			anyZone = true
		}
	}
	switch {
	case allNode && anyNode:
		return topologyNode
	case allZone && anyZone:
		return topologyZones
	}
	return topologyNone
}

func availableForTopology(c *candidate, mode string, node *NodeInfo) bool {
	switch mode {
	case topologyNode:
		return contains(c.nodeHints, node.Name)
	case topologyZones:
		return contains(c.zoneHints, node.Zone)
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

// categorize fills the endpoint fields of sp with upstream kube-proxy's
// semantics:
//   - cluster endpoints: ready ones allowed by topology; if none, serving
//     and terminating ones allowed by topology;
//   - local endpoints: this node's ready ones; if none, this node's serving
//     and terminating ones (topology does not apply to Local policies);
//   - HasAnyEndpoints: some endpoint anywhere is ready or serving-terminating.
func categorize(sp *proxier.ServicePort, cands []candidate, node *NodeInfo) {
	all := make([]proxier.Endpoint, 0, len(cands))
	for i := range cands {
		all = append(all, cands[i].ep)
		if cands[i].usable() {
			sp.HasAnyEndpoints = true
		}
		if cands[i].ep.Local && cands[i].ep.Ready {
			sp.LocalReadyEndpoints++
		}
	}
	sp.AllEndpoints = all

	usesCluster := !sp.InternalPolicyLocal || (sp.ExternallyAccessible() && !sp.ExternalPolicyLocal)
	usesLocal := sp.InternalPolicyLocal || (sp.ExternallyAccessible() && sp.ExternalPolicyLocal)

	if usesCluster {
		mode := topologyMode(cands, node)
		sp.ClusterEndpoints = pick(cands, func(c *candidate) bool {
			return c.ep.Ready && availableForTopology(c, mode, node)
		})
		if len(sp.ClusterEndpoints) == 0 {
			sp.ClusterEndpoints = pick(cands, func(c *candidate) bool {
				return c.ep.Serving && c.ep.Terminating && availableForTopology(c, mode, node)
			})
		}
	}
	if usesLocal {
		sp.LocalEndpoints = pick(cands, func(c *candidate) bool { return c.ep.Local && c.ep.Ready })
		if len(sp.LocalEndpoints) == 0 {
			sp.LocalEndpoints = pick(cands, func(c *candidate) bool {
				return c.ep.Local && c.ep.Serving && c.ep.Terminating
			})
		}
	}
}

// pick returns the endpoints keep accepts, in the candidates' (address) order.
func pick(cands []candidate, keep func(*candidate) bool) []proxier.Endpoint {
	n := 0
	for i := range cands {
		if keep(&cands[i]) {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]proxier.Endpoint, 0, n)
	for i := range cands {
		if keep(&cands[i]) {
			out = append(out, cands[i].ep)
		}
	}
	return out
}
