// Package planner turns Kubernetes objects into switchyard's per-family
// Snapshots. It is pure: the same objects, node and config always give the
// same plan, and nothing here touches the kernel or the network. Every
// policy (traffic policies, terminating fallback, topology, affinity,
// masquerading) is decided here, once, for every backend.
package planner

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Well-known labels and annotations the planner reads.
const (
	// LabelServiceName links an EndpointSlice to its Service.
	LabelServiceName = discoveryv1.LabelServiceName
	// LabelZone is the node label holding its zone.
	LabelZone = corev1.LabelTopologyZone
	// AnnotationSourceRanges is the legacy annotation for loadBalancerSourceRanges.
	AnnotationSourceRanges = corev1.AnnotationLoadBalancerSourceRangesKey
	// AnnotationIPVSScheduler selects a per-service IPVS scheduler.
	AnnotationIPVSScheduler = "switchyard.io/ipvs-scheduler"
	// DefaultAffinityTimeoutSeconds is ClientIP affinity's default timeout (3 hours).
	DefaultAffinityTimeoutSeconds = 10800
	// MaxAffinityTimeoutSeconds is the largest timeout the API allows (1 day).
	MaxAffinityTimeoutSeconds = 86400
)

// NodeInfo is what the planner knows of the node it plans for.
type NodeInfo struct {
	// Name is the node's name (endpoints with this nodeName are local).
	Name string
	// Zone is the node's topology.kubernetes.io/zone label, or "".
	Zone string
	// IPs are the node's addresses (all families, primary first).
	IPs []netip.Addr
	// NodePortAddresses says, per family, where node ports answer.
	NodePortAddresses map[proxier.IPFamily]proxier.NodePortAddresses
	// PodCIDRs are the Node's spec.podCIDRs (detect-local-mode NodeCIDR).
	PodCIDRs []netip.Prefix
	// LocalAddrs are this node's current interface addresses that node
	// ports can answer on (loopback, link-local and the IPVS mode's
	// service VIPs excluded), all families, sorted.
	LocalAddrs []netip.Addr
}

// Config is the node-wide configuration that shapes a plan.
type Config struct {
	// Node is this node.
	Node NodeInfo
	// Families lists the IP families to plan, primary first.
	Families []proxier.IPFamily
	// ClusterCIDRs select in-cluster sources (both families mixed).
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to cluster IPs.
	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit used for masquerading (default 14).
	MasqueradeBit int
	// NodePortMin and NodePortMax bound valid node ports (default 30000-32767).
	NodePortMin, NodePortMax uint16
	// LocalhostNodePorts lets node ports answer on 127.0.0.0/8 from the
	// node (--iptables-localhost-nodeports, upstream's default true).
	LocalhostNodePorts bool
	// DetectLocal says how pod traffic is told apart (--detect-local-mode).
	DetectLocal DetectLocal
}

// Detect-local modes, upstream's names (--detect-local-mode).
const (
	LocalModeClusterCIDR         = "ClusterCIDR"
	LocalModeNodeCIDR            = "NodeCIDR"
	LocalModeBridgeInterface     = "BridgeInterface"
	LocalModeInterfaceNamePrefix = "InterfaceNamePrefix"
)

// DetectLocal is upstream's detectLocalMode with its parameters.
type DetectLocal struct {
	// Mode is one of the LocalMode constants; "" means ClusterCIDR.
	Mode string
	// BridgeInterface is the pods' bridge (BridgeInterface mode).
	BridgeInterface string
	// InterfaceNamePrefix prefixes the pods' interfaces (InterfaceNamePrefix mode).
	InterfaceNamePrefix string
}

// podTraffic returns how a family's pod traffic is recognised: by source
// prefixes or by input interface.
func (c *Config) podTraffic(fam proxier.IPFamily) ([]netip.Prefix, string) {
	switch c.DetectLocal.Mode {
	case LocalModeNodeCIDR:
		return filterPrefixes(c.Node.PodCIDRs, fam), ""
	case LocalModeBridgeInterface:
		return nil, c.DetectLocal.BridgeInterface
	case LocalModeInterfaceNamePrefix:
		if c.DetectLocal.InterfaceNamePrefix == "" {
			return nil, ""
		}
		return nil, c.DetectLocal.InterfaceNamePrefix + "+"
	}
	return filterPrefixes(c.ClusterCIDRs, fam), ""
}

// Defaults fills unset fields with kube-proxy's defaults.
func (c *Config) Defaults() {
	if len(c.Families) == 0 {
		c.Families = []proxier.IPFamily{proxier.IPv4}
	}
	if c.NodePortMin == 0 && c.NodePortMax == 0 {
		c.NodePortMin, c.NodePortMax = 30000, 32767
	}
}

// HasFamily reports whether fam is planned.
func (c *Config) HasFamily(fam proxier.IPFamily) bool {
	for _, f := range c.Families {
		if f == fam {
			return true
		}
	}
	return false
}

// Objects are the API objects a plan is made from.
type Objects struct {
	Services []*corev1.Service
	Slices   []*discoveryv1.EndpointSlice
	Node     *corev1.Node
	Pods     []*corev1.Pod
}

// Problem is an object (or part of one) that could not be honoured.
type Problem struct {
	// Kind is "Service", "EndpointSlice" or "Pod".
	Kind string
	// Object is "namespace/name".
	Object string
	// Reason says what is wrong and what was skipped.
	Reason string
	// NodePortConflict is set on problems that are node-port conflicts
	// between services (they are also counted in a metric).
	NodePortConflict bool `json:",omitempty"`
	// Event, when set, is the reason of the Kubernetes Event to report on
	// the object (e.g. EventHostPortConflict); Reason is its message.
	Event string `json:",omitempty"`
}

// String returns a log-ready description.
func (p Problem) String() string {
	return fmt.Sprintf("%s %s: %s", p.Kind, p.Object, p.Reason)
}

// Plan makes the snapshots (one per configured family, in cfg.Families
// order) for the given objects. It is the whole planner as one pure
// function; the tracker uses the same pieces incrementally.
func Plan(objs Objects, cfg Config) ([]*proxier.Snapshot, []Problem) {
	cfg.Defaults()
	slicesBySvc := map[string][]*discoveryv1.EndpointSlice{}
	var problems []Problem
	svcKeys := map[string]bool{}
	for _, svc := range objs.Services {
		svcKeys[svc.Namespace+"/"+svc.Name] = true
	}
	for _, sl := range objs.Slices {
		key, p := SliceServiceKey(sl)
		if p != nil {
			problems = append(problems, *p)
			continue
		}
		if !svcKeys[key] {
			problems = append(problems, Problem{Kind: "EndpointSlice", Object: sl.Namespace + "/" + sl.Name,
				Reason: fmt.Sprintf("service %s does not exist; slice ignored", key)})
			continue
		}
		slicesBySvc[key] = append(slicesBySvc[key], sl)
	}
	plans := make([]*ServicePlan, 0, len(objs.Services))
	for _, svc := range objs.Services {
		sp := PlanService(svc, slicesBySvc[svc.Namespace+"/"+svc.Name], &cfg)
		plans = append(plans, sp)
	}
	snaps, more := Assemble(plans, &cfg)
	problems = append(problems, more...)
	hp, pp := HostPorts(objs.Pods, &cfg)
	problems = append(problems, pp...)
	for _, s := range snaps {
		s.HostPorts = hp[s.Family]
		s.FullSync = true
	}
	problems = append(problems, HostPortsBesideNodePorts(snaps)...)
	for _, sp := range plans {
		problems = append(problems, sp.Problems...)
	}
	return snaps, problems
}

// SliceServiceKey returns the "namespace/name" of the service an
// EndpointSlice belongs to, or a Problem when the label is missing.
func SliceServiceKey(sl *discoveryv1.EndpointSlice) (string, *Problem) {
	name := sl.Labels[LabelServiceName]
	if name == "" {
		return "", &Problem{Kind: "EndpointSlice", Object: sl.Namespace + "/" + sl.Name,
			Reason: "no " + LabelServiceName + " label; slice ignored"}
	}
	return sl.Namespace + "/" + name, nil
}

// Assemble builds snapshots from per-service plans: it resolves node-port
// conflicts between services (the oldest service keeps the node port; the
// others lose only their node port, in a copy of their ServicePort with
// NodePortConflict set) and fills the node-wide fields. Plans sorted by namespace/name (as the tracker keeps
// them) are used as they are; otherwise they are sorted first. The returned
// snapshots have no Changed set; the caller decides what changed.
func Assemble(plans []*ServicePlan, cfg *Config) ([]*proxier.Snapshot, []Problem) {
	if !sort.SliceIsSorted(plans, func(i, j int) bool { return plans[i].Less(plans[j]) }) {
		plans = append([]*ServicePlan(nil), plans...)
		sort.Slice(plans, func(i, j int) bool { return plans[i].Less(plans[j]) })
	}
	rejected, problems := nodePortConflicts(plans)
	snaps := make([]*proxier.Snapshot, 0, len(cfg.Families))
	total := 0
	for _, p := range plans {
		total += len(p.Ports)
	}
	for _, fam := range cfg.Families {
		snap := &proxier.Snapshot{
			Family:            fam,
			NodeName:          cfg.Node.Name,
			NodeIPs:           filterAddrs(cfg.Node.IPs, fam),
			NodePortAddresses: cfg.Node.NodePortAddresses[fam],
			Masquerade: proxier.MasqueradeConfig{
				All:     cfg.MasqueradeAll,
				MarkBit: cfg.MasqueradeBit,
			},
		}
		snap.Masquerade.ClusterCIDRs, snap.Masquerade.PodInterface = cfg.podTraffic(fam)
		if cfg.Node.NodePortAddresses == nil {
			// Every local address: the node's current ones are listed for
			// modes that bind each address (IPVS); the node IPs at least.
			snap.NodePortAddresses.All = true
			addrs := append(filterAddrs(cfg.Node.LocalAddrs, fam), snap.NodeIPs...)
			slices.SortFunc(addrs, netip.Addr.Compare)
			snap.NodePortAddresses.Addrs = slices.Compact(addrs)
		}
		snap.LocalhostNodePorts = cfg.LocalhostNodePorts && fam == proxier.IPv4 && includesLoopback(snap.NodePortAddresses)
		if len(cfg.Families) == 1 {
			snap.Services = make([]*proxier.ServicePort, 0, total)
		}
		for _, p := range plans {
			for _, sp := range p.Ports {
				if proxier.FamilyOf(sp.ClusterIP) != fam {
					continue
				}
				if winner, lost := rejected[sp]; lost {
					sp = withoutNodePort(sp, winner, &cfg.Node)
				}
				snap.Services = append(snap.Services, sp)
			}
		}
		snaps = append(snaps, snap)
	}
	return snaps, problems
}

// withoutNodePort returns a copy of sp that lost its node port to the
// service winner, with its endpoints decided again (without a node port the
// port may no longer be externally accessible). The cached plan is not
// modified.
func withoutNodePort(sp *proxier.ServicePort, winner string, node *NodeInfo) *proxier.ServicePort {
	c := *sp
	c.NodePort = 0
	c.NodePortConflict = winner
	if !c.ExternallyAccessible() {
		c.ExternalPolicyLocal = false
	}
	ResolveEndpoints(&c, c.AllEndpoints, node)
	return &c
}

// nodePortConflicts finds service ports whose node port another service
// already holds, and names the holder. The oldest service (then the first
// by namespace/name) keeps the port; only services with node ports are
// looked at.
func nodePortConflicts(plans []*ServicePlan) (map[*proxier.ServicePort]string, []Problem) {
	var withNodePorts []*ServicePlan
	for _, p := range plans {
		for _, sp := range p.Ports {
			if sp.NodePort != 0 {
				withNodePorts = append(withNodePorts, p)
				break
			}
		}
	}
	if len(withNodePorts) < 2 {
		return nil, nil
	}
	sort.SliceStable(withNodePorts, func(i, j int) bool { return withNodePorts[i].Created.Before(withNodePorts[j].Created) })
	type npKey struct {
		fam  proxier.IPFamily
		prot proxier.Protocol
		port uint16
	}
	owner := make(map[npKey]string, len(withNodePorts))
	var rejected map[*proxier.ServicePort]string
	var problems []Problem
	for _, p := range withNodePorts {
		for _, sp := range p.Ports {
			if sp.NodePort == 0 {
				continue
			}
			k := npKey{proxier.FamilyOf(sp.ClusterIP), sp.Protocol, sp.NodePort}
			if other, taken := owner[k]; taken && other != p.Key {
				if rejected == nil {
					rejected = map[*proxier.ServicePort]string{}
				}
				rejected[sp] = other
				problems = append(problems, Problem{Kind: "Service", Object: p.Key, NodePortConflict: true,
					Reason: fmt.Sprintf("nodePort %d/%s of port %q is already used by service %s (created earlier); the node port is not served, the port's other addresses are",
						sp.NodePort, sp.Protocol, sp.Name.Port, other)})
				continue
			}
			owner[k] = p.Key
		}
	}
	return rejected, problems
}

// includesLoopback reports whether node ports answer on an IPv4 loopback
// address (upstream's NodePortAddresses.ContainsIPv4Loopback).
func includesLoopback(npa proxier.NodePortAddresses) bool {
	if npa.All {
		return true
	}
	for _, a := range npa.Addrs {
		if a.Is4() && a.IsLoopback() {
			return true
		}
	}
	return false
}

func filterAddrs(addrs []netip.Addr, fam proxier.IPFamily) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if proxier.FamilyOf(a) == fam {
			out = append(out, a)
		}
	}
	return out
}

func filterPrefixes(ps []netip.Prefix, fam proxier.IPFamily) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if proxier.FamilyOf(p.Addr()) == fam {
			out = append(out, p)
		}
	}
	return out
}
