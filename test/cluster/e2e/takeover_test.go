package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/switchyard-proxy/switchyard/test/cluster"
	"github.com/switchyard-proxy/switchyard/test/lab"
)

// kubeProxyVersion is the upstream release the takeover test runs: the
// version of k8s.io/kubernetes in test/cluster's go.mod.
const kubeProxyVersion = "v1.37.2"

// Ports of the takeover test's Service and its line servers.
const (
	takeoverSvc  = "takeover"
	takeoverPort = 80
	linePort     = 9090
)

// kubeProxyBinary builds upstream kube-proxy from test/cluster's go.mod
// into .cache/bin (or returns $SWY_KUBE_PROXY_BIN). The go.mod and go.sum
// are copied first (-modfile): kube-proxy needs go.sum lines that
// test/cluster does not, and its own files stay untouched. The build time
// is logged (minutes cold, seconds warm).
func kubeProxyBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SWY_KUBE_PROXY_BIN"); p != "" {
		return p
	}
	root := cluster.RepoRoot()
	cache := filepath.Join(root, ".cache")
	if err := os.MkdirAll(filepath.Join(cache, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	mod := filepath.Join(t.TempDir(), "kube-proxy.mod")
	for _, f := range [][2]string{{"go.mod", mod}, {"go.sum", strings.TrimSuffix(mod, ".mod") + ".sum"}} {
		b, err := os.ReadFile(filepath.Join(root, "test", "cluster", f[0]))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1], b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(cache, "bin", "kube-proxy")
	ld := "-X k8s.io/component-base/version.gitVersion=" + kubeProxyVersion +
		" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
	cmd := exec.Command(goTool(), "build", "-mod=mod", "-modfile="+mod, "-ldflags", ld, "-o", out, "k8s.io/kubernetes/cmd/kube-proxy")
	cmd.Dir = filepath.Join(root, "test", "cluster")
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building kube-proxy: %v\n%s", err, b)
	}
	t.Logf("kube-proxy %s built in %s", kubeProxyVersion, time.Since(start).Round(100*time.Millisecond))
	return out
}

// TestTakeoverFromKubeProxy runs upstream kube-proxy (iptables mode, nft
// flavour) in the lab's node namespace against the real API server, opens
// long-lived TCP flows through a cluster IP, stops kube-proxy (its rules
// stay, as on a real node), starts switchyard with --cleanup-kube-proxy
// and checks that no flow is lost, new connections work, and nothing of
// kube-proxy's is left (kubelet's chains excepted).
func TestTakeoverFromKubeProxy(t *testing.T) {
	lab.RequireRoot(t)
	for _, tool := range []string{"iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "nft", "ipset"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required: %v", tool, err)
		}
	}
	kp := kubeProxyBinary(t)
	e := newEnv(t)
	ctx := t.Context()
	l := e.lab
	for _, pod := range []string{"pod-a", "pod-b"} {
		lab.StartLineServer(t, l.Pod(pod).NS, pod, linePort)
	}
	// kubelet's chains, which the takeover must leave alone.
	l.MustExec(l.Node, "iptables-nft", "-t", "filter", "-N", "KUBE-FIREWALL")
	l.MustExec(l.Node, "iptables-nft", "-t", "filter", "-A", "INPUT", "-j", "KUBE-FIREWALL")
	l.MustExec(l.Node, "iptables-nft", "-t", "nat", "-N", "KUBE-KUBELET-CANARY")

	if err := ensureNode(ctx, e.client, nodeName, l.NodeIP.String()); err != nil {
		t.Fatal(err)
	}
	clusterIP := createTakeoverService(ctx, t, e)
	vip := netip.AddrPortFrom(netip.MustParseAddr(clusterIP), takeoverPort)

	args := []string{kp, "--proxy-mode=iptables", "--hostname-override=" + nodeName,
		"--kubeconfig=" + e.cluster.Kubeconfig, "--cluster-cidr=" + clusterCIDR,
		"--metrics-bind-address=127.0.0.1:10349", "--healthz-bind-address=127.0.0.1:10356",
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--oom-score-adj=0", "--v=2"}
	kproc := l.Start(l.Node, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-proxy output, last lines:\n%s", tail(kproc.Output(), 40))
		}
	})
	client := l.Pod("client").NS
	eventually(t, "kube-proxy's rules answer on "+vip.String(), func() error {
		select {
		case <-kproc.Done():
			return fmt.Errorf("kube-proxy exited:\n%s", tail(kproc.Output(), 30))
		default:
		}
		save, err := e.iptablesSave()
		if err != nil {
			return err
		}
		if !strings.Contains(save, "-d "+clusterIP+"/32") || !strings.Contains(save, "KUBE-SVC-") {
			return fmt.Errorf("no KUBE-SVC rule for %s yet", clusterIP)
		}
		return askNew(client, vip)
	})

	// Long-lived flows through kube-proxy's rules.
	var flows []*lab.Conn
	seen := map[string]bool{}
	for i := 0; i < 8; i++ {
		c, err := lab.DialConn(client, vip)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		name, err := c.Ask()
		if err != nil {
			t.Fatalf("flow %d through kube-proxy: %v", i, err)
		}
		seen[name] = true
		flows = append(flows, c)
	}
	t.Logf("flows through kube-proxy reach %v", seen)
	// One flow asks all along, from before kube-proxy stops to the end.
	watched, flows := flows[0], flows[1:]
	stopWatch := make(chan struct{})
	watchDone := make(chan error, 1)
	go func() {
		n := 0
		defer func() { t.Logf("the watched flow answered %d times during the takeover", n) }()
		for {
			select {
			case <-stopWatch:
				watchDone <- nil
				return
			default:
			}
			if _, err := watched.Ask(); err != nil {
				watchDone <- fmt.Errorf("after %d answers: %w", n, err)
				return
			}
			n++
			time.Sleep(20 * time.Millisecond)
		}
	}()
	askAll := func(when string) {
		t.Helper()
		for i, c := range flows {
			if _, err := c.Ask(); err != nil {
				t.Fatalf("flow %d lost %s: %v", i, when, err)
			}
		}
	}

	// kube-proxy leaves its rules in place when it exits.
	if err := syscall.Kill(kproc.PID(), syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM kube-proxy: %v", err)
	}
	select {
	case <-kproc.Done():
	case <-time.After(waitTimeout):
		t.Fatalf("kube-proxy did not exit after SIGTERM")
	}
	if save, _ := e.iptablesSave(); !strings.Contains(save, "KUBE-SERVICES") {
		t.Fatalf("kube-proxy removed its rules on exit; the takeover is not tested:\n%s", save)
	}
	askAll("after kube-proxy stopped")
	kubeLines := 0
	for _, line := range strings.Split(mustSave(t, e), "\n") {
		if strings.Contains(line, "KUBE-") {
			kubeLines++
		}
	}
	t.Logf("kube-proxy left %d iptables-nft-save lines naming KUBE- chains", kubeLines)

	kubeconfig := e.rbacKubeconfig(ctx, t)
	sw := e.startSwitchyard(kubeconfig, "--cleanup-kube-proxy")
	eventually(t, "switchyard synced and removed kube-proxy's leftovers", func() error {
		if err := sw.running(); err != nil {
			return err
		}
		if !strings.Contains(sw.proc.Output(), "kube-proxy leftovers removed") {
			return fmt.Errorf("no cleanup logged yet")
		}
		return nil
	})
	if out := sw.proc.Output(); strings.Contains(out, "kube-proxy's leftovers failed") {
		t.Errorf("cleanup failed in part:\n%s", tail(out, 30))
	}
	askAll("after the takeover")
	newSeen := map[string]bool{}
	for i := 0; i < 12; i++ {
		c, err := lab.DialConn(client, vip)
		if err != nil {
			t.Fatalf("new connection %d after the takeover: %v", i, err)
		}
		name, err := c.Ask()
		_ = c.Close()
		if err != nil {
			t.Fatalf("new connection %d after the takeover: %v", i, err)
		}
		newSeen[name] = true
	}
	if !newSeen["pod-a"] || !newSeen["pod-b"] {
		t.Errorf("new connections reached %v, want pod-a and pod-b", newSeen)
	}
	askAll("at the end")
	close(stopWatch)
	if err := <-watchDone; err != nil {
		t.Errorf("the watched flow was lost: %v", err)
	}
	for _, line := range strings.Split(sw.proc.Output(), "\n") {
		if strings.Contains(line, "kube-proxy") {
			t.Logf("switchyard: %s", line)
		}
	}

	// Nothing of kube-proxy's is left.
	kubelets := []string{"KUBE-FIREWALL", "KUBE-KUBELET-CANARY"}
	for _, tool := range [][]string{{"iptables-nft-save"}, {"ip6tables-nft-save"}, {"iptables-legacy-save"}, {"ip6tables-legacy-save"}, {"nft", "list", "ruleset"}, {"ipset", "list", "-n"}} {
		out, err := l.Exec(l.Node, tool...)
		if err != nil {
			t.Fatalf("%v: %v", tool, err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "kube-proxy") || (strings.Contains(line, "KUBE-") && !mentionsOnly(line, kubelets)) {
				t.Errorf("%s: kube-proxy's %q is left", tool[0], strings.TrimSpace(line))
			}
		}
	}
	save, _ := e.iptablesSave()
	for _, want := range []string{":KUBE-FIREWALL", "-A INPUT -j KUBE-FIREWALL", ":KUBE-KUBELET-CANARY"} {
		if !strings.Contains(save, want) {
			t.Errorf("kubelet's %q was removed", want)
		}
	}
}

func mustSave(t *testing.T, e *env) string {
	t.Helper()
	save, err := e.iptablesSave()
	if err != nil {
		t.Fatal(err)
	}
	return save
}

// mentionsOnly reports whether every KUBE- name in line is one of names.
func mentionsOnly(line string, names []string) bool {
	for _, f := range strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '"' || r == ':' || r == '\t' }) {
		if i := strings.Index(f, "KUBE-"); i >= 0 {
			ok := false
			for _, n := range names {
				if f[i:] == n {
					ok = true
				}
			}
			if !ok {
				return false
			}
		}
	}
	return true
}

// askNew opens one connection to vip from ns and asks once.
func askNew(ns string, vip netip.AddrPort) error {
	c, err := lab.DialConn(ns, vip)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Ask()
	return err
}

// createTakeoverService creates the Service (port 80 -> the line servers'
// port) and its EndpointSlice {pod-a, pod-b} and returns the cluster IP.
func createTakeoverService(ctx context.Context, t *testing.T, e *env) string {
	t.Helper()
	if _, err := createService(ctx, e.client); err != nil { // creates the namespace too
		t.Fatal(err)
	}
	svc, err := e.client.CoreV1().Services(svcNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: takeoverSvc, Namespace: svcNamespace},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: portName, Protocol: corev1.ProtocolTCP, Port: takeoverPort, TargetPort: intstr.FromInt32(linePort),
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	tcp, name, port, yes := corev1.ProtocolTCP, portName, int32(linePort), true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: takeoverSvc + "-1", Namespace: svcNamespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: takeoverSvc, discoveryv1.LabelManagedBy: "switchyard-e2e",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &tcp, Port: &port}},
	}
	for _, pod := range []string{"pod-a", "pod-b"} {
		node := nodeName
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{podIPs[pod].String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes},
			NodeName:   &node,
		})
	}
	if _, err := e.client.DiscoveryV1().EndpointSlices(svcNamespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create endpoint slice: %v", err)
	}
	return svc.Spec.ClusterIP
}
