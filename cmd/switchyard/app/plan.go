package app

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/nodeport"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/planner"
	"github.com/switchyard-proxy/switchyard/proxier/source/manifests"
)

// plannerConfig builds the planner configuration from validated settings;
// the node part is filled by the node resolver.
func plannerConfig(o *Options, s *settings) planner.Config {
	return planner.Config{
		Node:          planner.NodeInfo{Name: s.nodeName},
		ClusterCIDRs:  s.clusterCIDRs,
		MasqueradeAll: o.MasqueradeAll,
		MasqueradeBit: int(o.MasqueradeBit),
		NodePortMin:   s.nodePortRange[0],
		NodePortMax:   s.nodePortRange[1],
		// Upstream implements localhost node ports in iptables mode only.
		LocalhostNodePorts: o.LocalhostNodePorts && o.ProxyMode == ModeIPTables,
		DetectLocal: planner.DetectLocal{Mode: o.DetectLocalMode, BridgeInterface: o.PodBridgeInterface,
			InterfaceNamePrefix: o.PodInterfaceNamePrefix},
	}
}

// podCIDRs reads the Node's spec.podCIDRs (or spec.podCIDR), for
// --detect-local-mode=NodeCIDR; invalid entries are logged and skipped.
func podCIDRs(node *corev1.Node, log *slog.Logger) []netip.Prefix {
	raw := node.Spec.PodCIDRs
	if len(raw) == 0 && node.Spec.PodCIDR != "" {
		raw = []string{node.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, c := range raw {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			log.Warn("Node spec.podCIDRs entry is not a CIDR; ignored", "node", node.Name, "value", c)
			continue
		}
		out = append(out, p.Masked())
	}
	return out
}

// nodeResolver returns the function that turns the Node object into the
// planner's node information. localAddrs lists the addresses node ports can
// match against (the network namespace's own, for the proxy; the node's
// IPs, for plan and rules, which must not depend on the machine they run on).
func nodeResolver(s *settings, localAddrs func(nodeIPs []netip.Addr) []netip.Addr, log *slog.Logger) func(*corev1.Node) planner.NodeInfo {
	return func(node *corev1.Node) planner.NodeInfo {
		info := planner.NodeInfo{Name: s.nodeName}
		if node != nil {
			info.Zone = node.Labels[corev1.LabelTopologyZone]
			info.PodCIDRs = podCIDRs(node, log)
		}
		info.IPs = nodeport.NodeIPs(node, s.nodeIPs)
		local := localAddrs(info.IPs)
		info.LocalAddrs = nodeport.Usable(local)
		if !s.nodePortSel.IsEmpty() {
			info.NodePortAddresses = map[proxier.IPFamily]proxier.NodePortAddresses{}
			for _, fam := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
				npa := s.nodePortSel.Select(fam, info.IPs, local)
				if nodeport.NoMatch(npa) {
					log.Warn("no node address matches --nodeport-addresses; node ports are not served in this family", "family", fam.String(), "selection", s.nodePortSel.String())
				}
				info.NodePortAddresses[fam] = npa
			}
		}
		return info
	}
}

// loadPlan reads the manifest folder and plans it, for plan and rules.
func loadPlan(o *Options, s *settings, stderr io.Writer, log *slog.Logger) ([]*proxier.Snapshot, []planner.Problem, error) {
	if o.Manifests == "" {
		return nil, nil, usageError{fmt.Errorf("--manifests DIR is required")}
	}
	objs, errs := manifests.Load(o.Manifests, s.nodeName, o.ServiceProxyName)
	for _, err := range errs {
		fmt.Fprintln(stderr, "warning:", err)
	}
	if len(errs) == 1 && errors.Is(errs[0], manifests.ErrFolder) {
		return nil, nil, errs[0]
	}
	var node *corev1.Node
	if len(objs.Nodes) > 0 {
		node = objs.Nodes[0]
	}
	cfg := plannerConfig(o, s)
	// The plan does not depend on the machine it is printed on, except in
	// IPVS mode, whose node ports are bound on each local address: `rules
	// --proxy-mode=ipvs` shows what this node would program.
	local := func(ips []netip.Addr) []netip.Addr { return ips }
	if o.ProxyMode == ModeIPVS {
		local = localAddresses(log)
	}
	cfg.Node = nodeResolver(s, local, log)(node)
	if len(s.nodeIPs) == 0 && node == nil {
		fmt.Fprintf(stderr, "warning: no Node %q in %s and no --node-ip: node ports answer on all addresses\n", s.nodeName, o.Manifests)
	}
	cfg.Families = familiesOf(cfg.Node.IPs)
	snaps, problems := planner.Plan(planner.Objects{Services: objs.Services, Slices: objs.EndpointSlices, Node: node, Pods: objs.Pods}, cfg)
	return snaps, problems, nil
}

// familiesOf returns the families of the node's addresses, primary first
// (IPv4 alone when none is known).
func familiesOf(ips []netip.Addr) []proxier.IPFamily {
	var fams []proxier.IPFamily
	for _, ip := range ips {
		f := proxier.FamilyOf(ip)
		if len(fams) == 0 || (len(fams) == 1 && fams[0] != f) {
			fams = append(fams, f)
		}
	}
	if len(fams) == 0 {
		fams = []proxier.IPFamily{proxier.IPv4}
	}
	return fams
}

// Human-readable views of a plan, for `switchyard plan`.
type (
	planView struct {
		Snapshots []snapshotView `yaml:"snapshots"`
		Problems  []string       `yaml:"problems,omitempty"`
	}
	snapshotView struct {
		Family            string            `yaml:"family"`
		Node              string            `yaml:"node"`
		NodeIPs           []netip.Addr      `yaml:"nodeIPs"`
		NodePortAddresses string            `yaml:"nodePortAddresses"`
		Masquerade        string            `yaml:"masquerade"`
		Services          []servicePortView `yaml:"services"`
		HostPorts         []string          `yaml:"hostPorts,omitempty"`
	}
	servicePortView struct {
		Name                     string         `yaml:"name"`
		ClusterIP                string         `yaml:"clusterIP"`
		NodePort                 uint16         `yaml:"nodePort,omitempty"`
		ExternalIPs              []netip.Addr   `yaml:"externalIPs,omitempty"`
		LoadBalancerIPs          []netip.Addr   `yaml:"loadBalancerIPs,omitempty"`
		LoadBalancerSourceRanges []netip.Prefix `yaml:"loadBalancerSourceRanges,omitempty"`
		HealthCheckNodePort      uint16         `yaml:"healthCheckNodePort,omitempty"`
		ExternalTrafficPolicy    string         `yaml:"externalTrafficPolicy,omitempty"`
		InternalTrafficPolicy    string         `yaml:"internalTrafficPolicy,omitempty"`
		SessionAffinity          string         `yaml:"sessionAffinity,omitempty"`
		Scheduler                string         `yaml:"ipvsScheduler,omitempty"`
		InternalEndpoints        []string       `yaml:"internalEndpoints"`
		ExternalEndpoints        []string       `yaml:"externalEndpoints,omitempty"`
		ShortCircuitEndpoints    []string       `yaml:"podAndNodeToExternalEndpoints,omitempty"`
		NodePortConflict         string         `yaml:"nodePortLostTo,omitempty"`
		AllEndpoints             []string       `yaml:"allEndpoints,omitempty"`
		NoEndpoints              string         `yaml:"noEndpoints,omitempty"`
	}
)

func endpointList(eps []proxier.Endpoint) []string {
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		out = append(out, e.Addr.String())
	}
	return out
}

func describeEndpoint(e proxier.Endpoint) string {
	var flags []string
	// Serving matters only for terminating endpoints (upstream defaults a
	// missing serving condition to true).
	if e.Ready {
		flags = append(flags, "ready")
	} else if e.Serving && e.Terminating {
		flags = append(flags, "serving")
	} else {
		flags = append(flags, "not-ready")
	}
	if e.Terminating {
		flags = append(flags, "terminating")
	}
	if e.Local {
		flags = append(flags, "local")
	} else if e.NodeName != "" {
		flags = append(flags, "node="+e.NodeName)
	}
	if e.Zone != "" {
		flags = append(flags, "zone="+e.Zone)
	}
	return e.Addr.String() + " (" + strings.Join(flags, ", ") + ")"
}

// writePlan prints snapshots and problems as YAML.
func writePlan(w io.Writer, snaps []*proxier.Snapshot, problems []planner.Problem) error {
	v := planView{}
	for _, p := range problems {
		v.Problems = append(v.Problems, p.String())
	}
	for _, snap := range snaps {
		sv := snapshotView{Family: snap.Family.String(), Node: snap.NodeName, NodeIPs: snap.NodeIPs}
		switch {
		case snap.NodePortAddresses.All:
			sv.NodePortAddresses = "all local addresses"
		case len(snap.NodePortAddresses.Addrs) == 0:
			sv.NodePortAddresses = "none"
		default:
			var parts []string
			for _, a := range snap.NodePortAddresses.Addrs {
				parts = append(parts, a.String())
			}
			sv.NodePortAddresses = strings.Join(parts, ", ")
		}
		switch m := snap.Masquerade; {
		case m.All:
			sv.Masquerade = fmt.Sprintf("all traffic to cluster IPs (mark 0x%x)", m.Mark())
		case m.PodInterface != "":
			sv.Masquerade = fmt.Sprintf("traffic not from interface %s (mark 0x%x)", m.PodInterface, m.Mark())
		case len(m.ClusterCIDRs) > 0:
			sv.Masquerade = fmt.Sprintf("sources outside %v (mark 0x%x)", m.ClusterCIDRs, m.Mark())
		default:
			sv.Masquerade = fmt.Sprintf("external traffic only (mark 0x%x)", m.Mark())
		}
		for _, sp := range snap.Services {
			pv := servicePortView{
				Name:                     sp.Name.String() + "/" + string(sp.Protocol),
				ClusterIP:                netip.AddrPortFrom(sp.ClusterIP, sp.Port).String(),
				NodePort:                 sp.NodePort,
				ExternalIPs:              sp.ExternalIPs,
				LoadBalancerIPs:          sp.LoadBalancerIPs,
				LoadBalancerSourceRanges: sp.LoadBalancerSourceRanges,
				HealthCheckNodePort:      sp.HealthCheckNodePort,
				Scheduler:                sp.Scheduler,
				InternalEndpoints:        endpointList(sp.InternalEndpoints()),
			}
			if sp.ExternalPolicyLocal {
				pv.ExternalTrafficPolicy = "Local"
			}
			if sp.InternalPolicyLocal {
				pv.InternalTrafficPolicy = "Local"
			}
			if sp.Affinity.Enabled() {
				pv.SessionAffinity = fmt.Sprintf("ClientIP, %v", sp.Affinity.Timeout)
			}
			if sp.ExternallyAccessible() {
				pv.ExternalEndpoints = endpointList(sp.ExternalEndpoints())
			}
			pv.ShortCircuitEndpoints = endpointList(sp.ShortCircuitEndpoints())
			pv.NodePortConflict = sp.NodePortConflict
			for _, e := range sp.AllEndpoints {
				pv.AllEndpoints = append(pv.AllEndpoints, describeEndpoint(e))
			}
			switch {
			case !sp.HasAnyEndpoints:
				pv.NoEndpoints = "connections are rejected"
			case sp.Internal == proxier.NoEndpoints || (sp.ExternallyAccessible() && sp.External == proxier.NoEndpoints):
				pv.NoEndpoints = "traffic with no local endpoint to serve it is dropped"
			}
			sv.Services = append(sv.Services, pv)
		}
		for _, hp := range snap.HostPorts {
			host := "*"
			if hp.HostIP.IsValid() {
				host = hp.HostIP.String()
			}
			sv.HostPorts = append(sv.HostPorts, fmt.Sprintf("%s:%d/%s -> %s (%s)", host, hp.HostPort, hp.Protocol,
				netip.AddrPortFrom(hp.PodIP, hp.ContainerPort), hp.Pod))
		}
		v.Snapshots = append(v.Snapshots, sv)
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("rendering plan: %w", err)
	}
	return enc.Close()
}
