package cluster_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/switchyard-proxy/switchyard/test/cluster"
)

// poll calls f until it returns true or the deadline passes.
func poll(t *testing.T, what string, timeout time.Duration, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testService(ns, name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{
				Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP,
			}},
		},
	}
}

func testSlice(ns, svc string, addrs ...string) *discoveryv1.EndpointSlice {
	ready := true
	port, name, proto := int32(8080), "http", corev1.ProtocolTCP
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: svc + "-abc",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		})
	}
	return s
}

// TestObjectsSurviveRestart creates a Service and an EndpointSlice,
// restarts the API server (etcd data kept) and checks that the objects are
// still there, unchanged, and that an informer started before the restart
// sees objects created after it.
func TestObjectsSurviveRestart(t *testing.T) {
	start := time.Now()
	c := cluster.Start(t)
	t.Logf("cluster ready %s after Start (includes the build check)", time.Since(start).Round(time.Millisecond))
	if rss, err := c.RSS(); err == nil {
		t.Logf("swy-testcluster RSS after start: %d MiB", rss>>20)
	}
	ctx := t.Context()
	cs := c.Client
	const ns = "restart"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, testService(ns, "web"), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !netip.MustParsePrefix("10.96.0.0/16").Contains(ip) {
		t.Fatalf("cluster IP %q not allocated from 10.96.0.0/16 (%v)", svc.Spec.ClusterIP, err)
	}
	slice, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, testSlice(ns, "web", "10.244.1.5", "10.244.2.7"), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create endpointslice: %v", err)
	}
	slices, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
	if err != nil || len(slices.Items) != 1 || len(slices.Items[0].Endpoints) != 2 {
		t.Fatalf("list endpointslices for web: %v, %+v", err, slices)
	}

	// An informer that lives across the restart, like switchyard's.
	informerCtx, stopInformers := context.WithCancel(ctx)
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns))
	svcInformer := factory.Core().V1().Services().Informer()
	factory.Start(informerCtx.Done())
	t.Cleanup(func() {
		stopInformers() // before Shutdown, or it blocks
		factory.Shutdown()
	})
	if !cache.WaitForCacheSync(ctx.Done(), svcInformer.HasSynced) {
		t.Fatal("service informer did not sync")
	}
	seen := func(name string) func() bool {
		return func() bool {
			_, ok, _ := svcInformer.GetStore().GetByKey(ns + "/" + name)
			return ok
		}
	}
	poll(t, "informer to see web", 30*time.Second, seen("web"))

	restartStart := time.Now()
	if err := c.Restart(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("API server restarted and ready in %s", time.Since(restartStart).Round(time.Millisecond))

	got, err := cs.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get service after restart: %v", err)
	}
	if got.UID != svc.UID || got.Spec.ClusterIP != svc.Spec.ClusterIP {
		t.Errorf("service changed across restart: uid %s→%s, clusterIP %s→%s", svc.UID, got.UID, svc.Spec.ClusterIP, got.Spec.ClusterIP)
	}
	gotSlice, err := cs.DiscoveryV1().EndpointSlices(ns).Get(ctx, slice.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get endpointslice after restart: %v", err)
	}
	if gotSlice.UID != slice.UID || len(gotSlice.Endpoints) != 2 || gotSlice.Endpoints[1].Addresses[0] != "10.244.2.7" {
		t.Errorf("endpointslice changed across restart: %+v", gotSlice)
	}

	// The informer reconnects by itself and sees new objects.
	if _, err := cs.CoreV1().Services(ns).Create(ctx, testService(ns, "after"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service after restart: %v", err)
	}
	poll(t, "informer to see a service created after the restart", time.Minute, seen("after"))
}
