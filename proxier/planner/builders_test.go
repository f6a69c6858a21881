package planner

import (
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Small builders so table tests read like the cluster they describe.

const testNode = "node-a"

func svc(name string, mods ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, CreationTimestamp: metav1.NewTime(time.Unix(1000, 0))},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

func nodePort(np int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = np
	}
}

func etpLocal(s *corev1.Service) {
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
}

func itpLocal(s *corev1.Service) {
	l := corev1.ServiceInternalTrafficPolicyLocal
	s.Spec.InternalTrafficPolicy = &l
}

func clusterIPs(ips ...string) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips }
}

type epOpt func(*discoveryv1.Endpoint)

func bptr(b bool) *bool                { return &b }
func sptr(s string) *string            { return &s }
func i32ptr(i int32) *int32            { return &i }
func onNode(n string) epOpt            { return func(e *discoveryv1.Endpoint) { e.NodeName = sptr(n) } }
func notReady(e *discoveryv1.Endpoint) { e.Conditions.Ready = bptr(false) }

// terminatingServing marks an endpoint terminating but still serving.
func terminatingServing(e *discoveryv1.Endpoint) {
	e.Conditions = discoveryv1.EndpointConditions{Ready: bptr(false), Serving: bptr(true), Terminating: bptr(true)}
}

// terminatingGone marks an endpoint terminating and not serving.
func terminatingGone(e *discoveryv1.Endpoint) {
	e.Conditions = discoveryv1.EndpointConditions{Ready: bptr(false), Serving: bptr(false), Terminating: bptr(true)}
}

func zoneHints(zones ...string) epOpt {
	return func(e *discoveryv1.Endpoint) {
		if e.Hints == nil {
			e.Hints = &discoveryv1.EndpointHints{}
		}
		for _, z := range zones {
			e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: z})
		}
	}
}

func nodeHints(nodes ...string) epOpt {
	return func(e *discoveryv1.Endpoint) {
		if e.Hints == nil {
			e.Hints = &discoveryv1.EndpointHints{}
		}
		for _, n := range nodes {
			e.Hints.ForNodes = append(e.Hints.ForNodes, discoveryv1.ForNode{Name: n})
		}
	}
}

func ep(ip string, opts ...epOpt) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: sptr("node-b")}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func slice(service, name string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: sptr("http"), Port: i32ptr(8080), Protocol: protoPtr(corev1.ProtocolTCP)}},
		Endpoints:   eps,
	}
}

func protoPtr(p corev1.Protocol) *corev1.Protocol { return &p }

func testConfig() Config {
	c := Config{
		Node:          NodeInfo{Name: testNode, Zone: "zone-a", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.10")}},
		ClusterCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		MasqueradeBit: 14,
	}
	c.Defaults()
	return c
}

// ips renders endpoints as a sorted "ip:port" list.
func ips(eps []proxier.Endpoint) string {
	var out []string
	for _, e := range eps {
		out = append(out, e.Addr.String())
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func planOne(t *testing.T, objs Objects, cfg Config) (*proxier.Snapshot, []Problem) {
	t.Helper()
	snaps, problems := Plan(objs, cfg)
	if len(snaps) != 1 {
		t.Fatalf("got %d snapshots, want 1", len(snaps))
	}
	return snaps[0], problems
}
