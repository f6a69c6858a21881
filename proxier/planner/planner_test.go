package planner

import (
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Endpoints used across the policy table (port 8080 everywhere).
var (
	local1 = func(o ...epOpt) discoveryv1.Endpoint {
		return ep("10.244.1.1", append([]epOpt{onNode(testNode)}, o...)...)
	}
	localTerm = func(o ...epOpt) discoveryv1.Endpoint {
		return ep("10.244.1.2", append([]epOpt{onNode(testNode), terminatingServing}, o...)...)
	}
	remote1    = func(o ...epOpt) discoveryv1.Endpoint { return ep("10.244.2.1", o...) }
	remote2    = func(o ...epOpt) discoveryv1.Endpoint { return ep("10.244.2.3", o...) }
	remoteTerm = func(o ...epOpt) discoveryv1.Endpoint {
		return ep("10.244.2.2", append([]epOpt{terminatingServing}, o...)...)
	}
)

const (
	L1 = "10.244.1.1:8080"
	LT = "10.244.1.2:8080"
	R1 = "10.244.2.1:8080"
	RT = "10.244.2.2:8080"
	R2 = "10.244.2.3:8080"
)

func TestPolicyTable(t *testing.T) {
	np := nodePort(30080)
	extIP := func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"203.0.113.9"} }
	both := L1 + "," + R1
	// Columns: Cluster, Local, any usable endpoint, what outside traffic to
	// external addresses uses, what cluster-IP traffic uses, what pods and
	// the node use for external addresses under eTP Local (short-circuit).
	cases := []struct {
		name        string
		svc         []func(*corev1.Service)
		eps         []discoveryv1.Endpoint
		wantCluster string
		wantLocal   string
		wantAny     bool
		wantExt     string // ExternalEndpoints()
		wantInt     string // InternalEndpoints()
		wantShort   string // ShortCircuitEndpoints()
	}{
		{"cluster policies, ready endpoints", []func(*corev1.Service){np}, []discoveryv1.Endpoint{local1(), remote1()},
			both, "", true, both, both, ""},
		{"ClusterIP only: no external traffic at all", nil, []discoveryv1.Endpoint{local1(), remote1()},
			both, "", true, "", both, ""},
		{"eTP Local uses only local ready; pods and node short-circuit to cluster", []func(*corev1.Service){np, etpLocal}, []discoveryv1.Endpoint{local1(), remote1()},
			both, L1, true, L1, both, both},
		{"eTP Local, no local endpoint: external gets none, cluster still served", []func(*corev1.Service){np, etpLocal}, []discoveryv1.Endpoint{remote1()},
			R1, "", true, "", R1, R1},
		{"eTP Local falls back to local serving-terminating", []func(*corev1.Service){np, etpLocal}, []discoveryv1.Endpoint{localTerm(), remote1()},
			R1, LT, true, LT, R1, R1},
		{"eTP Local prefers local ready over local terminating", []func(*corev1.Service){np, etpLocal}, []discoveryv1.Endpoint{local1(), localTerm()},
			L1, L1, true, L1, L1, L1},
		{"eTP Local on a ClusterIP service without external IPs is ignored", []func(*corev1.Service){etpLocal}, []discoveryv1.Endpoint{local1(), remote1()},
			both, "", true, "", both, ""},
		{"eTP Local on a ClusterIP service with external IPs", []func(*corev1.Service){extIP, etpLocal}, []discoveryv1.Endpoint{local1(), remote1()},
			both, L1, true, L1, both, both},
		{"iTP Local ClusterIP uses only local", []func(*corev1.Service){itpLocal}, []discoveryv1.Endpoint{local1(), remote1()},
			"", L1, true, "", L1, ""},
		{"iTP Local with eTP Cluster NodePort keeps cluster endpoints for external", []func(*corev1.Service){np, itpLocal}, []discoveryv1.Endpoint{local1(), remote1()},
			both, L1, true, both, L1, ""},
		// Upstream computes cluster endpoints when !iTPLocal || externally
		// accessible: pods and the node reach the node port through them.
		{"iTP Local and eTP Local: local for outside and cluster IP, cluster for the short-circuit", []func(*corev1.Service){np, itpLocal, etpLocal}, []discoveryv1.Endpoint{local1(), remote1()},
			both, L1, true, L1, L1, both},
		{"iTP Local and eTP Local, no local endpoint: only the short-circuit is served", []func(*corev1.Service){np, itpLocal, etpLocal}, []discoveryv1.Endpoint{remote1()},
			R1, "", true, "", "", R1},
		{"iTP Local falls back to local serving-terminating", []func(*corev1.Service){itpLocal}, []discoveryv1.Endpoint{localTerm(), remote1()},
			"", LT, true, "", LT, ""},
		{"iTP Local without any local endpoint: nothing served, but endpoints exist (drop, not reject)", []func(*corev1.Service){itpLocal}, []discoveryv1.Endpoint{remote1()},
			"", "", true, "", "", ""},
		{"cluster falls back to serving-terminating when nothing is ready", nil, []discoveryv1.Endpoint{localTerm(), remoteTerm(), remote1(notReady)},
			LT + "," + RT, "", true, "", LT + "," + RT, ""},
		{"terminating endpoints unused while any is ready", nil, []discoveryv1.Endpoint{remote1(), remoteTerm()},
			R1, "", true, "", R1, ""},
		{"not serving terminating and not-ready endpoints serve nothing", nil, []discoveryv1.Endpoint{ep("10.244.2.9", terminatingGone), remote1(notReady)},
			"", "", false, "", "", ""},
		{"zone hints: same zone only", nil, []discoveryv1.Endpoint{local1(zoneHints("zone-a")), remote1(zoneHints("zone-a")), remote2(zoneHints("zone-b"))},
			both, "", true, "", both, ""},
		{"zone hints ignored when one ready endpoint lacks hints", nil, []discoveryv1.Endpoint{local1(zoneHints("zone-a")), remote1(), remote2(zoneHints("zone-b"))},
			both + "," + R2, "", true, "", both + "," + R2, ""},
		{"zone hints ignored when none names this zone", nil, []discoveryv1.Endpoint{remote1(zoneHints("zone-b")), remote2(zoneHints("zone-c"))},
			R1 + "," + R2, "", true, "", R1 + "," + R2, ""},
		{"hints on not-ready endpoints do not matter", nil, []discoveryv1.Endpoint{remote1(zoneHints("zone-a")), remote2(zoneHints("zone-b")), ep("10.244.2.7", notReady)},
			R1, "", true, "", R1, ""},
		{"node hints (PreferSameNode) win over zone hints", nil, []discoveryv1.Endpoint{local1(nodeHints(testNode), zoneHints("zone-a")), remote1(nodeHints("node-b"), zoneHints("zone-a"))},
			L1, "", true, "", L1, ""},
		{"node hints not naming this node fall back to zone hints", nil, []discoveryv1.Endpoint{local1(nodeHints("node-c"), zoneHints("zone-b")), remote1(nodeHints("node-b"), zoneHints("zone-a"))},
			R1, "", true, "", R1, ""},
		{"topology applies to external Cluster traffic too", []func(*corev1.Service){np}, []discoveryv1.Endpoint{local1(zoneHints("zone-a")), remote1(zoneHints("zone-b"))},
			L1, "", true, L1, L1, ""},
		{"Local policies ignore topology", []func(*corev1.Service){np, etpLocal}, []discoveryv1.Endpoint{local1(zoneHints("zone-b")), remote1(zoneHints("zone-a"))},
			R1, L1, true, L1, R1, R1},
		{"terminating fallback with hints: topology decided on ready endpoints only", nil, []discoveryv1.Endpoint{localTerm(zoneHints("zone-a")), remoteTerm(zoneHints("zone-b"))},
			LT + "," + RT, "", true, "", LT + "," + RT, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := svc("web", tc.svc...)
			snap, problems := planOne(t, Objects{Services: []*corev1.Service{s}, Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", tc.eps...)}}, testConfig())
			if len(problems) != 0 {
				t.Fatalf("unexpected problems: %v", problems)
			}
			if len(snap.Services) != 1 {
				t.Fatalf("got %d service ports, want 1", len(snap.Services))
			}
			sp := snap.Services[0]
			check := func(what, got, want string) {
				t.Helper()
				if got != want {
					t.Errorf("%s = %q, want %q", what, got, want)
				}
			}
			check("ClusterEndpoints", ips(sp.ClusterEndpoints), tc.wantCluster)
			check("LocalEndpoints", ips(sp.LocalEndpoints), tc.wantLocal)
			check("ExternalEndpoints", ips(sp.ExternalEndpoints()), tc.wantExt)
			check("InternalEndpoints", ips(sp.InternalEndpoints()), tc.wantInt)
			check("ShortCircuitEndpoints", ips(sp.ShortCircuitEndpoints()), tc.wantShort)
			if sp.HasAnyEndpoints != tc.wantAny {
				t.Errorf("HasAnyEndpoints = %v, want %v", sp.HasAnyEndpoints, tc.wantAny)
			}
			wantUnserved := proxier.Reject
			if tc.wantAny {
				wantUnserved = proxier.Drop
			}
			if sp.Unserved != wantUnserved {
				t.Errorf("Unserved = %v, want %v", sp.Unserved, wantUnserved)
			}
			// Reachable is the union of the lists in use, sorted.
			check("ReachableEndpoints", ips(sp.ReachableEndpoints), unionStrings(tc.wantCluster, tc.wantLocal))
			if len(sp.AllEndpoints) != len(tc.eps) {
				t.Errorf("AllEndpoints has %d, want %d", len(sp.AllEndpoints), len(tc.eps))
			}
		})
	}
}

// unionStrings merges two comma lists of addresses, sorted, without
// duplicates (the addresses in the table sort as strings).
func unionStrings(a, b string) string {
	set := map[string]bool{}
	for _, l := range []string{a, b} {
		for _, x := range strings.Split(l, ",") {
			if x != "" {
				set[x] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for x := range set {
		out = append(out, x)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func TestConditionDefaults(t *testing.T) {
	mk := func(ready, serving, term *bool) discoveryv1.Endpoint {
		e := ep("10.244.2.1")
		e.Conditions = discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: term}
		return e
	}
	cases := []struct {
		name                        string
		e                           discoveryv1.Endpoint
		ready, serving, terminating bool
	}{
		{"all nil", mk(nil, nil, nil), true, true, false},
		// Upstream (endpointslicecache.go): serving nil is true, whatever
		// ready says.
		{"ready false, serving nil is true", mk(bptr(false), nil, nil), false, true, false},
		{"ready false serving true", mk(bptr(false), bptr(true), nil), false, true, false},
		{"terminating true, ready nil", mk(nil, nil, bptr(true)), true, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			snap, _ := planOne(t, Objects{Services: []*corev1.Service{svc("web")}, Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", tc.e)}}, testConfig())
			got := snap.Services[0].AllEndpoints[0]
			if got.Ready != tc.ready || got.Serving != tc.serving || got.Terminating != tc.terminating {
				t.Errorf("got ready=%v serving=%v terminating=%v, want %v %v %v", got.Ready, got.Serving, got.Terminating, tc.ready, tc.serving, tc.terminating)
			}
		})
	}
}

func TestEndpointsDeduplicatedAcrossSlicesAndMatchedByPortName(t *testing.T) {
	s := svc("web", func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	})
	a := slice("web", "web-a", remote1(notReady), remote2())
	b := slice("web", "web-b", remote1(), ep("10.244.2.4"))
	// Slice c carries the UDP port under the same name "dns" and a TCP port
	// "dns" that must not match the UDP service port.
	c := slice("web", "web-c", ep("10.244.3.1"))
	c.Ports = []discoveryv1.EndpointPort{
		{Name: sptr("dns"), Port: i32ptr(5353), Protocol: protoPtr(corev1.ProtocolUDP)},
		{Name: sptr("dns"), Port: i32ptr(9999), Protocol: protoPtr(corev1.ProtocolTCP)},
	}
	snap, problems := planOne(t, Objects{Services: []*corev1.Service{s}, Slices: []*discoveryv1.EndpointSlice{b, c, a}}, testConfig())
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	if len(snap.Services) != 2 {
		t.Fatalf("got %d ports", len(snap.Services))
	}
	dns, http := snap.Services[0], snap.Services[1]
	if dns.Name.Port != "dns" || dns.Protocol != proxier.UDP || http.Name.Port != "http" {
		t.Fatalf("unexpected order/names: %v %v", dns.Name, http.Name)
	}
	if got := ips(http.ClusterEndpoints); got != "10.244.2.1:8080,10.244.2.3:8080,10.244.2.4:8080" {
		t.Errorf("http endpoints = %s (the ready copy of a duplicate must win)", got)
	}
	if len(http.AllEndpoints) != 3 {
		t.Errorf("duplicates not removed: %v", http.AllEndpoints)
	}
	if got := ips(dns.ClusterEndpoints); got != "10.244.3.1:5353" {
		t.Errorf("dns endpoints = %s", got)
	}
}

func TestAddressesAndAffinity(t *testing.T) {
	lb := svc("lb", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 31000
		s.Spec.ExternalIPs = []string{"192.0.2.50"}
		s.Spec.LoadBalancerSourceRanges = []string{" 203.0.113.0/24", "2001:db8::/64"}
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 32000
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		proxy := corev1.LoadBalancerIPModeProxy
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}, {IP: "198.51.100.8", IPMode: &proxy}, {Hostname: "lb.example"}}
	})
	snap, problems := planOne(t, Objects{Services: []*corev1.Service{lb}}, testConfig())
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	sp := snap.Services[0]
	if sp.NodePort != 31000 || sp.HealthCheckNodePort != 32000 || !sp.ExternalPolicyLocal {
		t.Errorf("nodePort/hc/eTP wrong: %+v", sp)
	}
	if len(sp.ExternalIPs) != 1 || sp.ExternalIPs[0].String() != "192.0.2.50" {
		t.Errorf("external IPs %v", sp.ExternalIPs)
	}
	if len(sp.LoadBalancerIPs) != 1 || sp.LoadBalancerIPs[0].String() != "198.51.100.7" {
		t.Errorf("LB IPs %v (ipMode Proxy and hostnames must be skipped)", sp.LoadBalancerIPs)
	}
	if len(sp.LoadBalancerSourceRanges) != 1 || sp.LoadBalancerSourceRanges[0].String() != "203.0.113.0/24" {
		t.Errorf("source ranges %v (only this family's)", sp.LoadBalancerSourceRanges)
	}
	if sp.Affinity.Timeout != 10800*time.Second {
		t.Errorf("affinity timeout %v, want default 10800s", sp.Affinity.Timeout)
	}
	if sp.HasAnyEndpoints {
		t.Errorf("no slices but HasAnyEndpoints")
	}

	// A custom timeout, and the legacy source-range annotation.
	lb2 := lb.DeepCopy()
	lb2.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: i32ptr(60)}}
	lb2.Spec.LoadBalancerSourceRanges = nil
	lb2.Annotations = map[string]string{AnnotationSourceRanges: "10.1.0.0/16, 10.2.0.0/16"}
	snap, _ = planOne(t, Objects{Services: []*corev1.Service{lb2}}, testConfig())
	sp = snap.Services[0]
	if sp.Affinity.Timeout != time.Minute || len(sp.LoadBalancerSourceRanges) != 2 {
		t.Errorf("timeout %v ranges %v", sp.Affinity.Timeout, sp.LoadBalancerSourceRanges)
	}

	// Health check ports only for LoadBalancer services with eTP Local.
	npLocal := svc("np", nodePort(30001), etpLocal, func(s *corev1.Service) { s.Spec.HealthCheckNodePort = 32001 })
	snap, _ = planOne(t, Objects{Services: []*corev1.Service{npLocal}}, testConfig())
	if snap.Services[0].HealthCheckNodePort != 0 {
		t.Errorf("NodePort service got a health check port")
	}
}

func TestSkippedServices(t *testing.T) {
	headless := svc("headless", clusterIPs("None"))
	ext := svc("ext", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeExternalName
		s.Spec.ExternalName = "example.com"
	})
	snap, problems := planOne(t, Objects{Services: []*corev1.Service{headless, ext, svc("web")}}, testConfig())
	if len(problems) != 0 {
		t.Errorf("headless/ExternalName are not problems: %v", problems)
	}
	if len(snap.Services) != 1 || snap.Services[0].Name.Name != "web" {
		t.Errorf("services: %v", snap.Services)
	}
}

func TestDualStack(t *testing.T) {
	s := svc("web", clusterIPs("fd00:96::10", "10.96.0.10"), func(s *corev1.Service) {
		s.Spec.ExternalIPs = []string{"192.0.2.50", "2001:db8::50"}
	})
	v6 := &discoveryv1.EndpointSlice{
		ObjectMeta:  slice("web", "web-v6").ObjectMeta,
		AddressType: discoveryv1.AddressTypeIPv6,
		Ports:       slice("web", "x").Ports,
		Endpoints:   []discoveryv1.Endpoint{ep("fd00:244::1")},
	}
	cfg := testConfig()
	cfg.Families = []proxier.IPFamily{proxier.IPv4, proxier.IPv6}
	cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, netip.MustParsePrefix("fd00:244::/64"))
	snaps, problems := Plan(Objects{Services: []*corev1.Service{s}, Slices: []*discoveryv1.EndpointSlice{slice("web", "web-v4", remote1()), v6}}, cfg)
	if len(problems) != 0 || len(snaps) != 2 {
		t.Fatalf("problems %v, %d snaps", problems, len(snaps))
	}
	v4s, v6s := snaps[0], snaps[1]
	if v4s.Family != proxier.IPv4 || v6s.Family != proxier.IPv6 {
		t.Fatalf("family order %v %v", v4s.Family, v6s.Family)
	}
	if got := v4s.Services[0]; got.ClusterIP.String() != "10.96.0.10" || ips(got.ClusterEndpoints) != R1 || got.ExternalIPs[0].String() != "192.0.2.50" {
		t.Errorf("v4 port wrong: %+v", got)
	}
	if got := v6s.Services[0]; got.ClusterIP.String() != "fd00:96::10" || ips(got.ClusterEndpoints) != "[fd00:244::1]:8080" || got.ExternalIPs[0].String() != "2001:db8::50" {
		t.Errorf("v6 port wrong: %+v", got)
	}
	if len(v6s.Masquerade.ClusterCIDRs) != 1 || v6s.Masquerade.ClusterCIDRs[0].String() != "fd00:244::/64" {
		t.Errorf("v6 cluster CIDRs %v", v6s.Masquerade.ClusterCIDRs)
	}
	// A single-stack IPv4 node plans only IPv4.
	snaps, _ = Plan(Objects{Services: []*corev1.Service{s}}, testConfig())
	if len(snaps) != 1 || len(snaps[0].Services) != 1 {
		t.Errorf("v4-only plan: %d snaps", len(snaps))
	}
}

func TestProblemsAreReportedOneByOne(t *testing.T) {
	good := svc("good")
	badIP := svc("bad-ip", clusterIPs("10.96.0.300"))
	badPort := svc("bad-port", func(s *corev1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", []string{"10.96.0.11"}
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "big", Port: 70000})
	})
	outOfRange := svc("np-range", clusterIPs("10.96.0.12"), nodePort(8080))
	first := svc("np-first", clusterIPs("10.96.0.13"), nodePort(30500))
	second := svc("np-second", clusterIPs("10.96.0.14"), nodePort(30500))
	second.CreationTimestamp.Time = first.CreationTimestamp.Add(time.Hour)
	wrongFamily := svc("wrong-family", clusterIPs("10.96.0.15"), func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"2001:db8::1", "not-an-ip", "192.0.2.9"} })
	badRange := svc("bad-range", clusterIPs("10.96.0.16"), func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/8", "garbage"}
	})
	orphan := slice("missing", "missing-1", remote1())
	badSlice := slice("good", "good-1", ep("10.244.2.1"), ep("999.1.1.1"), ep("fd00::1"))
	noLabel := slice("good", "nolabel")
	noLabel.Labels = nil

	snap, problems := planOne(t, Objects{
		Services: []*corev1.Service{good, badIP, badPort, outOfRange, second, first, wrongFamily, badRange},
		Slices:   []*discoveryv1.EndpointSlice{orphan, badSlice, noLabel},
	}, testConfig())

	want := map[string]string{
		"Service default/bad-ip":          "not a valid IP address; service skipped",
		"Service default/bad-port":        `port "big": port 70000 out of range`,
		"Service default/np-range":        "nodePort 8080 outside the node port range 30000-32767",
		"Service default/np-second":       `nodePort 30500/TCP of port "http" is already used by service default/np-first`,
		"Service default/wrong-family":    "address 2001:db8::1 is not in the service's IP families",
		"Service default/bad-range":       `"garbage" is not a CIDR; service skipped`,
		"EndpointSlice default/missing-1": "service default/missing does not exist",
		"EndpointSlice default/good-1":    `"999.1.1.1" is not a valid IP address`,
		"EndpointSlice default/nolabel":   "no kubernetes.io/service-name label",
	}
	for obj, reason := range want {
		found := false
		for _, p := range problems {
			if p.Kind+" "+p.Object == obj && strings.Contains(p.Reason, reason) {
				found = true
			}
		}
		if !found {
			t.Errorf("no problem %q for %s in:\n%v", reason, obj, problems)
		}
	}
	// Everything valid still planned.
	got := map[string]bool{}
	for _, sp := range snap.Services {
		got[sp.Name.String()] = true
	}
	for _, name := range []string{"default/good:http", "default/bad-port:http", "default/np-first:http", "default/np-second:http", "default/wrong-family:http"} {
		if !got[name] {
			t.Errorf("%s missing from plan %v", name, got)
		}
	}
	for _, name := range []string{"default/bad-ip:http", "default/np-range:http", "default/bad-range:http", "default/bad-port:big"} {
		if got[name] {
			t.Errorf("%s planned but should be rejected", name)
		}
	}
	// The node-port conflict costs the younger service its node port only:
	// its cluster IP is still served.
	first0 := snap.Lookup(proxier.ServicePortName{Namespace: "default", Name: "np-first", Port: "http", Protocol: proxier.TCP})
	second0 := snap.Lookup(proxier.ServicePortName{Namespace: "default", Name: "np-second", Port: "http", Protocol: proxier.TCP})
	if first0 == nil || first0.NodePort != 30500 || first0.NodePortConflict != "" {
		t.Errorf("np-first must keep its node port: %+v", first0)
	}
	if second0 == nil || second0.NodePort != 0 || second0.NodePortConflict != "default/np-first" || second0.ClusterIP.String() != "10.96.0.14" {
		t.Errorf("np-second must keep its cluster IP and lose only its node port: %+v", second0)
	}
	conflicts := 0
	for _, p := range problems {
		if p.NodePortConflict {
			conflicts++
		}
	}
	if conflicts != 1 {
		t.Errorf("%d problems flagged as node-port conflicts, want 1", conflicts)
	}
	if sp := snap.Lookup(proxier.ServicePortName{Namespace: "default", Name: "good", Port: "http", Protocol: proxier.TCP}); sp == nil || ips(sp.ClusterEndpoints) != R1 {
		t.Errorf("good service endpoints wrong: %+v", sp)
	}
	if sp := snap.Lookup(proxier.ServicePortName{Namespace: "default", Name: "wrong-family", Port: "http", Protocol: proxier.TCP}); sp == nil || len(sp.ExternalIPs) != 1 || sp.ExternalIPs[0].String() != "192.0.2.9" {
		t.Errorf("wrong-family keeps its valid external IP only: %+v", sp)
	}
}

func TestHostPorts(t *testing.T) {
	pod := func(name, node, ip string, created int64, ports ...corev1.ContainerPort) *corev1.Pod {
		p := &corev1.Pod{}
		p.Namespace, p.Name = "default", name
		p.CreationTimestamp.Time = time.Unix(created, 0)
		p.Spec.NodeName = node
		p.Status.PodIP = ip
		p.Status.Phase = corev1.PodRunning
		p.Spec.Containers = []corev1.Container{{Name: "c", Ports: ports}}
		return p
	}
	objs := Objects{Pods: []*corev1.Pod{
		pod("web", testNode, "10.244.1.5", 1, corev1.ContainerPort{ContainerPort: 80, HostPort: 8080}, corev1.ContainerPort{ContainerPort: 53, HostPort: 5353, Protocol: corev1.ProtocolUDP}),
		pod("clash", testNode, "10.244.1.6", 2, corev1.ContainerPort{ContainerPort: 80, HostPort: 8080}),
		pod("elsewhere", "node-b", "10.244.2.5", 1, corev1.ContainerPort{ContainerPort: 80, HostPort: 9090}),
		pod("pinned", testNode, "10.244.1.7", 3, corev1.ContainerPort{ContainerPort: 80, HostPort: 8081, HostIP: "10.0.0.10"}),
		pod("pinned-clash", testNode, "10.244.1.8", 4, corev1.ContainerPort{ContainerPort: 80, HostPort: 8080, HostIP: "10.0.0.10"}),
	}}
	snap, problems := planOne(t, objs, testConfig())
	if len(problems) != 2 || problems[0].Object != "default/clash" || problems[1].Object != "default/pinned-clash" {
		t.Fatalf("problems %v", problems)
	}
	var got []string
	for _, hp := range snap.HostPorts {
		got = append(got, hp.Pod+" "+string(hp.Protocol)+" "+hp.HostIP.String()+":"+itoa(hp.HostPort)+"->"+hp.PodIP.String()+":"+itoa(hp.ContainerPort))
	}
	want := "default/web TCP invalid IP:8080->10.244.1.5:80|default/web UDP invalid IP:5353->10.244.1.5:53|default/pinned TCP 10.0.0.10:8081->10.244.1.7:80"
	if strings.Join(got, "|") != want {
		t.Errorf("host ports\n got %s\nwant %s", strings.Join(got, "|"), want)
	}
}

func itoa(p uint16) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), p).String()[len("0.0.0.0:"):]
}

// A duplicate endpoint (the same ip:port in two slices, e.g. a terminating
// pod whose IP a new pod reuses) is kept once, and the non-terminating copy
// wins whatever the slice order, as upstream.
func TestDuplicatePrefersNonTerminatingCopy(t *testing.T) {
	old := slice("web", "web-a", ep("10.244.2.1", terminatingServing))
	cur := slice("web", "web-b", ep("10.244.2.1", notReady))
	for _, order := range [][]*discoveryv1.EndpointSlice{{old, cur}, {cur, old}} {
		snap, _ := planOne(t, Objects{Services: []*corev1.Service{svc("web")}, Slices: order}, testConfig())
		all := snap.Services[0].AllEndpoints
		if len(all) != 1 || all[0].Terminating || all[0].Ready {
			t.Errorf("slices %s,%s: kept %+v, want the non-terminating (not ready) copy", order[0].Name, order[1].Name, all)
		}
	}
}

// An unknown IPVS scheduler annotation is a problem of that service only:
// the default scheduler is used and every other service is planned.
func TestUnknownSchedulerAnnotation(t *testing.T) {
	bad := svc("bad", clusterIPs("10.96.0.21"), func(s *corev1.Service) {
		s.Annotations = map[string]string{AnnotationIPVSScheduler: "roundrobin"}
	})
	good := svc("good", clusterIPs("10.96.0.22"), func(s *corev1.Service) {
		s.Annotations = map[string]string{AnnotationIPVSScheduler: "sh"}
	})
	snap, problems := planOne(t, Objects{Services: []*corev1.Service{bad, good}}, testConfig())
	if len(snap.Services) != 2 {
		t.Fatalf("want both services planned, got %d", len(snap.Services))
	}
	if snap.Services[0].Scheduler != "" || snap.Services[1].Scheduler != "sh" {
		t.Errorf("schedulers %q %q, want \"\" and \"sh\"", snap.Services[0].Scheduler, snap.Services[1].Scheduler)
	}
	if len(problems) != 1 || problems[0].Object != "default/bad" || !strings.Contains(problems[0].Reason, `unknown IPVS scheduler "roundrobin"`) {
		t.Errorf("problems %v", problems)
	}
}

// Cluster IPs the API server would never allocate are rejected (standalone
// mode has no API server to do it).
func TestUnusableClusterIPsRejected(t *testing.T) {
	var services []*corev1.Service
	bad := []string{"127.0.0.1", "0.0.0.0", "169.254.1.1", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "ff02::1"}
	for i, ip := range bad {
		services = append(services, svc(fmt.Sprintf("bad%d", i), clusterIPs(ip)))
	}
	services = append(services, svc("good", clusterIPs("10.96.0.30")))
	cfg := testConfig()
	cfg.Families = []proxier.IPFamily{proxier.IPv4, proxier.IPv6}
	snaps, problems := Plan(Objects{Services: services}, cfg)
	n := 0
	for _, s := range snaps {
		n += len(s.Services)
	}
	if n != 1 || snaps[0].Services[0].Name.Name != "good" {
		t.Errorf("planned %d ports, want only default/good", n)
	}
	if len(problems) != len(bad) {
		t.Errorf("%d problems, want %d: %v", len(problems), len(bad), problems)
	}
	for _, p := range problems {
		if !strings.Contains(p.Reason, "cannot be a service address; service skipped") {
			t.Errorf("problem %v", p)
		}
	}
}

// A cluster IP in a family the node does not proxy is reported, not
// silently dropped.
func TestUnservedFamilyReported(t *testing.T) {
	s := svc("web", func(s *corev1.Service) {
		s.Spec.ClusterIPs = []string{s.Spec.ClusterIP, "fd00:96::10"}
	})
	_, problems := Plan(Objects{Services: []*corev1.Service{s}}, testConfig())
	if len(problems) != 1 || !strings.Contains(problems[0].Reason, "cluster IP fd00:96::10 is not served: this node proxies IPv4 only") {
		t.Errorf("problems %v", problems)
	}
}

// With node ports on every address, the planner lists the node's current
// local addresses of each family (plus its node IPs) for the modes that
// bind each address (IPVS): backends do not look for addresses themselves.
func TestNodePortAddressesListLocalAddresses(t *testing.T) {
	cfg := testConfig()
	cfg.Families = []proxier.IPFamily{proxier.IPv4, proxier.IPv6}
	cfg.Node.LocalAddrs = []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("fd00::1")}
	snaps, _ := Plan(Objects{}, cfg)
	v4, v6 := snaps[0].NodePortAddresses, snaps[1].NodePortAddresses
	if !v4.All || fmt.Sprint(v4.Addrs) != "[10.0.0.10 192.0.2.1]" {
		t.Errorf("IPv4 node-port addresses %+v (node IPs %v)", v4, snaps[0].NodeIPs)
	}
	if !v6.All || fmt.Sprint(v6.Addrs) != "[fd00::1]" {
		t.Errorf("IPv6 node-port addresses %+v", v6)
	}
}

// A hostPort that is a Service's node port (same family and protocol) is
// the Service's: the pod's mapping is skipped with a problem naming both. A
// hostPort inside the node-port range is reported and kept.
func TestHostPortsBesideNodePorts(t *testing.T) {
	pod := func(name, ip string, ports ...corev1.ContainerPort) *corev1.Pod {
		p := &corev1.Pod{}
		p.Namespace, p.Name = "default", name
		p.Spec.NodeName = testNode
		p.Status.PodIP = ip
		p.Status.Phase = corev1.PodRunning
		p.Spec.Containers = []corev1.Container{{Name: "c", Ports: ports}}
		return p
	}
	objs := Objects{
		Services: []*corev1.Service{svc("web", nodePort(30080))},
		Pods: []*corev1.Pod{
			pod("taker", "10.244.1.5", corev1.ContainerPort{ContainerPort: 80, HostPort: 30080}),
			pod("udp", "10.244.1.6", corev1.ContainerPort{ContainerPort: 80, HostPort: 30080, Protocol: corev1.ProtocolUDP}),
			pod("low", "10.244.1.7", corev1.ContainerPort{ContainerPort: 80, HostPort: 8080}),
		},
	}
	snap, problems := planOne(t, objs, testConfig())
	var got []string
	for _, hp := range snap.HostPorts {
		got = append(got, hp.Pod+" "+string(hp.Protocol)+" "+itoa(hp.HostPort))
	}
	if strings.Join(got, "|") != "default/low TCP 8080|default/udp UDP 30080" {
		t.Errorf("host ports %v", got)
	}
	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.String())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{
		"Pod default/taker: hostPort 30080/TCP (IPv4) is the node port of service default/web",
		"Pod default/udp: hostPort 30080/UDP is inside the service node-port range 30000-32767",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("problems lack %q:\n%s", want, all)
		}
	}
}

// The hostport-network annotation maps a pod's hostPorts to its address on
// that network as Multus reports it; a pod whose network status is
// missing, malformed or lacks the network is a problem and has no
// mapping, and every other pod keeps its own.
func TestHostPortsMultusNetwork(t *testing.T) {
	const status = `[{"name":"cbr0","interface":"eth0","ips":["10.244.1.9"],"default":true},` +
		`{"name":"default/macvlan-a","interface":"net1","ips":["192.168.50.9","fd50::9"]},` +
		`{"name":"empty","interface":"net2","ips":[]}]`
	pod := func(name, ip string, port int32, ann map[string]string) *corev1.Pod {
		p := &corev1.Pod{}
		p.Namespace, p.Name = "default", name
		p.Annotations = ann
		p.Spec.NodeName = testNode
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}, {IP: "fd00:244::" + ip[len(ip)-1:]}}
		p.Status.Phase = corev1.PodRunning
		p.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{ContainerPort: 80, HostPort: port}}}}
		return p
	}
	objs := Objects{Pods: []*corev1.Pod{
		pod("plain", "10.244.1.1", 8001, nil),
		pod("secondary", "10.244.1.2", 8002, map[string]string{AnnotationHostPortNetwork: "default/macvlan-a", AnnotationNetworkStatus: status}),
		pod("short-name", "10.244.1.3", 8003, map[string]string{AnnotationHostPortNetwork: "macvlan-a", AnnotationNetworkStatus: status}),
		pod("no-status", "10.244.1.4", 8004, map[string]string{AnnotationHostPortNetwork: "default/macvlan-a"}),
		pod("bad-json", "10.244.1.5", 8005, map[string]string{AnnotationHostPortNetwork: "default/macvlan-a", AnnotationNetworkStatus: `{"name":`}),
		pod("absent", "10.244.1.6", 8006, map[string]string{AnnotationHostPortNetwork: "other/macvlan-a", AnnotationNetworkStatus: status}),
		pod("no-ip", "10.244.1.7", 8007, map[string]string{AnnotationHostPortNetwork: "default/empty", AnnotationNetworkStatus: status}),
		pod("bad-name", "10.244.1.8", 8008, map[string]string{AnnotationHostPortNetwork: "a/b/c", AnnotationNetworkStatus: status}),
		pod("default-net", "10.244.1.9", 8009, map[string]string{AnnotationHostPortNetwork: "default/cbr0", AnnotationNetworkStatus: status}),
	}}
	cfg := testConfig()
	cfg.Families = []proxier.IPFamily{proxier.IPv4, proxier.IPv6}
	snaps, problems := Plan(objs, cfg)
	for i, want := range []string{
		"default/default-net 8009->10.244.1.9|default/plain 8001->10.244.1.1|default/secondary 8002->192.168.50.9|default/short-name 8003->192.168.50.9",
		"default/plain 8001->fd00:244::1|default/secondary 8002->fd50::9|default/short-name 8003->fd50::9",
	} {
		var got []string
		for _, hp := range snaps[i].HostPorts {
			got = append(got, hp.Pod+" "+itoa(hp.HostPort)+"->"+hp.PodIP.String())
		}
		if strings.Join(got, "|") != want {
			t.Errorf("%s host ports\n got %s\nwant %s", snaps[i].Family, strings.Join(got, "|"), want)
		}
	}
	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.String())
		if p.Event != "" {
			t.Errorf("network problem %v carries event %q", p, p.Event)
		}
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{
		`Pod default/no-status: annotation switchyard.io/hostport-network="default/macvlan-a": the pod has no k8s.v1.cni.cncf.io/network-status annotation (yet); host ports skipped`,
		`Pod default/bad-json: annotation switchyard.io/hostport-network="default/macvlan-a": k8s.v1.cni.cncf.io/network-status is not a JSON list of networks`,
		`Pod default/absent: annotation switchyard.io/hostport-network="other/macvlan-a": network other/macvlan-a is not in k8s.v1.cni.cncf.io/network-status; host ports skipped`,
		`Pod default/no-ip: annotation switchyard.io/hostport-network="default/empty": network default/empty has no IP`,
		`Pod default/bad-name: annotation switchyard.io/hostport-network="a/b/c": want <namespace>/<network>; host ports skipped`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("problems lack %q:\n%s", want, all)
		}
	}
	if len(problems) != 5 {
		t.Errorf("%d problems, want 5:\n%s", len(problems), all)
	}
}

// Conflicts carry the HostPortConflict event reason (the loser's Event);
// the node-port-range warning does not (the pod keeps its port).
func TestHostPortConflictEvents(t *testing.T) {
	pod := func(name string, created int64, port int32) *corev1.Pod {
		p := &corev1.Pod{}
		p.Namespace, p.Name = "default", name
		p.CreationTimestamp.Time = time.Unix(created, 0)
		p.Spec.NodeName = testNode
		p.Status.PodIP = "10.244.1." + fmt.Sprint(created)
		p.Status.Phase = corev1.PodRunning
		p.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{ContainerPort: 80, HostPort: port}}}}
		return p
	}
	objs := Objects{
		Services: []*corev1.Service{svc("web", nodePort(30080))},
		Pods:     []*corev1.Pod{pod("newer", 2, 8080), pod("older", 1, 8080), pod("taker", 3, 30080), pod("ranged", 4, 30081)},
	}
	_, problems := planOne(t, objs, testConfig())
	events := map[string]string{}
	for _, p := range problems {
		if p.Event != "" {
			events[p.Object] = p.Event + ": " + p.Reason
		}
	}
	want := map[string]string{
		"default/newer": "HostPortConflict: hostPort 8080/TCP is already used by pod default/older; mapping skipped",
		"default/taker": "HostPortConflict: hostPort 30080/TCP (IPv4) is the node port of service default/web:http, which keeps it; mapping skipped",
	}
	if !reflect.DeepEqual(events, want) {
		t.Errorf("events %v\nwant %v", events, want)
	}
}

// HostPortInputs changes exactly when a mapping can: not for labels,
// conditions or other annotations, nor for pods without hostPorts.
func TestHostPortInputs(t *testing.T) {
	base := &corev1.Pod{}
	base.Namespace, base.Name = "default", "web"
	base.Spec.NodeName = testNode
	base.Status.Phase = corev1.PodRunning
	base.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.5"}}
	base.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{ContainerPort: 80, HostPort: 8080}}}}
	in := HostPortInputs(base)
	if in == "" {
		t.Fatal("a pod with a hostPort has no inputs")
	}
	same := map[string]func(p *corev1.Pod){
		"labels":      func(p *corev1.Pod) { p.Labels = map[string]string{"a": "b"} },
		"annotations": func(p *corev1.Pod) { p.Annotations = map[string]string{"x": "y", AnnotationNetworkStatus: "[]"} },
		"conditions":  func(p *corev1.Pod) { p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady}} },
		"statuses":    func(p *corev1.Pod) { p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", Ready: true}} },
		"version":     func(p *corev1.Pod) { p.ResourceVersion = "42" },
	}
	for name, f := range same {
		p := base.DeepCopy()
		f(p)
		if HostPortInputs(p) != in {
			t.Errorf("%s changed the inputs", name)
		}
	}
	differ := map[string]func(p *corev1.Pod){
		"phase":   func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded },
		"pod IPs": func(p *corev1.Pod) { p.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.6"}} },
		"created": func(p *corev1.Pod) { p.CreationTimestamp.Time = time.Unix(5, 0) },
		"network": func(p *corev1.Pod) { p.Annotations = map[string]string{AnnotationHostPortNetwork: "default/a"} },
		"ports":   func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].HostIP = "10.0.0.10" },
		"node":    func(p *corev1.Pod) { p.Spec.NodeName = "other" },
	}
	for name, f := range differ {
		p := base.DeepCopy()
		f(p)
		if HostPortInputs(p) == in {
			t.Errorf("%s did not change the inputs", name)
		}
	}
	withNet := base.DeepCopy()
	withNet.Annotations = map[string]string{AnnotationHostPortNetwork: "default/a"}
	moved := withNet.DeepCopy()
	moved.Annotations[AnnotationNetworkStatus] = `[{"name":"default/a","ips":["192.168.50.1"]}]`
	if HostPortInputs(moved) == HostPortInputs(withNet) {
		t.Error("with the opt-in, the network status did not change the inputs")
	}
	none := base.DeepCopy()
	none.Spec.Containers[0].Ports[0].HostPort = 0
	if HostPortInputs(none) != "" || HostPortInputs(nil) != "" {
		t.Error("a pod without hostPorts has inputs")
	}
}
