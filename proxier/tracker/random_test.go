package tracker

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"reflect"
	"sort"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/planner"
)

// world is the set of objects a random test has handed to the tracker.
type world struct {
	rng      *rand.Rand
	services map[string]*corev1.Service
	slices   map[string]*discoveryv1.EndpointSlice
	node     *corev1.Node
	created  time.Time
}

func (w *world) pick(n int) int { return w.rng.IntN(n) }

func ptr[T any](v T) *T { return &v }

// randomService builds service i with random type, node port (from a small
// pool so conflicts happen), traffic policies, affinity, external IPs and
// dual-stack cluster IPs.
func (w *world) randomService(i int) *corev1.Service {
	w.created = w.created.Add(time.Second)
	v4 := fmt.Sprintf("10.96.0.%d", i+1)
	v6 := fmt.Sprintf("fd00:96::%x", i+1)
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "svc-" + strconv.Itoa(i),
		CreationTimestamp: metav1.NewTime(w.created.Add(-time.Duration(w.pick(100)) * time.Second))}}
	spec := &s.Spec
	switch w.pick(3) {
	case 0:
		spec.ClusterIP, spec.ClusterIPs = v4, []string{v4}
	case 1:
		spec.ClusterIP, spec.ClusterIPs = v4, []string{v4, v6}
	default:
		spec.ClusterIP, spec.ClusterIPs = v6, []string{v6, v4}
	}
	spec.Type = []corev1.ServiceType{corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer}[w.pick(3)]
	spec.Ports = []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}
	if w.pick(2) == 0 {
		spec.Ports = append(spec.Ports, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	}
	if spec.Type != corev1.ServiceTypeClusterIP {
		for j := range spec.Ports {
			spec.Ports[j].NodePort = int32(30000 + w.pick(4))
		}
	}
	if w.pick(3) == 0 {
		spec.ExternalIPs = []string{fmt.Sprintf("203.0.113.%d", i+1)}
	}
	if w.pick(2) == 0 {
		spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}
	if w.pick(2) == 0 {
		spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
	}
	if w.pick(4) == 0 {
		spec.SessionAffinity = corev1.ServiceAffinityClientIP
	}
	if spec.Type == corev1.ServiceTypeLoadBalancer {
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: fmt.Sprintf("198.51.100.%d", i+1)}}
		if w.pick(2) == 0 {
			spec.LoadBalancerSourceRanges = []string{"192.0.2.0/24"}
		}
	}
	if w.pick(5) == 0 {
		s.Annotations = map[string]string{planner.AnnotationIPVSScheduler: []string{"sh", "bogus"}[w.pick(2)]}
	}
	return s
}

// randomSlice builds slice j of service i with endpoints that repeat across
// slices (duplicates), random conditions, nodes and hints.
func (w *world) randomSlice(i, j int) *discoveryv1.EndpointSlice {
	fam := discoveryv1.AddressTypeIPv4
	if w.pick(3) == 0 {
		fam = discoveryv1.AddressTypeIPv6
	}
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("svc-%d-%d", i, j),
			Labels: map[string]string{discoveryv1.LabelServiceName: "svc-" + strconv.Itoa(i)}},
		AddressType: fam,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)},
			{Name: ptr("dns"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolUDP)},
		},
	}
	cond := func() *bool {
		switch w.pick(3) {
		case 0:
			return nil
		case 1:
			return ptr(true)
		}
		return ptr(false)
	}
	for k := 0; k < w.pick(5); k++ {
		addr := fmt.Sprintf("10.244.%d.%d", i, w.pick(6)+1)
		if fam == discoveryv1.AddressTypeIPv6 {
			addr = fmt.Sprintf("fd00:244::%x:%x", i, w.pick(6)+1)
		}
		e := discoveryv1.Endpoint{Addresses: []string{addr}, NodeName: ptr(fmt.Sprintf("node-%d", w.pick(3))),
			Zone:       ptr(fmt.Sprintf("zone-%d", w.pick(2))),
			Conditions: discoveryv1.EndpointConditions{Ready: cond(), Serving: cond(), Terminating: cond()}}
		if w.pick(3) == 0 {
			e.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: fmt.Sprintf("zone-%d", w.pick(2))}}}
			if w.pick(2) == 0 {
				e.Hints.ForNodes = []discoveryv1.ForNode{{Name: fmt.Sprintf("node-%d", w.pick(3))}}
			}
		}
		sl.Endpoints = append(sl.Endpoints, e)
	}
	return sl
}

func (w *world) objects() planner.Objects {
	var o planner.Objects
	for _, s := range w.services {
		o.Services = append(o.Services, s)
	}
	for _, s := range w.slices {
		o.Slices = append(o.Slices, s)
	}
	o.Node = w.node
	return o
}

// TestRandomChangesMatchPlanner applies random sequences of object changes
// to the incremental tracker and checks, after each batch, that its
// snapshots equal the pure planner's for the same objects, and that every
// service port whose plan differs from the previous snapshot is in the
// change set. SWY_RANDOM_SEED replays one seed; SWY_RANDOM_STEPS runs
// longer.
func TestRandomChangesMatchPlanner(t *testing.T) {
	seeds := []uint64{1, 2, 3, uint64(time.Now().UnixNano())}
	if s := os.Getenv("SWY_RANDOM_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SWY_RANDOM_SEED: %v", err)
		}
		seeds = []uint64{n}
	}
	steps := 150
	if s := os.Getenv("SWY_RANDOM_STEPS"); s != "" {
		steps, _ = strconv.Atoi(s)
	}
	for _, seed := range seeds {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) { runRandom(t, seed, steps) })
	}
}

func runRandom(t *testing.T, seed uint64, steps int) {
	w := &world{rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), services: map[string]*corev1.Service{},
		slices: map[string]*discoveryv1.EndpointSlice{}, created: time.Unix(1_700_000_000, 0)}
	nodeInfo := func(n *corev1.Node) planner.NodeInfo {
		info := planner.NodeInfo{Name: "node-0", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("fd00::10")}}
		if n != nil {
			info.Zone = n.Labels[planner.LabelZone]
		}
		return info
	}
	cfg := planner.Config{Families: []proxier.IPFamily{proxier.IPv4, proxier.IPv6}, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	tr := New(Options{Config: cfg, ResolveNode: nodeInfo, Log: slog.New(slog.DiscardHandler)})
	tr.OnSynced()
	var prev []*proxier.Snapshot
	for step := 0; step < steps; step++ {
		for n := w.pick(4) + 1; n > 0; n-- {
			i := w.pick(8)
			switch op := w.pick(10); {
			case op < 3:
				s := w.randomService(i)
				if old := w.services[s.Name]; old != nil {
					s.CreationTimestamp = old.CreationTimestamp
				}
				w.services[s.Name] = s
				tr.OnService(s, false)
			case op < 4:
				if s := w.services["svc-"+strconv.Itoa(i)]; s != nil {
					delete(w.services, s.Name)
					tr.OnService(s, true)
				}
			case op < 8:
				sl := w.randomSlice(i, w.pick(2))
				w.slices[sl.Name] = sl
				tr.OnEndpointSlice(sl, false)
			case op < 9:
				name := fmt.Sprintf("svc-%d-%d", i, w.pick(2))
				if sl := w.slices[name]; sl != nil {
					delete(w.slices, name)
					tr.OnEndpointSlice(sl, true)
				}
			default:
				w.node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-0",
					Labels: map[string]string{planner.LabelZone: fmt.Sprintf("zone-%d", w.pick(2))}}}
				tr.OnNode(w.node, false)
			}
		}
		res := tr.Plan(false)
		wantCfg := cfg
		wantCfg.Node = nodeInfo(w.node)
		want, _ := planner.Plan(w.objects(), wantCfg)
		if len(want) != len(res.Snapshots) {
			t.Fatalf("seed %d step %d: %d snapshots, want %d", seed, step, len(res.Snapshots), len(want))
		}
		for f := range want {
			got := res.Snapshots[f]
			if !reflect.DeepEqual(got.Services, want[f].Services) {
				t.Fatalf("seed %d step %d %v: incremental plan differs from the planner's:\n got %s\nwant %s",
					seed, step, got.Family, describe(got.Services), describe(want[f].Services))
			}
			if prev != nil && !got.FullSync {
				for _, name := range differing(prev[f].Services, got.Services) {
					if !got.Changed[name] {
						t.Fatalf("seed %d step %d %v: %s changed but is not in the change set %v", seed, step, got.Family, name, names(got.Changed))
					}
				}
			}
		}
		prev = res.Snapshots
	}
}

// differing lists the service ports present in only one of a and b, or
// planned differently.
func differing(a, b []*proxier.ServicePort) []proxier.ServicePortName {
	index := func(l []*proxier.ServicePort) map[proxier.ServicePortName]*proxier.ServicePort {
		m := map[proxier.ServicePortName]*proxier.ServicePort{}
		for _, sp := range l {
			m[sp.Name] = sp
		}
		return m
	}
	ma, mb := index(a), index(b)
	var out []proxier.ServicePortName
	for n, x := range ma {
		if y, ok := mb[n]; !ok || !reflect.DeepEqual(x, y) {
			out = append(out, n)
		}
	}
	for n := range mb {
		if _, ok := ma[n]; !ok {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

func describe(l []*proxier.ServicePort) string {
	s := ""
	for _, sp := range l {
		s += fmt.Sprintf("\n  %s np=%d lost=%q int=%v ext=%v sc=%v reach=%v", sp.Name, sp.NodePort, sp.NodePortConflict,
			sp.Internal, sp.External, sp.ShortCircuit, sp.ReachableEndpoints)
	}
	return s
}
