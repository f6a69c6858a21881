package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/switchyard-proxy/switchyard/test/cluster"
	"github.com/switchyard-proxy/switchyard/test/echo"
	"github.com/switchyard-proxy/switchyard/test/lab"
)

const echoReplicas = 4

// TestSwitchyardDaemonSet runs switchyard the way users do, on two real
// nodes: the image imported into each node's containerd, deploy/ applied
// with the overlay, the DaemonSet pod Running on both nodes, then real
// traffic from a pod to a ClusterIP served by pods on both nodes and from
// outside to the NodePort of both nodes, and a rollout restart of the
// DaemonSet under traffic with no connection lost.
func TestSwitchyardDaemonSet(t *testing.T) {
	archive := os.Getenv("SWY_IMAGE_ARCHIVE")
	if archive == "" {
		archive = filepath.Join(cluster.RepoRoot(), ".cache", "image", "switchyard.tar")
	}
	if _, err := os.Stat(archive); err != nil {
		t.Fatalf("switchyard image archive: %v (run make image, or set SWY_IMAGE_ARCHIVE)", err)
	}
	image, err := ArchiveRef(archive)
	if err != nil {
		t.Fatal(err)
	}
	b := Start(t)
	ctx := context.Background()
	measure := func(name string, fn func() error) {
		t.Helper()
		s := time.Now()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s: %s", name, time.Since(s).Round(100*time.Millisecond))
	}

	measure("import images", func() error {
		if err := b.ImportArchive(archive); err != nil {
			return err
		}
		return b.ImportEcho()
	})
	measure("deploy switchyard", func() error { return b.DeploySwitchyard(ctx, image) })
	var ds *appsv1.DaemonSet
	measure("DaemonSet available on both nodes", func() error {
		return waitFor(3*time.Minute, func() error {
			ds, err = b.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "switchyard", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if ds.Status.DesiredNumberScheduled != 2 || ds.Status.NumberAvailable != 2 {
				return fmt.Errorf("desired %d available %d", ds.Status.DesiredNumberScheduled, ds.Status.NumberAvailable)
			}
			return nil
		})
	})
	before := switchyardPods(t, b)
	for _, n := range b.Nodes {
		p, ok := before[n.Name]
		if !ok {
			t.Fatalf("no switchyard pod on %s", n.Name)
		}
		if !p.Spec.HostNetwork || p.Status.PodIP != n.IP {
			t.Fatalf("switchyard pod %s: hostNetwork %v, IP %s; want the node's %s", p.Name, p.Spec.HostNetwork, p.Status.PodIP, n.IP)
		}
	}

	svc := deployEcho(t, b)
	nodePort := svc.Spec.Ports[0].NodePort
	clusterIP := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	pods := echoPods(t, b)
	names := map[string]bool{}
	onNode := map[string]int{}
	for _, p := range pods {
		names[p.Name] = true
		onNode[p.Spec.NodeName]++
	}
	if len(onNode) != 2 {
		t.Fatalf("echo pods are not on both nodes: %v", onNode)
	}
	client := clientPod(t, b)
	clientNS, err := b.Nodes[0].PodNetNS(string(client.UID))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("client pod %s (%s on %s), echo pods per node %v, service %s nodePort %d", client.Name, client.Status.PodIP, client.Spec.NodeName, onNode, clusterIP, nodePort)

	// The node namespaces hold switchyard's rules (the DaemonSet pod runs
	// with hostNetwork there), and the host's namespace none of the bed's.
	for _, n := range b.Nodes {
		out, err := exec.Command("nsenter", "--net=/run/netns/"+n.NS, "iptables-save", "-t", "nat").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-save in %s: %v\n%s", n.NS, err, out)
		}
		if !strings.Contains(string(out), svc.Spec.ClusterIP) {
			t.Fatalf("%s: no nat rule names the cluster IP %s:\n%s", n.Name, svc.Spec.ClusterIP, out)
		}
	}

	type path struct{ name, ns, addr string }
	outside := "/run/netns/" + b.OutNS
	paths := []path{{"pod " + client.Spec.NodeName + " -> clusterIP", clientNS, clusterIP}}
	for _, n := range b.Nodes {
		paths = append(paths, path{"outside -> " + n.Name + " nodePort", outside, net.JoinHostPort(n.IP, fmt.Sprint(nodePort))})
	}
	for _, p := range paths {
		measure("all echo pods reached: "+p.name, func() error {
			return waitFor(90*time.Second, func() error {
				seen := map[string]bool{}
				for i := 0; i < 12*len(names); i++ {
					r, err := ask(p.ns, p.addr)
					if err != nil {
						return err
					}
					if !names[r.Name] {
						return fmt.Errorf("reply from %q, not an echo pod", r.Name)
					}
					seen[r.Name] = true
				}
				if len(seen) != len(names) {
					return fmt.Errorf("reached %v of %v", keys(seen), keys(names))
				}
				return nil
			})
		})
	}

	// Rollout restart under traffic: every new connection on every path,
	// during the restart and a few seconds after it, is served.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var total, failed atomic.Int64
	var firstErr atomic.Value
	for _, p := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				total.Add(1)
				if _, err := ask(p.ns, p.addr); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %v", p.name, err))
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	restartedAt := time.Now().Format(time.RFC3339)
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, restartedAt)
	measure("rollout restart of the DaemonSet", func() error {
		if _, err := b.Client.AppsV1().DaemonSets("kube-system").Patch(ctx, "switchyard", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return err
		}
		return waitFor(3*time.Minute, func() error {
			ds, err := b.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "switchyard", metav1.GetOptions{})
			if err != nil {
				return err
			}
			st := ds.Status
			if st.ObservedGeneration < ds.Generation || st.UpdatedNumberScheduled != 2 || st.NumberAvailable != 2 {
				return fmt.Errorf("generation %d/%d updated %d available %d", st.ObservedGeneration, ds.Generation, st.UpdatedNumberScheduled, st.NumberAvailable)
			}
			after := switchyardPods(t, b)
			for _, n := range b.Nodes {
				if after[n.Name].UID == before[n.Name].UID {
					return fmt.Errorf("%s still runs the old pod", n.Name)
				}
			}
			return nil
		})
	})
	time.Sleep(5 * time.Second) // keep the traffic going while the new pods resync
	close(stop)
	wg.Wait()
	t.Logf("traffic during the rollout: %d connections, %d failed", total.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d of %d connections failed during the rollout restart; first: %v", failed.Load(), total.Load(), firstErr.Load())
	}
	if total.Load() < 50 {
		t.Fatalf("only %d connections during the rollout", total.Load())
	}
	for _, p := range paths {
		if _, err := ask(p.ns, p.addr); err != nil {
			t.Fatalf("after the rollout: %v", err)
		}
	}
	for _, n := range b.Nodes {
		if n.kubelet.running() && n.containerd.running() {
			continue
		}
		t.Fatalf("%s: kubelet or containerd exited", n.Name)
	}
	t.Log(b.Memory())
}

// ask makes one TCP connection from the namespace at nsPath to addr and
// returns the echo reply.
func ask(nsPath, addr string) (echo.Reply, error) {
	var c net.Conn
	err := lab.InNSPath(nsPath, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	})
	if err != nil {
		return echo.Reply{}, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return echo.Reply{}, fmt.Errorf("read from %s: %w", addr, err)
	}
	return echo.ParseReply(line)
}

func switchyardPods(t *testing.T, b *Bed) map[string]corev1.Pod {
	t.Helper()
	list, err := b.Client.CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=switchyard"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]corev1.Pod{}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			out[p.Spec.NodeName] = p
		}
	}
	return out
}

const echoNS = "echo"

// deployEcho creates a Deployment of echo pods spread over both nodes and
// a NodePort Service in front of them.
func deployEcho(t *testing.T, b *Bed) *corev1.Service {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app": "echo"}
	if _, err := b.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: echoNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	replicas := int32(echoReplicas)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: echoNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{echoContainer()},
				},
			},
		},
	}
	if _, err := b.Client.AppsV1().Deployments(echoNS).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: echoNS},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
	svc, err := b.Client.CoreV1().Services(echoNS).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func echoContainer() corev1.Container {
	return corev1.Container{
		Name:            "echo",
		Image:           EchoRef,
		ImagePullPolicy: corev1.PullNever,
		Args:            []string{"-name=$(POD_NAME)", "-tcp=8080", "-udp=8080"},
		Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"},
		}}},
		Ports: []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
			PeriodSeconds: 1,
		},
	}
}

// echoPods waits until every echo pod is ready and returns them.
func echoPods(t *testing.T, b *Bed) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	s := time.Now()
	err := waitFor(3*time.Minute, func() error {
		list, err := b.Client.CoreV1().Pods(echoNS).List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return err
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if ready(&p) {
				pods = append(pods, p)
			}
		}
		if len(pods) != echoReplicas {
			return fmt.Errorf("%d of %d echo pods ready", len(pods), echoReplicas)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("echo pods ready: %s", time.Since(s).Round(100*time.Millisecond))
	return pods
}

// clientPod runs a pod on the first node whose network namespace the test
// sends from.
func clientPod(t *testing.T, b *Bed) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	c := echoContainer()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: echoNS},
		Spec:       corev1.PodSpec{NodeName: b.Nodes[0].Name, Containers: []corev1.Container{c}},
	}
	if _, err := b.Client.CoreV1().Pods(echoNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	if err := waitFor(2*time.Minute, func() error {
		var err error
		got, err = b.Client.CoreV1().Pods(echoNS).Get(ctx, "client", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !ready(got) {
			return errors.New("client pod not ready")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func ready(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.PodIP == "" {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
