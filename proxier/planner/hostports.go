package planner

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// HostPorts collects the hostPort mappings of running pods on this node, per
// family. A pod without an IP of a family gets no mapping in it; a hostPort
// already claimed (same family, protocol, host IP and port) by another pod
// is reported and skipped, the oldest pod keeping it. A hostPort inside the
// node-port range (cfg.NodePortMin-NodePortMax) is reported and kept: a
// Service may take it later, and then keeps it (HostPortsBesideNodePorts).
func HostPorts(pods []*corev1.Pod, cfg *Config) (map[proxier.IPFamily][]proxier.HostPort, []Problem) {
	sorted := make([]*corev1.Pod, 0, len(pods))
	for _, pod := range pods {
		if pod.Spec.NodeName != cfg.Node.Name || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		sorted = append(sorted, pod)
	}
	sort.Slice(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	out := map[proxier.IPFamily][]proxier.HostPort{}
	var problems []Problem
	type portClaim struct {
		fam   proxier.IPFamily
		proto proxier.Protocol
		port  uint16
	}
	type owner struct {
		ip  netip.Addr // invalid: every address
		pod string
	}
	owners := map[portClaim][]owner{}
	for _, pod := range sorted {
		key := pod.Namespace + "/" + pod.Name
		podIPs := map[proxier.IPFamily]netip.Addr{}
		raw := []string{pod.Status.PodIP}
		for _, pip := range pod.Status.PodIPs {
			raw = append(raw, pip.IP)
		}
		for _, s := range raw {
			if ip, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil {
				ip = ip.Unmap()
				if _, set := podIPs[proxier.FamilyOf(ip)]; !set {
					podIPs[proxier.FamilyOf(ip)] = ip
				}
			}
		}
		for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
			for _, cp := range c.Ports {
				if cp.HostPort == 0 {
					continue
				}
				bad := func(format string, args ...any) {
					problems = append(problems, Problem{Kind: "Pod", Object: key, Reason: fmt.Sprintf(format, args...)})
				}
				if cp.HostPort < 1 || cp.HostPort > 65535 || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
					bad("hostPort %d -> containerPort %d out of range; mapping skipped", cp.HostPort, cp.ContainerPort)
					continue
				}
				proto := proxier.TCP
				switch cp.Protocol {
				case "", corev1.ProtocolTCP:
				case corev1.ProtocolUDP:
					proto = proxier.UDP
				case corev1.ProtocolSCTP:
					proto = proxier.SCTP
				default:
					bad("hostPort %d: protocol %q unknown; mapping skipped", cp.HostPort, cp.Protocol)
					continue
				}
				var hostIP netip.Addr
				if cp.HostIP != "" {
					ip, err := netip.ParseAddr(cp.HostIP)
					if err != nil {
						bad("hostIP %q is not a valid IP address; mapping skipped", cp.HostIP)
						continue
					}
					hostIP = ip.Unmap()
					if hostIP.IsUnspecified() {
						hostIP = netip.Addr{}
					}
				}
				for _, fam := range cfg.Families {
					podIP, ok := podIPs[fam]
					if !ok || (hostIP.IsValid() && proxier.FamilyOf(hostIP) != fam) {
						continue
					}
					cl := portClaim{fam, proto, uint16(cp.HostPort)}
					clash := ""
					for _, o := range owners[cl] {
						// A wildcard claim overlaps every address of the port.
						if o.pod != key && (!o.ip.IsValid() || !hostIP.IsValid() || o.ip == hostIP) {
							clash = o.pod
						}
					}
					if clash != "" {
						bad("hostPort %d/%s is already used by pod %s; mapping skipped", cp.HostPort, proto, clash)
						continue
					}
					if cfg.NodePortMin != 0 && cp.HostPort >= int32(cfg.NodePortMin) && cp.HostPort <= int32(cfg.NodePortMax) && fam == cfg.Families[0] {
						bad("hostPort %d/%s is inside the service node-port range %d-%d (--service-node-port-range); a Service given that node port will keep it",
							cp.HostPort, proto, cfg.NodePortMin, cfg.NodePortMax)
					}
					owners[cl] = append(owners[cl], owner{hostIP, key})
					out[fam] = append(out[fam], proxier.HostPort{Pod: key, Protocol: proto, HostIP: hostIP,
						HostPort: uint16(cp.HostPort), PodIP: podIP, ContainerPort: uint16(cp.ContainerPort)})
				}
			}
		}
	}
	return out, problems
}

// HostPortsBesideNodePorts drops, from each snapshot's HostPorts, the
// mappings whose port and protocol a Service of the same family uses as a
// node port: the Service keeps it (node ports answer on every node address,
// so any host IP collides). Each dropped mapping is a Problem naming the
// pod and the Service. The snapshots' slices are replaced, never modified.
func HostPortsBesideNodePorts(snaps []*proxier.Snapshot) []Problem {
	var problems []Problem
	for _, s := range snaps {
		if len(s.HostPorts) == 0 {
			continue
		}
		type key struct {
			proto proxier.Protocol
			port  uint16
		}
		nodePorts := map[key]string{}
		for _, sp := range s.Services {
			if sp.NodePort != 0 {
				if _, dup := nodePorts[key{sp.Protocol, sp.NodePort}]; !dup {
					nodePorts[key{sp.Protocol, sp.NodePort}] = sp.Name.String()
				}
			}
		}
		if len(nodePorts) == 0 {
			continue
		}
		var kept []proxier.HostPort
		for _, hp := range s.HostPorts {
			if svc, ok := nodePorts[key{hp.Protocol, hp.HostPort}]; ok {
				problems = append(problems, Problem{Kind: "Pod", Object: hp.Pod, Reason: fmt.Sprintf(
					"hostPort %d/%s (%s) is the node port of service %s, which keeps it; mapping skipped", hp.HostPort, hp.Protocol, s.Family, svc)})
				continue
			}
			kept = append(kept, hp)
		}
		s.HostPorts = kept
	}
	return problems
}
