package source

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// DefaultService fills in, in place, the fields the API server would have
// defaulted or derived when svc was created, so that a Service read from a
// file looks like one read from the API: sessionAffinity None (and the
// 10800s ClientIP timeout), type ClusterIP, port protocol TCP, targetPort =
// port, externalTrafficPolicy Cluster for externally accessible services,
// internalTrafficPolicy Cluster, allocateLoadBalancerNodePorts true, ingress
// ipMode VIP, and clusterIP/clusterIPs/ipFamilies/ipFamilyPolicy made
// consistent with each other. Fields already set are left alone.
func DefaultService(svc *corev1.Service) {
	spec := &svc.Spec
	if spec.SessionAffinity == "" {
		spec.SessionAffinity = corev1.ServiceAffinityNone
	}
	if spec.SessionAffinity == corev1.ServiceAffinityNone {
		spec.SessionAffinityConfig = nil
	}
	if spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		cfg := spec.SessionAffinityConfig
		if cfg == nil || cfg.ClientIP == nil || cfg.ClientIP.TimeoutSeconds == nil {
			timeout := corev1.DefaultClientIPServiceAffinitySeconds
			spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{
				ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout},
			}
		}
	}
	if spec.Type == "" {
		spec.Type = corev1.ServiceTypeClusterIP
	}
	for i := range spec.Ports {
		p := &spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if p.TargetPort == intstr.FromInt32(0) || p.TargetPort == intstr.FromString("") {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
	}
	externallyAccessible := spec.Type == corev1.ServiceTypeLoadBalancer ||
		spec.Type == corev1.ServiceTypeNodePort ||
		(spec.Type == corev1.ServiceTypeClusterIP && len(spec.ExternalIPs) > 0)
	if externallyAccessible && spec.ExternalTrafficPolicy == "" {
		spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	}
	if spec.InternalTrafficPolicy == nil && spec.Type != corev1.ServiceTypeExternalName {
		p := corev1.ServiceInternalTrafficPolicyCluster
		spec.InternalTrafficPolicy = &p
	}
	if spec.Type == corev1.ServiceTypeLoadBalancer {
		if spec.AllocateLoadBalancerNodePorts == nil {
			t := true
			spec.AllocateLoadBalancerNodePorts = &t
		}
		for i := range svc.Status.LoadBalancer.Ingress {
			ing := &svc.Status.LoadBalancer.Ingress[i]
			if ing.IP != "" && ing.IPMode == nil {
				vip := corev1.LoadBalancerIPModeVIP
				ing.IPMode = &vip
			}
		}
	}
	defaultClusterIPs(spec)
}

// defaultClusterIPs makes clusterIP, clusterIPs, ipFamilies and
// ipFamilyPolicy agree, as the API server's allocator leaves them.
func defaultClusterIPs(spec *corev1.ServiceSpec) {
	if spec.Type == corev1.ServiceTypeExternalName {
		return
	}
	switch {
	case len(spec.ClusterIPs) == 0 && spec.ClusterIP != "":
		spec.ClusterIPs = []string{spec.ClusterIP}
	case spec.ClusterIP == "" && len(spec.ClusterIPs) > 0:
		spec.ClusterIP = spec.ClusterIPs[0]
	}
	if len(spec.IPFamilies) == 0 && spec.ClusterIP != corev1.ClusterIPNone {
		var families []corev1.IPFamily
		for _, s := range spec.ClusterIPs {
			addr, err := netip.ParseAddr(s)
			if err != nil {
				// Leave the families empty; the planner rejects the
				// service and names the bad address.
				families = nil
				break
			}
			if addr.Unmap().Is4() {
				families = append(families, corev1.IPv4Protocol)
			} else {
				families = append(families, corev1.IPv6Protocol)
			}
		}
		spec.IPFamilies = families
	}
	if spec.IPFamilyPolicy == nil && len(spec.IPFamilies) > 0 {
		p := corev1.IPFamilyPolicySingleStack
		if len(spec.IPFamilies) > 1 {
			p = corev1.IPFamilyPolicyRequireDualStack
		}
		spec.IPFamilyPolicy = &p
	}
}

// DefaultEndpointSlice fills in, in place, the API server's defaults of an
// EndpointSlice: every port gets a name ("") and a protocol (TCP).
func DefaultEndpointSlice(slice *discoveryv1.EndpointSlice) {
	for i := range slice.Ports {
		p := &slice.Ports[i]
		if p.Name == nil {
			name := ""
			p.Name = &name
		}
		if p.Protocol == nil {
			tcp := corev1.ProtocolTCP
			p.Protocol = &tcp
		}
	}
}

// DefaultPod fills in, in place, the defaults a Pod's hostPort mappings
// depend on: container port protocol TCP, hostPort = containerPort on the
// host network, and status.podIP/podIPs made consistent (as the kubelet
// reports them).
func DefaultPod(pod *corev1.Pod) {
	for _, containers := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range containers {
			for j := range containers[i].Ports {
				p := &containers[i].Ports[j]
				if p.Protocol == "" {
					p.Protocol = corev1.ProtocolTCP
				}
				if pod.Spec.HostNetwork && p.HostPort == 0 {
					p.HostPort = p.ContainerPort
				}
			}
		}
	}
	st := &pod.Status
	switch {
	case len(st.PodIPs) == 0 && st.PodIP != "":
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	case st.PodIP == "" && len(st.PodIPs) > 0:
		st.PodIP = st.PodIPs[0].IP
	}
}
