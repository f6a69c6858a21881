package demo

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/switchyard-proxy/switchyard/proxier/source/manifests"
	"github.com/switchyard-proxy/switchyard/test/echo"
)

func spec(notReady string) Spec {
	s := Spec{
		Namespace: "demo", Service: "web", Node: "node-a",
		NodeIP:    netip.MustParseAddr("10.0.0.10"),
		ClusterIP: netip.MustParseAddr("10.96.0.80"),
		Port:      80, TargetPort: 8080, NodePort: 30080,
	}
	for i, n := range []string{"pod-a", "pod-b", "pod-c"} {
		s.Pods = append(s.Pods, Pod{Name: n, IP: netip.AddrFrom4([4]byte{10, 244, 0, byte(11 + i)}), Ready: n != notReady})
	}
	return s
}

func readyOf(t *testing.T, c *fake.Clientset) map[string]bool {
	t.Helper()
	sl, err := c.DiscoveryV1().EndpointSlices("demo").Get(context.Background(), "web-demo", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get slice: %v", err)
	}
	got := map[string]bool{}
	for _, ep := range sl.Endpoints {
		got[ep.Addresses[0]] = *ep.Conditions.Ready
	}
	return got
}

func TestApplyCreatesThenUpdates(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	if err := Apply(ctx, c, spec("")); err != nil {
		t.Fatalf("first apply: %v", err)
	}
	node, err := c.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node: %v", err)
	}
	if len(node.Status.Addresses) == 0 || node.Status.Addresses[0].Address != "10.0.0.10" {
		t.Errorf("node addresses = %v, want InternalIP 10.0.0.10 first", node.Status.Addresses)
	}
	svc, err := c.CoreV1().Services("demo").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get service: %v", err)
	}
	if svc.Spec.ClusterIP != "10.96.0.80" || svc.Spec.Ports[0].NodePort != 30080 {
		t.Errorf("service spec = %+v", svc.Spec)
	}
	if got := readyOf(t, c); len(got) != 3 || !got["10.244.0.13"] {
		t.Errorf("ready after create = %v, want 3 ready endpoints", got)
	}

	if err := Apply(ctx, c, spec("pod-c")); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	got := readyOf(t, c)
	if got["10.244.0.13"] || !got["10.244.0.11"] || !got["10.244.0.12"] {
		t.Errorf("ready after update = %v, want only pod-c not ready", got)
	}
}

func TestWriteManifestsLoads(t *testing.T) {
	dir := t.TempDir()
	if err := WriteManifests(dir, spec("pod-b")); err != nil {
		t.Fatalf("write: %v", err)
	}
	objs, errs := manifests.Load(dir, "node-a", "")
	if len(errs) > 0 {
		t.Fatalf("load: %v", errs)
	}
	if len(objs.Nodes) != 1 || len(objs.Services) != 1 || len(objs.EndpointSlices) != 1 {
		t.Fatalf("loaded %d nodes, %d services, %d slices; want 1 each", len(objs.Nodes), len(objs.Services), len(objs.EndpointSlices))
	}
	eps := objs.EndpointSlices[0].Endpoints
	if len(eps) != 3 || *eps[1].Conditions.Ready || !*eps[0].Conditions.Ready {
		t.Errorf("endpoints = %+v, want pod-b alone not ready", eps)
	}
}

func TestSendCountsAnswers(t *testing.T) {
	// echo.Listen does not report the port it got: find a free one first.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv, err := echo.Listen("pod-x", []uint16{uint16(port)}, nil)
	if err != nil {
		t.Fatalf("echo server: %v", err)
	}
	defer srv.Close()
	srv.Serve()
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	tally := Send(addr, 5, defaultTestTimeout)
	if tally.ByPod["pod-x"] != 5 || tally.Answered() != 5 {
		t.Fatalf("tally = %+v, want 5 answers from pod-x", tally)
	}
	if err := tally.Check([]string{"pod-x"}); err != nil {
		t.Errorf("check: %v", err)
	}
	if err := tally.Check([]string{"pod-y"}); err == nil {
		t.Errorf("check accepted an unexpected pod")
	}
	var out strings.Builder
	tally.Print(&out, []string{"pod-w", "pod-x"}, netip.MustParseAddr("192.0.2.100"))
	for _, want := range []string{"pod-w   0", "pod-x   5  #####", "5/5 answered", "source NAT: the client is 192.0.2.100"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("print output lacks %q:\n%s", want, out.String())
		}
	}

	srv.Close()
	failed := Send(addr, 2, defaultTestTimeout)
	if len(failed.Errors) != 2 || failed.Check([]string{"pod-x"}) == nil {
		t.Errorf("requests to a closed server: %+v, want 2 errors and a failed check", failed)
	}
}

const defaultTestTimeout = 2 * time.Second
