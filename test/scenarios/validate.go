package scenarios

import (
	"errors"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// testNet2 holds the external and load-balancer IPs of the fixtures.
var testNet2 = netip.MustParsePrefix("198.51.100.0/24")

// Validate checks that a scenario is self-consistent: its fixture decodes,
// names this node, and every packet has exactly one expectation whose
// endpoints exist in the fixture with the packet's protocol and are usable
// (ready, or serving while terminating).
func (s Scenario) Validate() error {
	objs, err := s.Objects()
	if err != nil {
		return err
	}
	fail := func(format string, a ...any) error {
		return fmt.Errorf("scenario %s: %s", s.Name, fmt.Sprintf(format, a...))
	}
	if s.Name == "" || s.Node == "" || len(s.Packets) == 0 || len(s.Features) == 0 {
		return fail("name, node, features and packets are required")
	}
	if err := checkNode(objs, s.Node); err != nil {
		return fail("%v", err)
	}
	pods, err := objs.Pods()
	if err != nil {
		return fail("%v", err)
	}
	usable := map[string]proxier.Protocol{} // "ip:port" -> protocol
	for _, sl := range objs.Slices {
		for _, ep := range sl.Endpoints {
			ok := ep.Conditions.Ready == nil || *ep.Conditions.Ready ||
				(ep.Conditions.Serving != nil && *ep.Conditions.Serving)
			if !ok {
				continue
			}
			for _, a := range ep.Addresses {
				for _, p := range sl.Ports {
					proto := proxier.TCP
					if p.Protocol != nil {
						proto = proxier.Protocol(*p.Protocol)
					}
					if p.Port != nil {
						usable[fmt.Sprintf("%s:%d", a, *p.Port)] = proto
					}
				}
			}
		}
	}
	for _, p := range s.Packets {
		if err := checkPacket(p, pods, usable); err != nil {
			return fail("packet %q: %v", p.Name, err)
		}
	}
	return nil
}

func checkNode(objs *Objects, name string) error {
	for _, n := range objs.Nodes {
		if n.Name != name {
			continue
		}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && a.Address == Topology.NodeIP.String() {
				return nil
			}
		}
		return fmt.Errorf("node %s lacks InternalIP %s", name, Topology.NodeIP)
	}
	return fmt.Errorf("fixture has no Node %s", name)
}

func checkPacket(p Packet, pods []Pod, usable map[string]proxier.Protocol) error {
	if p.Name == "" {
		return errors.New("no name")
	}
	switch p.Proto {
	case proxier.TCP, proxier.UDP, proxier.SCTP:
	default:
		return fmt.Errorf("bad protocol %q", p.Proto)
	}
	if !p.Dst.IsValid() || p.Dst.Port() == 0 {
		return fmt.Errorf("bad destination %v", p.Dst)
	}
	d := p.Dst.Addr()
	localhost := p.Origin == FromNode && d.IsLoopback()
	if !Topology.ServiceCIDR.Contains(d) && !testNet2.Contains(d) && !isNodeAddr(d) && !Topology.ClusterCIDR.Contains(d) && !localhost {
		return fmt.Errorf("destination %v is outside the test ranges", d)
	}
	src, err := p.Source(pods)
	if err != nil {
		return err
	}
	if p.Origin == FromOutside && !Topology.OutsideNet.Contains(src) {
		return fmt.Errorf("outside source %v not in %v", src, Topology.OutsideNet)
	}
	if p.Src.IsValid() && p.Origin != FromOutside && p.Origin != FromNode {
		return errors.New("field Src is only for FromOutside and FromNode packets")
	}
	if p.Origin == FromNode && p.Src.IsValid() && !isNodeAddr(p.Src) && !p.Src.IsLoopback() {
		return fmt.Errorf("node source %v is not a node or loopback address", p.Src)
	}
	if p.From != "" && p.Origin != FromPod {
		return errors.New("field From is only for FromPod packets")
	}
	n := 0
	for _, b := range []bool{len(p.Endpoints) > 0, p.Refused, p.Dropped, p.Unserved} {
		if b {
			n++
		}
	}
	if n != 1 {
		return errors.New("exactly one of Endpoints, Refused, Dropped, Unserved must be set")
	}
	if len(p.Endpoints) == 0 && (p.Masqueraded || p.Affinity) {
		return errors.New("fields Masqueraded and Affinity need Endpoints")
	}
	seen := map[string]bool{}
	for _, e := range p.Endpoints {
		if _, err := netip.ParseAddrPort(e); err != nil {
			return fmt.Errorf("endpoint %q: %w", e, err)
		}
		if seen[e] {
			return fmt.Errorf("endpoint %s listed twice", e)
		}
		seen[e] = true
		proto, ok := usable[e]
		if !ok {
			return fmt.Errorf("endpoint %s is not a usable endpoint of the fixture", e)
		}
		if proto != p.Proto {
			return fmt.Errorf("endpoint %s serves %s, packet is %s", e, proto, p.Proto)
		}
	}
	return nil
}

func isNodeAddr(a netip.Addr) bool {
	for _, n := range Topology.NodeAddrs {
		if n == a {
			return true
		}
	}
	return false
}
