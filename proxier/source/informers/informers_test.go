package informers

import (
	"context"
	"log/slog"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/switchyard-proxy/switchyard/proxier/source"
	"github.com/switchyard-proxy/switchyard/proxier/source/sourcetest"
)

const wait = 10 * time.Second

func meta(name string, labels map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: labels}
}

func proxyLabel(v string) map[string]string {
	return map[string]string{source.LabelServiceProxyName: v}
}

func svc(name string, labels map[string]string) *corev1.Service {
	return &corev1.Service{ObjectMeta: meta(name, labels), Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.1"}}
}

func slice(name string, labels map[string]string) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{ObjectMeta: meta(name, labels), AddressType: discoveryv1.AddressTypeIPv4}
}

func node(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func pod(name, nodeName string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: meta(name, nil), Spec: corev1.PodSpec{NodeName: nodeName}}
}

func sorted(events []sourcetest.Event) []string {
	s := sourcetest.Strings(events)
	sort.Strings(s)
	return s
}

// expect waits for the event named last and checks that exactly want (in
// any order) was delivered since the previous check.
func expect(t *testing.T, rec *sourcetest.Recorder, last string, want ...string) []sourcetest.Event {
	t.Helper()
	rec.WaitEvent(t, wait, last)
	sort.Strings(want)
	events := rec.Take()
	if got := sorted(events); !reflect.DeepEqual(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	return events
}

func TestRun(t *testing.T) {
	objs := []runtime.Object{
		svc("plain", nil), svc("ours", proxyLabel("switchyard")), svc("theirs", proxyLabel("other")),
		slice("plain-1", nil), slice("theirs-1", proxyLabel("other")),
		slice("headless-1", map[string]string{source.LabelHeadless: ""}),
		node("n1"), node("n2"),
		pod("here", "n1"), pod("there", "n2"), pod("pending", ""),
	}
	client := fake.NewClientset(objs...)
	rec := sourcetest.NewRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, client, "n1", "switchyard", rec, slog.New(slog.DiscardHandler)) }()

	rec.WaitSynced(t, wait)
	// Every initial object has reached the sink by the time OnSynced runs.
	want := []string{"+EndpointSlice ns/plain-1", "+Node n1", "+Pod ns/here", "+Service ns/ours", "+Service ns/plain"}
	if got := sorted(rec.Take()); !reflect.DeepEqual(got, want) {
		t.Fatalf("initial delivery %v, want %v", got, want)
	}

	cs, ds := client.CoreV1().Services("ns"), client.DiscoveryV1().EndpointSlices("ns")
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// Creation, and filtering of what is not ours (the later marker proves
	// the unwanted events were processed and dropped).
	must(cs.Create(ctx, svc("theirs2", proxyLabel("other")), metav1.CreateOptions{}))
	must(ds.Create(ctx, slice("headless-2", map[string]string{source.LabelHeadless: ""}), metav1.CreateOptions{}))
	must(client.CoreV1().Pods("ns").Create(ctx, pod("there2", "n2"), metav1.CreateOptions{}))
	must(client.CoreV1().Nodes().Create(ctx, node("n3"), metav1.CreateOptions{}))
	must(cs.Create(ctx, svc("new", nil), metav1.CreateOptions{}))
	expect(t, rec, "+Service ns/new", "+Service ns/new")

	// A label change that hands a service to another proxy deletes it here;
	// handing it back adds it again.
	must(cs.Update(ctx, svc("new", proxyLabel("other")), metav1.UpdateOptions{}))
	expect(t, rec, "-Service ns/new", "-Service ns/new")
	must(cs.Update(ctx, svc("new", proxyLabel("switchyard")), metav1.UpdateOptions{}))
	expect(t, rec, "+Service ns/new", "+Service ns/new")

	// Updates and deletions of every kind.
	s := slice("plain-1", nil)
	s.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.1"}}}
	must(ds.Update(ctx, s, metav1.UpdateOptions{}))
	expect(t, rec, "+EndpointSlice ns/plain-1", "+EndpointSlice ns/plain-1")
	n := node("n1")
	n.Labels = map[string]string{"topology.kubernetes.io/zone": "a"}
	must(client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}))
	expect(t, rec, "+Node n1", "+Node n1")
	must(client.CoreV1().Pods("ns").Create(ctx, pod("here2", "n1"), metav1.CreateOptions{}))
	expect(t, rec, "+Pod ns/here2", "+Pod ns/here2")

	must(nil, client.CoreV1().Pods("ns").Delete(ctx, "there", metav1.DeleteOptions{}))
	must(nil, client.CoreV1().Pods("ns").Delete(ctx, "here", metav1.DeleteOptions{}))
	expect(t, rec, "-Pod ns/here", "-Pod ns/here")
	must(nil, cs.Delete(ctx, "theirs", metav1.DeleteOptions{}))
	must(nil, cs.Delete(ctx, "plain", metav1.DeleteOptions{}))
	expect(t, rec, "-Service ns/plain", "-Service ns/plain")
	must(nil, ds.Delete(ctx, "plain-1", metav1.DeleteOptions{}))
	expect(t, rec, "-EndpointSlice ns/plain-1", "-EndpointSlice ns/plain-1")
	must(nil, client.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}))
	ev := expect(t, rec, "-Node n1", "-Node n1")
	if got := ev[0].Obj.(*corev1.Node); got.Labels["topology.kubernetes.io/zone"] != "a" {
		t.Fatalf("deletion carried a stale object: %+v", got.ObjectMeta)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
	case <-time.After(wait):
		t.Fatalf("Run did not return within %v of cancel", wait)
	}
	if n := rec.Synced(); n != 1 {
		t.Errorf("OnSynced called %d times, want 1", n)
	}
}

func TestRunWithoutProxyNameUsesKubeProxySelector(t *testing.T) {
	client := fake.NewClientset(svc("plain", nil), svc("ours", proxyLabel("switchyard")),
		slice("plain-1", nil), slice("headless-1", map[string]string{source.LabelHeadless: ""}))
	var mu sync.Mutex
	selectors := map[string]string{}
	client.PrependReactor("list", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.ListAction).GetListRestrictions()
		mu.Lock()
		defer mu.Unlock()
		selectors[a.GetResource().Resource] = r.Labels.String() + " " + r.Fields.String()
		return false, nil, nil
	})
	rec := sourcetest.NewRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, client, "n1", "", rec, slog.New(slog.DiscardHandler)) }()
	rec.WaitSynced(t, wait)
	if got, want := sorted(rec.Take()), []string{"+EndpointSlice ns/plain-1", "+Service ns/plain"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]string{
		"services":       "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name ",
		"endpointslices": "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name ",
		"nodes":          " metadata.name=n1",
		"pods":           " spec.nodeName=n1",
	}
	if !reflect.DeepEqual(selectors, want) {
		t.Errorf("list selectors %q, want %q", selectors, want)
	}
}

func TestHandlerTombstones(t *testing.T) {
	rec := sourcetest.NewRecorder()
	h := handler(slog.New(slog.DiscardHandler),
		func(s *corev1.Service) bool { return source.ServiceSelected(s, "") }, rec.OnService)
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/a", Obj: svc("a", nil)})
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/b", Obj: svc("b", proxyLabel("other"))})
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/c", Obj: node("c")}) // wrong type: logged, dropped
	h.OnDelete(svc("d", nil))
	if got, want := sourcetest.Strings(rec.Events()), []string{"-Service ns/a", "-Service ns/d"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
}

func TestTrimDropsManagedFieldsAndLastApplied(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{
		Name: "web", Namespace: "default",
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}},
		Annotations: map[string]string{
			"kubectl.kubernetes.io/last-applied-configuration": `{"a":"big copy"}`,
			"service.kubernetes.io/topology-mode":              "Auto",
		},
	}}
	out, err := Trim(svc)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Service)
	if got.ManagedFields != nil {
		t.Errorf("managedFields kept: %v", got.ManagedFields)
	}
	if len(got.Annotations) != 1 || got.Annotations["service.kubernetes.io/topology-mode"] != "Auto" {
		t.Errorf("annotations after Trim: %v", got.Annotations)
	}
	host, node := "web-0", "node-a"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-x", OwnerReferences: []metav1.OwnerReference{{Kind: "Service", Name: "web"}}},
		Endpoints: []discoveryv1.Endpoint{{
			Addresses: []string{"10.244.0.5"}, Hostname: &host, NodeName: &node,
			TargetRef:          &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "web-0"},
			DeprecatedTopology: map[string]string{"kubernetes.io/hostname": "node-a"},
		}},
	}
	out, _ = Trim(slice)
	ts := out.(*discoveryv1.EndpointSlice)
	if ts.OwnerReferences != nil || ts.Endpoints[0].TargetRef != nil || ts.Endpoints[0].Hostname != nil || ts.Endpoints[0].DeprecatedTopology != nil {
		t.Errorf("slice kept what no decision reads: %+v", ts)
	}
	if ts.Endpoints[0].Addresses[0] != "10.244.0.5" || *ts.Endpoints[0].NodeName != "node-a" {
		t.Errorf("slice lost what decisions read: %+v", ts.Endpoints[0])
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "default/web"}
	if out, err := Trim(tomb); err != nil || out != tomb {
		t.Errorf("a tombstone changed: %v %v", out, err)
	}
}
