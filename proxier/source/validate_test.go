package source

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestValidate(t *testing.T) {
	str := func(s string) *string { return &s }
	tcp := corev1.ProtocolTCP
	goodSvc := func() *corev1.Service {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web",
			Annotations: map[string]string{"switchyard.io/ipvs-scheduler": "sh"}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns-udp")}}}}
		DefaultService(s)
		return s
	}
	goodSlice := func() *discoveryv1.EndpointSlice {
		s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-abc.1"},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: str("http")}, {}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}, NodeName: str("node-a.example")}}}
		DefaultEndpointSlice(s)
		return s
	}
	goodPod := func() *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-0"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, HostPort: 8080}}}}}}
		DefaultPod(p)
		return p
	}
	hostile := "x\"\n-A INPUT -j ACCEPT"
	cases := []struct {
		name string
		obj  any
		want string // "" = valid; else a substring of the error
	}{
		{"service", goodSvc(), ""},
		{"slice", goodSlice(), ""},
		{"pod", goodPod(), ""},
		{"node", &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a.example"}}, ""},
		{"service name not DNS-1035", func() any { s := goodSvc(); s.Name = "1web"; return s }(), "metadata.name"},
		{"service name with a dot", func() any { s := goodSvc(); s.Name = "web.x"; return s }(), "metadata.name"},
		{"namespace not a label", func() any { s := goodSvc(); s.Namespace = "a/b"; return s }(), "metadata.namespace"},
		{"hostile port name", func() any { s := goodSvc(); s.Spec.Ports[0].Name = hostile; return s }(), "spec.ports[0].name"},
		{"lone quote port name", func() any { s := goodSvc(); s.Spec.Ports[0].Name = `"`; return s }(), "spec.ports[0].name"},
		{"long port name", func() any { s := goodSvc(); s.Spec.Ports[0].Name = strings.Repeat("a", 64); return s }(), "spec.ports[0].name"},
		{"unnamed port among several", func() any { s := goodSvc(); s.Spec.Ports[1].Name = ""; return s }(), "spec.ports[1].name: Required"},
		{"duplicate port name", func() any { s := goodSvc(); s.Spec.Ports[1].Name = "http"; return s }(), "Duplicate"},
		{"bad protocol", func() any { s := goodSvc(); s.Spec.Ports[0].Protocol = "ICMP"; return s }(), "spec.ports[0].protocol"},
		{"bad port", func() any { s := goodSvc(); s.Spec.Ports[0].Port = 70000; return s }(), "spec.ports[0].port"},
		{"bad target port name", func() any { s := goodSvc(); s.Spec.Ports[0].TargetPort = intstr.FromString("a--b"); return s }(), "targetPort"},
		{"bad annotation key", func() any { s := goodSvc(); s.Annotations["a b"] = "x"; return s }(), "metadata.annotations"},
		{"annotations too large", func() any { s := goodSvc(); s.Annotations["big"] = strings.Repeat("x", 300*1024); return s }(), "metadata.annotations"},
		{"bad label value", func() any { s := goodSvc(); s.Labels = map[string]string{"app": hostile}; return s }(), "metadata.labels"},
		{"slice name", func() any { s := goodSlice(); s.Name = "Web"; return s }(), "metadata.name"},
		{"slice port name", func() any { s := goodSlice(); s.Ports[0].Name = str(hostile); return s }(), "ports[0].name"},
		{"slice port name IANA but not a label", func() any { s := goodSlice(); s.Ports[0].Name = str("HTTP"); return s }(), "ports[0].name"},
		{"slice duplicate unnamed", func() any { s := goodSlice(); s.Ports[0].Name = str(""); return s }(), "Duplicate"},
		{"slice protocol", func() any { s := goodSlice(); s.Ports[0].Protocol = nil; return s }(), "ports[0].protocol"},
		{"slice node name", func() any { s := goodSlice(); s.Endpoints[0].NodeName = str("Node_A"); return s }(), "endpoints[0].nodeName"},
		{"node name", &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node a"}}, "metadata.name"},
		{"pod name", func() any { p := goodPod(); p.Name = `p"`; return p }(), "metadata.name"},
		{"pod port name", func() any { p := goodPod(); p.Spec.Containers[0].Ports[0].Name = "http-port-too-long"; return p }(), "spec.containers[0].ports[0].name"},
		{"pod protocol", func() any { p := goodPod(); p.Spec.Containers[0].Ports[0].Protocol = "tcp"; return p }(), "protocol"},
		{"not an object kind", &tcp, "cannot validate"},
	}
	for _, tc := range cases {
		err := Validate(tc.obj)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one mentioning %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "\n-A") {
			t.Errorf("%s: the error holds a raw newline: %q", tc.name, err)
		}
	}
}
