package source

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestSelectedAndLabelSelector(t *testing.T) {
	cases := []struct {
		name   string
		labels map[string]string
		// want is Selected's answer for proxy names "", "switchyard".
		want [2]bool
	}{
		{"no labels", nil, [2]bool{true, true}},
		{"unrelated label", map[string]string{"app": "web"}, [2]bool{true, true}},
		{"ours", map[string]string{LabelServiceProxyName: "switchyard"}, [2]bool{false, true}},
		{"other proxy", map[string]string{LabelServiceProxyName: "other"}, [2]bool{false, false}},
		{"empty proxy name", map[string]string{LabelServiceProxyName: ""}, [2]bool{false, false}},
		{"headless", map[string]string{LabelHeadless: ""}, [2]bool{false, false}},
		{"headless and ours", map[string]string{LabelHeadless: "", LabelServiceProxyName: "switchyard"}, [2]bool{false, false}},
	}
	for _, tc := range cases {
		for i, proxy := range []string{"", "switchyard"} {
			got := Selected(tc.labels, proxy)
			if got != tc.want[i] {
				t.Errorf("%s, proxy %q: Selected = %v, want %v", tc.name, proxy, got, tc.want[i])
			}
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Labels: tc.labels}}
			slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Labels: tc.labels}}
			if ServiceSelected(svc, proxy) != got || EndpointSliceSelected(slice, proxy) != got {
				t.Errorf("%s, proxy %q: ServiceSelected/EndpointSliceSelected disagree with Selected", tc.name, proxy)
			}
			// The server-side selector never drops what Selected keeps,
			// and is exact when no proxy name is set.
			matches := LabelSelector(proxy).Matches(labels.Set(tc.labels))
			if got && !matches {
				t.Errorf("%s, proxy %q: selector drops a selected object", tc.name, proxy)
			}
			if proxy == "" && matches != got {
				t.Errorf("%s: selector %v, Selected %v", tc.name, matches, got)
			}
		}
	}
	if got, want := LabelSelector("").String(), "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"; got != want {
		t.Errorf("LabelSelector(\"\") = %q, want kube-proxy's %q", got, want)
	}
	if got, want := LabelSelector("switchyard").String(), "!service.kubernetes.io/headless"; got != want {
		t.Errorf("LabelSelector(\"switchyard\") = %q, want %q", got, want)
	}
}

func TestDefaultService(t *testing.T) {
	clientIP := &corev1.Service{Spec: corev1.ServiceSpec{
		Type:            corev1.ServiceTypeLoadBalancer,
		ClusterIPs:      []string{"fd00::1", "10.0.0.1"},
		SessionAffinity: corev1.ServiceAffinityClientIP,
		Ports:           []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromString("http")}, {Port: 53, Protocol: corev1.ProtocolUDP}},
	}, Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "1.2.3.4"}, {Hostname: "lb.example"}}}}}
	DefaultService(clientIP)
	s := clientIP.Spec
	if s.ClusterIP != "fd00::1" || !reflect.DeepEqual(s.IPFamilies, []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}) ||
		*s.IPFamilyPolicy != corev1.IPFamilyPolicyRequireDualStack {
		t.Errorf("cluster IPs: %q %v %v", s.ClusterIP, s.IPFamilies, *s.IPFamilyPolicy)
	}
	if *s.SessionAffinityConfig.ClientIP.TimeoutSeconds != 10800 {
		t.Errorf("affinity timeout %d", *s.SessionAffinityConfig.ClientIP.TimeoutSeconds)
	}
	if s.Ports[0].Protocol != corev1.ProtocolTCP || s.Ports[0].TargetPort != intstr.FromString("http") ||
		s.Ports[1].Protocol != corev1.ProtocolUDP || s.Ports[1].TargetPort != intstr.FromInt32(53) {
		t.Errorf("ports %+v", s.Ports)
	}
	if s.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyCluster || *s.InternalTrafficPolicy != corev1.ServiceInternalTrafficPolicyCluster ||
		!*s.AllocateLoadBalancerNodePorts {
		t.Errorf("policies %q %v %v", s.ExternalTrafficPolicy, *s.InternalTrafficPolicy, *s.AllocateLoadBalancerNodePorts)
	}
	ing := clientIP.Status.LoadBalancer.Ingress
	if ing[0].IPMode == nil || *ing[0].IPMode != corev1.LoadBalancerIPModeVIP || ing[1].IPMode != nil {
		t.Errorf("ingress ipMode %+v", ing)
	}

	// Explicit values stay; headless, bad IPs and ExternalName get no families.
	local := corev1.ServiceInternalTrafficPolicyLocal
	plain := &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.2", InternalTrafficPolicy: &local}}
	DefaultService(plain)
	if plain.Spec.Type != corev1.ServiceTypeClusterIP || plain.Spec.ExternalTrafficPolicy != "" || *plain.Spec.InternalTrafficPolicy != local ||
		!reflect.DeepEqual(plain.Spec.ClusterIPs, []string{"10.0.0.2"}) || *plain.Spec.IPFamilyPolicy != corev1.IPFamilyPolicySingleStack {
		t.Errorf("plain: %+v", plain.Spec)
	}
	for _, ip := range []string{corev1.ClusterIPNone, "not-an-ip"} {
		svc := &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: ip}}
		DefaultService(svc)
		if svc.Spec.IPFamilies != nil || svc.Spec.IPFamilyPolicy != nil {
			t.Errorf("clusterIP %q got families %v", ip, svc.Spec.IPFamilies)
		}
	}
	ext := &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "x.example"}}
	DefaultService(ext)
	if ext.Spec.InternalTrafficPolicy != nil || ext.Spec.ClusterIPs != nil {
		t.Errorf("ExternalName: %+v", ext.Spec)
	}
}

func TestDefaultEndpointSliceAndPod(t *testing.T) {
	udp := corev1.ProtocolUDP
	name := "dns"
	slice := &discoveryv1.EndpointSlice{Ports: []discoveryv1.EndpointPort{{}, {Name: &name, Protocol: &udp}}}
	DefaultEndpointSlice(slice)
	if *slice.Ports[0].Name != "" || *slice.Ports[0].Protocol != corev1.ProtocolTCP || *slice.Ports[1].Name != "dns" || *slice.Ports[1].Protocol != udp {
		t.Errorf("slice ports %+v", slice.Ports)
	}
	pod := &corev1.Pod{
		Spec:   corev1.PodSpec{HostNetwork: true, Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{ContainerPort: 80}}}}},
		Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.1.0.5"}, {IP: "fd00::5"}}},
	}
	DefaultPod(pod)
	if p := pod.Spec.Containers[0].Ports[0]; p.Protocol != corev1.ProtocolTCP || p.HostPort != 80 {
		t.Errorf("pod port %+v", p)
	}
	if pod.Status.PodIP != "10.1.0.5" {
		t.Errorf("podIP %q", pod.Status.PodIP)
	}
}
