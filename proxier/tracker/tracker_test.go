package tracker

import (
	"fmt"
	"net/netip"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/planner"
)

func service(i int) *corev1.Service {
	ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("svc-%d", i)},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
}

func endpointSlice(i, eps int, gen int) *discoveryv1.EndpointSlice {
	name, port, proto := "http", int32(8080), corev1.ProtocolTCP
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("svc-%d-abc", i), Labels: map[string]string{discoveryv1.LabelServiceName: fmt.Sprintf("svc-%d", i)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	for j := 0; j < eps; j++ {
		node := fmt.Sprintf("node-%d", j%3)
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 100+gen%100, i/250, j+10)}, NodeName: &node})
	}
	return sl
}

func resolver(ip string) NodeResolver {
	return func(*corev1.Node) planner.NodeInfo {
		return planner.NodeInfo{Name: "node-0", IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
}

func names(m map[proxier.ServicePortName]bool) []string {
	var out []string
	for n := range m {
		out = append(out, n.String())
	}
	return out
}

func TestIncrementalPlanMatchesFullPlanAndReportsChanges(t *testing.T) {
	var changes atomic.Int32
	tr := New(Options{ResolveNode: resolver("10.0.0.10"), Hooks: Hooks{OnChange: func() { changes.Add(1) }}})
	var svcs []*corev1.Service
	var slices []*discoveryv1.EndpointSlice
	for i := 0; i < 5; i++ {
		svcs = append(svcs, service(i))
		slices = append(slices, endpointSlice(i, 3, 0))
		tr.OnService(svcs[i], false)
		tr.OnEndpointSlice(slices[i], false)
	}
	if changes.Load() != 10 {
		t.Errorf("OnChange called %d times, want 10", changes.Load())
	}
	first := tr.Plan(false)
	if !first.Snapshots[0].FullSync {
		t.Errorf("first plan must be full")
	}
	if first.ServiceChanges != 5 || first.EndpointSliceChanges != 5 {
		t.Errorf("change counts %d/%d", first.ServiceChanges, first.EndpointSliceChanges)
	}

	// Nothing changed: empty change set, not full.
	again := tr.Plan(false)
	if again.Snapshots[0].FullSync || len(again.Snapshots[0].Changed) != 0 {
		t.Errorf("idle plan: full=%v changed=%v", again.Snapshots[0].FullSync, names(again.Snapshots[0].Changed))
	}

	// One slice changes, one service is deleted, one is added.
	slices[1] = endpointSlice(1, 4, 1)
	slices[1].Annotations = map[string]string{AnnotationTriggerTime: "2026-01-02T03:04:05Z"}
	tr.OnEndpointSlice(slices[1], false)
	tr.OnService(svcs[2], true)
	svcs = append(svcs, service(7))
	tr.OnService(svcs[5], false)
	// A service "update" that changes nothing planned must not be reported.
	same := svcs[3].DeepCopy()
	same.Labels = map[string]string{"unrelated": "label"}
	tr.OnService(same, false)

	res := tr.Plan(false)
	snap := res.Snapshots[0]
	want := map[string]bool{"ns/svc-1:http": true, "ns/svc-2:http": true, "ns/svc-7:http": true}
	got := map[string]bool{}
	for _, n := range names(snap.Changed) {
		got[n] = true
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("changed = %v, want %v", got, want)
	}
	if len(res.TriggerTimes) != 1 || !res.TriggerTimes[0].Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("trigger times %v", res.TriggerTimes)
	}

	// The incremental result equals a from-scratch plan of the same objects.
	full, _ := planner.Plan(planner.Objects{Services: []*corev1.Service{svcs[0], svcs[1], same, svcs[4], svcs[5]}, Slices: slices},
		planner.Config{Node: resolver("10.0.0.10")(nil)})
	if !reflect.DeepEqual(full[0].Services, snap.Services) {
		t.Errorf("incremental plan differs from full plan:\n%v\n%v", full[0].Services, snap.Services)
	}
	// The orphaned slice of the deleted service is reported.
	found := false
	for _, p := range res.Problems {
		if p.Object == "ns/svc-2-abc" {
			found = true
		}
	}
	if !found {
		t.Errorf("orphan slice not reported: %v", res.Problems)
	}
}

func TestNodeChangeForcesFullPlan(t *testing.T) {
	ip := "10.0.0.10"
	tr := New(Options{ResolveNode: func(n *corev1.Node) planner.NodeInfo {
		return planner.NodeInfo{Name: "node-0", IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}})
	tr.OnService(service(1), false)
	tr.Plan(false)
	tr.OnNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-0"}}, false)
	if res := tr.Plan(false); res.Snapshots[0].FullSync {
		t.Errorf("a node update that changes nothing must not force a full plan")
	}
	ip = "10.0.0.11"
	tr.OnNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-0"}}, false)
	res := tr.Plan(false)
	if !res.Snapshots[0].FullSync || res.Snapshots[0].NodeIPs[0].String() != "10.0.0.11" {
		t.Errorf("node IP change: full=%v ips=%v", res.Snapshots[0].FullSync, res.Snapshots[0].NodeIPs)
	}
	// Dual-stack node: two snapshots.
	ip = "fd00::10"
	tr2 := New(Options{ResolveNode: func(n *corev1.Node) planner.NodeInfo {
		return planner.NodeInfo{Name: "node-0", IPs: []netip.Addr{netip.MustParseAddr("fd00::10"), netip.MustParseAddr("10.0.0.10")}}
	}})
	res = tr2.Plan(false)
	if len(res.Snapshots) != 2 || res.Snapshots[0].Family != proxier.IPv6 {
		t.Errorf("dual-stack families wrong: %d snapshots", len(res.Snapshots))
	}
}

func TestSyncedAndSliceRelabel(t *testing.T) {
	var synced atomic.Int32
	tr := New(Options{ResolveNode: resolver("10.0.0.10"), Hooks: Hooks{OnSynced: func() { synced.Add(1) }}})
	tr.OnService(service(1), false)
	tr.OnService(service(2), false)
	sl := endpointSlice(1, 2, 0)
	tr.OnEndpointSlice(sl, false)
	tr.OnSynced()
	tr.OnSynced()
	select {
	case <-tr.Synced():
	default:
		t.Fatal("Synced not closed")
	}
	if synced.Load() != 1 {
		t.Errorf("OnSynced hook ran %d times", synced.Load())
	}
	tr.Plan(false)
	// The slice moves to svc-2: both services change.
	moved := sl.DeepCopy()
	moved.Labels[discoveryv1.LabelServiceName] = "svc-2"
	tr.OnEndpointSlice(moved, false)
	res := tr.Plan(false)
	if len(res.Snapshots[0].Changed) != 2 {
		t.Errorf("changed %v", names(res.Snapshots[0].Changed))
	}
	if sp := res.Snapshots[0].Services[0]; sp.Name.Name != "svc-1" || len(sp.ClusterEndpoints) != 0 {
		t.Errorf("svc-1 kept endpoints after its slice moved: %+v", sp)
	}
	if sp := res.Snapshots[0].Services[1]; len(sp.ClusterEndpoints) != 2 {
		t.Errorf("svc-2 did not get the moved endpoints: %+v", sp)
	}
}

// As upstream, the kernel's families are planned (dual-stack when it has
// both), the node's first address picking the primary: the IPv6 cluster IP
// of a dual-stack Service is proxied on a node that lists only an IPv4
// address.
func TestFamiliesFromKernelSupport(t *testing.T) {
	both := []proxier.IPFamily{proxier.IPv4, proxier.IPv6}
	v4, v6 := netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("fd00::10")
	for _, tc := range []struct {
		addrs     []netip.Addr
		supported []proxier.IPFamily
		want      []proxier.IPFamily
	}{
		{[]netip.Addr{v4}, both, both},
		{[]netip.Addr{v6, v4}, both, []proxier.IPFamily{proxier.IPv6, proxier.IPv4}},
		{[]netip.Addr{v6}, []proxier.IPFamily{proxier.IPv4}, []proxier.IPFamily{proxier.IPv4}},
		{nil, both, both},
		{[]netip.Addr{v6}, nil, []proxier.IPFamily{proxier.IPv6}},
	} {
		if got := familiesFor(tc.addrs, tc.supported); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("familiesFor(%v, %v) = %v, want %v", tc.addrs, tc.supported, got, tc.want)
		}
	}
	tr := New(Options{ResolveNode: resolver("10.0.0.10"), SupportedFamilies: both})
	svc := service(1)
	svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP, "fd00:96::1"}
	tr.OnService(svc, false)
	tr.OnSynced()
	res := tr.Plan(false)
	if len(res.Snapshots) != 2 || res.Snapshots[1].Family != proxier.IPv6 || len(res.Snapshots[1].Services) != 1 {
		t.Fatalf("want the IPv6 cluster IP planned on an IPv4-addressed node: %+v", res.Snapshots)
	}
}

// An address event that changes nothing planned (the IPVS mode's VIPs,
// an unrelated interface) costs no sync; one that changes the node's
// resolved information does.
func TestNodeAddressesChangedOnlyWhenResolutionDiffers(t *testing.T) {
	var changes atomic.Int32
	ip := "10.0.0.10"
	tr := New(Options{
		ResolveNode: func(*corev1.Node) planner.NodeInfo {
			return planner.NodeInfo{Name: "node-0", IPs: []netip.Addr{netip.MustParseAddr(ip)}}
		},
		Hooks: Hooks{OnChange: func() { changes.Add(1) }},
	})
	tr.OnService(service(1), false)
	tr.OnSynced()
	tr.Plan(false)
	before := changes.Load()
	tr.NodeAddressesChanged()
	if changes.Load() != before {
		t.Errorf("an address event that changes nothing asked for a sync")
	}
	ip = "10.0.0.11"
	tr.NodeAddressesChanged()
	if changes.Load() != before+1 {
		t.Errorf("an address event that changes the node did not ask for a sync")
	}
	if res := tr.Plan(false); !res.Snapshots[0].FullSync || res.Snapshots[0].NodeIPs[0].String() != "10.0.0.11" {
		t.Errorf("the next plan must be full with the new address: %+v", res.Snapshots[0])
	}
}

// A pod's hostPort that a Service uses as its node port is dropped, in
// incremental plans too, and comes back when the Service goes.
func TestHostPortYieldsToNodePort(t *testing.T) {
	tr := New(Options{ResolveNode: resolver("10.0.0.10")})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.PodSpec{NodeName: "node-0", Containers: []corev1.Container{{Name: "c",
			Ports: []corev1.ContainerPort{{ContainerPort: 80, HostPort: 30080}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.5"},
	}
	tr.OnPod(pod, false)
	if res := tr.Plan(false); len(res.Snapshots[0].HostPorts) != 1 {
		t.Fatalf("host ports %v", res.Snapshots[0].HostPorts)
	}
	svc := service(1)
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30080
	tr.OnService(svc, false)
	res := tr.Plan(false)
	if len(res.Snapshots[0].HostPorts) != 0 {
		t.Errorf("host port kept beside the node port: %v", res.Snapshots[0].HostPorts)
	}
	found := false
	for _, p := range res.Problems {
		if p.Object == "ns/web" && p.Reason != "" {
			found = true
		}
	}
	if !found {
		t.Errorf("no problem for the pod: %v", res.Problems)
	}
	tr.OnService(svc, true)
	if res := tr.Plan(false); len(res.Snapshots[0].HostPorts) != 1 {
		t.Errorf("host port not back after the service left: %v", res.Snapshots[0].HostPorts)
	}
}

// Only pod changes that can change a hostPort mapping ask for a sync:
// pods without hostPorts, label and condition updates and unrelated
// annotations are dropped (counted through the OnChange hook), and the
// mappings stay right.
func TestPodChangesThatCannotChangeAMappingAreDropped(t *testing.T) {
	var changes atomic.Int32
	tr := New(Options{ResolveNode: resolver("10.0.0.10"), Hooks: Hooks{OnChange: func() { changes.Add(1) }}})
	tr.Plan(false)
	web := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", ResourceVersion: "1"},
		Spec: corev1.PodSpec{NodeName: "node-0", Containers: []corev1.Container{{Name: "c",
			Ports: []corev1.ContainerPort{{ContainerPort: 80, HostPort: 8080}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending},
	}
	plain := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "plain", ResourceVersion: "1"},
		Spec:       corev1.PodSpec{NodeName: "node-0", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{ContainerPort: 80}}}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.9"},
	}
	step := func(name string, pod *corev1.Pod, deleted bool, wantSignal bool, wantMappings int) {
		t.Helper()
		before := changes.Load()
		tr.OnPod(pod, deleted)
		if got := changes.Load() - before; (got == 1) != wantSignal || got > 1 {
			t.Errorf("%s: %d change signals, want signal=%v", name, got, wantSignal)
		}
		if res := tr.Plan(false); len(res.Snapshots[0].HostPorts) != wantMappings {
			t.Errorf("%s: %d mappings, want %d", name, len(res.Snapshots[0].HostPorts), wantMappings)
		}
	}
	update := func(p *corev1.Pod, f func(*corev1.Pod)) *corev1.Pod {
		p = p.DeepCopy()
		f(p)
		return p
	}
	step("pod without hostPorts added", plain, false, false, 0)
	step("pod without hostPorts relabelled", update(plain, func(p *corev1.Pod) { p.Labels = map[string]string{"a": "b"} }), false, false, 0)
	step("pod without hostPorts deleted", plain, true, false, 0)
	step("hostPort pod added, pending", web, false, true, 0)
	web = update(web, func(p *corev1.Pod) {
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIPs = []corev1.PodIP{{IP: "10.244.0.5"}}
	})
	step("pod IP and phase", web, false, true, 1)
	step("labels", update(web, func(p *corev1.Pod) { p.Labels = map[string]string{"app": "web"} }), false, false, 1)
	step("conditions", update(web, func(p *corev1.Pod) {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	}), false, false, 1)
	step("other annotations", update(web, func(p *corev1.Pod) { p.Annotations = map[string]string{"x": "y"} }), false, false, 1)
	step("network status without the opt-in", update(web, func(p *corev1.Pod) {
		p.Annotations = map[string]string{planner.AnnotationNetworkStatus: `[{"name":"ns/net1","ips":["192.168.50.5"]}]`}
	}), false, false, 1)
	step("opt-in to a secondary network", update(web, func(p *corev1.Pod) {
		p.Annotations = map[string]string{planner.AnnotationHostPortNetwork: "ns/net1",
			planner.AnnotationNetworkStatus: `[{"name":"ns/net1","ips":["192.168.50.5"]}]`}
	}), false, true, 1)
	if hp := tr.Plan(false).Snapshots[0].HostPorts; len(hp) != 1 || hp[0].PodIP.String() != "192.168.50.5" {
		t.Errorf("secondary network mapping %v", hp)
	}
	step("succeeded", update(web, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), false, true, 0)
	step("deleted", web, true, true, 0)
	step("deleted again", web, true, false, 0)
}

// A conflict reports one event on the losing pod, however many syncs and
// unrelated changes follow; it is reported again if it comes back.
func TestHostPortConflictEventOncePerConflict(t *testing.T) {
	type event struct{ pod, reason, msg string }
	var events []event
	tr := New(Options{ResolveNode: resolver("10.0.0.10"), Hooks: Hooks{OnPodEvent: func(p *corev1.Pod, reason, msg string) {
		events = append(events, event{p.Namespace + "/" + p.Name, reason, msg})
	}}})
	pod := func(name string, created int64) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, CreationTimestamp: metav1.Unix(created, 0)},
			Spec: corev1.PodSpec{NodeName: "node-0", Containers: []corev1.Container{{Name: "c",
				Ports: []corev1.ContainerPort{{ContainerPort: 80, HostPort: 8080}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.244.0.%d", created)},
		}
	}
	older, newer := pod("older", 1), pod("newer", 2)
	tr.OnPod(older, false)
	tr.OnPod(newer, false)
	for i := 0; i < 3; i++ {
		tr.Plan(i == 2)
		tr.OnService(service(i), false)
	}
	want := []event{{"ns/newer", planner.EventHostPortConflict, "hostPort 8080/TCP is already used by pod ns/older; mapping skipped"}}
	if !reflect.DeepEqual(events, want) {
		t.Fatalf("events %v\nwant %v", events, want)
	}
	tr.OnPod(older, true)
	tr.Plan(false)
	tr.OnPod(older, false)
	tr.Plan(false)
	if len(events) != 2 {
		t.Errorf("the conflict came back: %d events, want 2", len(events))
	}
}
