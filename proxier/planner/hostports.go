package planner

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// HostPorts collects the hostPort mappings of running pods on this node, per
// family. A mapping targets the pod's primary IP of the family, or its IP
// on the network named by AnnotationHostPortNetwork (see hostPortTargets).
// A pod without an IP of a family gets no mapping in it; a hostPort
// already claimed (same family, protocol, host IP and port) by another pod
// is reported (with EventHostPortConflict) and skipped, the oldest pod
// keeping it. A hostPort inside the
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
		if !hasHostPorts(pod) {
			continue
		}
		podIPs, prob := hostPortTargets(pod)
		if prob != nil {
			problems = append(problems, *prob)
			continue
		}
		for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
			for _, cp := range c.Ports {
				if cp.HostPort == 0 {
					continue
				}
				bad := func(format string, args ...any) {
					problems = append(problems, Problem{Kind: "Pod", Object: key, Reason: fmt.Sprintf(format, args...)})
				}
				conflict := func(format string, args ...any) {
					problems = append(problems, Problem{Kind: "Pod", Object: key, Reason: fmt.Sprintf(format, args...), Event: EventHostPortConflict})
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
						conflict("hostPort %d/%s is already used by pod %s; mapping skipped", cp.HostPort, proto, clash)
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
				problems = append(problems, Problem{Kind: "Pod", Object: hp.Pod, Event: EventHostPortConflict, Reason: fmt.Sprintf(
					"hostPort %d/%s (%s) is the node port of service %s, which keeps it; mapping skipped", hp.HostPort, hp.Protocol, s.Family, svc)})
				continue
			}
			kept = append(kept, hp)
		}
		s.HostPorts = kept
	}
	return problems
}

// Host-port annotations and the event reason the planner reports.
const (
	// AnnotationHostPortNetwork opts a pod in to having its hostPorts
	// mapped to its address on a secondary (Multus) network instead of its
	// primary pod IP. The value is "<namespace>/<network>" (or
	// "<network>", in the pod's namespace), as the network is named in
	// AnnotationNetworkStatus.
	AnnotationHostPortNetwork = "switchyard.io/hostport-network"
	// AnnotationNetworkStatus is where Multus reports the pod's networks:
	// a JSON list of {name, interface, ips, default}.
	AnnotationNetworkStatus = "k8s.v1.cni.cncf.io/network-status"
	// EventHostPortConflict is the reason of the Event a pod gets when
	// another pod or a Service keeps one of its hostPorts.
	EventHostPortConflict = "HostPortConflict"
)

// networkStatus is one entry of AnnotationNetworkStatus (the fields the
// planner reads).
type networkStatus struct {
	Name      string   `json:"name"`
	Interface string   `json:"interface"`
	IPs       []string `json:"ips"`
	Default   bool     `json:"default"`
}

// hasHostPorts reports whether any of pod's containers asks for a hostPort.
func hasHostPorts(pod *corev1.Pod) bool {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, cp := range c.Ports {
				if cp.HostPort != 0 {
					return true
				}
			}
		}
	}
	return false
}

// hostPortTargets returns the address per family that pod's hostPorts
// map to: its primary IPs (status.podIP, status.podIPs), or with
// AnnotationHostPortNetwork its IPs on that network from
// AnnotationNetworkStatus. A pod that opted in but whose network status
// is missing, malformed or lacks the network (or any IP on it) is a
// problem and gets no mapping: mapping it to its primary IP instead would
// send the traffic to a network the pod's owner did not choose.
func hostPortTargets(pod *corev1.Pod) (map[proxier.IPFamily]netip.Addr, *Problem) {
	raw := []string{pod.Status.PodIP}
	for _, pip := range pod.Status.PodIPs {
		raw = append(raw, pip.IP)
	}
	if want, ok := pod.Annotations[AnnotationHostPortNetwork]; ok {
		bad := func(format string, args ...any) *Problem {
			return &Problem{Kind: "Pod", Object: pod.Namespace + "/" + pod.Name,
				Reason: fmt.Sprintf("annotation %s=%q: ", AnnotationHostPortNetwork, want) + fmt.Sprintf(format, args...) + "; host ports skipped"}
		}
		ns, name, found := strings.Cut(strings.TrimSpace(want), "/")
		if !found {
			ns, name = pod.Namespace, ns
		}
		if len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(name)) > 0 {
			return nil, bad("want <namespace>/<network>")
		}
		status, ok := pod.Annotations[AnnotationNetworkStatus]
		if !ok {
			return nil, bad("the pod has no %s annotation (yet)", AnnotationNetworkStatus)
		}
		var nets []networkStatus
		if err := json.Unmarshal([]byte(status), &nets); err != nil {
			return nil, bad("%s is not a JSON list of networks: %v", AnnotationNetworkStatus, err)
		}
		raw = nil
		for _, n := range nets {
			// Multus names networks of the pod's own namespace with or
			// without it.
			if n.Name == ns+"/"+name || (ns == pod.Namespace && n.Name == name) {
				raw = n.IPs
				if len(raw) == 0 {
					return nil, bad("network %s/%s has no IP in %s", ns, name, AnnotationNetworkStatus)
				}
				break
			}
		}
		if raw == nil {
			return nil, bad("network %s/%s is not in %s", ns, name, AnnotationNetworkStatus)
		}
	}
	podIPs := map[proxier.IPFamily]netip.Addr{}
	for _, s := range raw {
		if ip, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil {
			ip = ip.Unmap()
			if _, set := podIPs[proxier.FamilyOf(ip)]; !set {
				podIPs[proxier.FamilyOf(ip)] = ip
			}
		}
	}
	return podIPs, nil
}

// HostPortInputs returns what of pod can change its hostPort mappings
// (node, phase, creation time, IPs, ports, the opt-in network and, with
// it, the network status), encoded for comparison; "" for a pod without
// hostPorts, which can never have a mapping. Two versions of a pod with
// equal inputs plan the same mappings, so a source can drop the update
// (labels, conditions, other annotations) without a sync.
func HostPortInputs(pod *corev1.Pod) string {
	if pod == nil || !hasHostPorts(pod) {
		return ""
	}
	in := struct {
		Node, Phase, Created, PodIP string
		PodIPs                      []corev1.PodIP
		Init, Containers            [][]corev1.ContainerPort
		Network                     *string
		Status                      string
	}{Node: pod.Spec.NodeName, Phase: string(pod.Status.Phase), Created: pod.CreationTimestamp.UTC().String(),
		PodIP: pod.Status.PodIP, PodIPs: pod.Status.PodIPs}
	for _, c := range pod.Spec.InitContainers {
		in.Init = append(in.Init, c.Ports)
	}
	for _, c := range pod.Spec.Containers {
		in.Containers = append(in.Containers, c.Ports)
	}
	if n, ok := pod.Annotations[AnnotationHostPortNetwork]; ok {
		in.Network = &n
		in.Status = pod.Annotations[AnnotationNetworkStatus]
	}
	b, err := json.Marshal(in)
	if err != nil {
		// Strings and slices of plain structs always marshal.
		panic(fmt.Sprintf("hostport inputs of %s/%s: %v", pod.Namespace, pod.Name, err))
	}
	return string(b)
}
