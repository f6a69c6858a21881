package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/switchyard-proxy/switchyard/test/lab"
)

// Names and addresses of the host-port suite.
const (
	hpNamespace = "e2e-hp"
	// hpSecondary is hp-multus's address on its "secondary network" (an
	// extra address on its interface, routed by the node), which only
	// the network-status annotation names.
	hpSecondary = "192.168.77.24"
	// hpNetwork is the Multus network the hp-multus pod opts in to.
	hpNetwork = hpNamespace + "/macvlan-hp"
)

var hpIPs = map[string]netip.Addr{
	"hp-client": netip.MustParseAddr("10.244.0.20"),
	"hp-web":    netip.MustParseAddr("10.244.0.21"),
	"hp-old":    netip.MustParseAddr("10.244.0.22"),
	"hp-new":    netip.MustParseAddr("10.244.0.23"),
	"hp-multus": netip.MustParseAddr("10.244.0.24"),
	"hp-decoy":  netip.MustParseAddr("10.244.0.25"),
}

// TestHostPorts runs switchyard (iptables mode, nft flavour, the
// deploy/rbac.yaml identity) against a real API server and checks the
// hostPorts of Pods bound to the lab's node with real packets. There is
// no kubelet: the test sets spec.nodeName and writes status.podIPs
// through the status subresource.
func TestHostPorts(t *testing.T) {
	lab.RequireRoot(t)
	var pods []lab.Pod
	for _, name := range []string{"hp-client", "hp-web", "hp-old", "hp-new", "hp-multus", "hp-decoy"} {
		p := lab.Pod{Name: name, IP: hpIPs[name], TCPPorts: []uint16{80}, UDPPorts: []uint16{80}}
		if name == "hp-client" {
			p.NoEcho = true
		}
		pods = append(pods, p)
	}
	e := newEnvWith(t, pods)
	ctx := t.Context()
	l := e.lab
	node := l.NodeIP.String()

	kubeconfig := e.rbacKubeconfig(ctx, t)
	if err := ensureNode(ctx, e.client, nodeName, node); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: hpNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sw := e.startSwitchyard(kubeconfig, "--hostport-mode", "on")

	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	outside := client{name: "outside client", ns: l.Outside}
	fromNode := client{name: "node", ns: l.Node}
	fromPod := client{name: "pod client", ns: l.Pod("hp-client").NS}
	hairpin := client{name: "hp-web itself", ns: l.Pod("hp-web").NS}
	nodeAddrs := []netip.Addr{l.NodeIP, l.OutsideGW}

	step("TCP and UDP to nodeIP:hostPort", func(t *testing.T) {
		if _, err := createHostPortPod(ctx, e.client, "hp-web", nil,
			corev1.ContainerPort{ContainerPort: 80, HostPort: 8080, Protocol: corev1.ProtocolTCP},
			corev1.ContainerPort{ContainerPort: 80, HostPort: 8080, Protocol: corev1.ProtocolUDP},
			corev1.ContainerPort{ContainerPort: 80, HostPort: 8081, Protocol: corev1.ProtocolTCP, HostIP: node}); err != nil {
			t.Fatal(err)
		}
		// Pending without an IP: nothing to map yet.
		if err := setPodRunning(ctx, e.client, "hp-web", hpIPs["hp-web"].String()); err != nil {
			t.Fatal(err)
		}
		web := []string{"hp-web"}
		e.expectServed(t, "outside reaches hp-web on "+node+":8080", []client{outside}, node+":8080", web, peerIs(l.OutsideIP))
		e.expectServed(t, "the node reaches hp-web", []client{fromNode}, node+":8080", web, peerIn(nodeAddrs...))
		e.expectServed(t, "another pod reaches hp-web, source kept", []client{fromPod}, node+":8080", web, peerIs(hpIPs["hp-client"]))
		e.expectServed(t, "hp-web reaches itself (hairpin, masqueraded)", []client{hairpin}, node+":8080", web, peerIn(nodeAddrs...))
		e.expectServed(t, "the specific host IP answers", []client{outside}, node+":8081", web, peerIs(l.OutsideIP))
		e.expectFailing(t, "the specific host IP only", outside, l.OutsideGW.String()+":8081", lab.ErrRefused)
		for _, c := range []client{outside, fromNode, fromPod, hairpin} {
			expectUDP(t, c, node+":8080", "hp-web")
		}
		for _, b := range []struct{ network, addr string }{{"tcp4", ":8080"}, {"udp4", ":8080"}, {"tcp4", node + ":8081"}} {
			if err := bindInNS(l.Node, b.network, b.addr); !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("a node process binding %s %s: %v, want address in use (reserved)", b.network, b.addr, err)
			}
		}
		save, err := e.iptablesSave()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(save, `"`+hpNamespace+`/hp-web:8080"`) {
			t.Errorf("no rule comment names %s/hp-web:8080:\n%s", hpNamespace, save)
		}
	})

	step("conflict: the older pod serves, the newer gets an Event", func(t *testing.T) {
		old, err := createHostPortPod(ctx, e.client, "hp-old", nil, corev1.ContainerPort{ContainerPort: 80, HostPort: 9090})
		if err != nil {
			t.Fatal(err)
		}
		// Creation times have a one-second resolution: create the newer
		// pod in a later second, so age (not the name) decides.
		eventually(t, "a second later than hp-old's creation", func() error {
			if !time.Now().Truncate(time.Second).After(old.CreationTimestamp.Time) {
				return errors.New("same second")
			}
			return nil
		})
		if _, err := createHostPortPod(ctx, e.client, "hp-new", nil, corev1.ContainerPort{ContainerPort: 80, HostPort: 9090}); err != nil {
			t.Fatal(err)
		}
		// The newer pod runs first: the older still wins once it runs.
		for _, name := range []string{"hp-new", "hp-old"} {
			if err := setPodRunning(ctx, e.client, name, hpIPs[name].String()); err != nil {
				t.Fatal(err)
			}
		}
		e.expectServed(t, "the older pod serves 9090", []client{outside}, node+":9090", []string{"hp-old"}, peerIs(l.OutsideIP))
		eventually(t, "a HostPortConflict event on hp-new", func() error {
			evs, err := conflictEvents(ctx, e.client, "hp-new")
			if err != nil {
				return err
			}
			if len(evs) != 1 {
				return fmt.Errorf("%d HostPortConflict events on hp-new", len(evs))
			}
			ev := evs[0]
			if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Note, "9090") || !strings.Contains(ev.Note, hpNamespace+"/hp-old") ||
				ev.ReportingController != "switchyard" || ev.Regarding.Kind != "Pod" || ev.Regarding.UID == "" {
				return fmt.Errorf("event %+v", ev)
			}
			return nil
		})
		logged(t, sw, "hostPort 9090/TCP is already used by pod "+hpNamespace+"/hp-old")
		if evs, _ := conflictEvents(ctx, e.client, "hp-old"); len(evs) != 0 {
			t.Errorf("the winner has conflict events: %+v", evs)
		}
	})

	step("a Multus pod is served on its secondary network's IP", func(t *testing.T) {
		mp := l.Pod("hp-multus")
		l.MustExec(mp.NS, "ip", "addr", "add", hpSecondary+"/32", "dev", "eth0")
		l.MustExec(l.Node, "ip", "route", "add", hpSecondary+"/32", "dev", mp.NodeIface, "src", node)
		status := `[{"name":"cbr0","interface":"eth0","ips":["` + hpIPs["hp-decoy"].String() + `"],"default":true},` +
			`{"name":"` + hpNetwork + `","interface":"net1","ips":["` + hpSecondary + `"]}]`
		// The pod's primary IP (status.podIPs) is hp-decoy's address: a
		// mapping to the primary IP would be answered by hp-decoy.
		if _, err := createHostPortPod(ctx, e.client, "hp-multus", map[string]string{
			"switchyard.io/hostport-network": hpNetwork, "k8s.v1.cni.cncf.io/network-status": status,
		}, corev1.ContainerPort{ContainerPort: 80, HostPort: 9191}); err != nil {
			t.Fatal(err)
		}
		// Opted in, but Multus wrote no status: reported, skipped.
		if _, err := createHostPortPod(ctx, e.client, "hp-nostatus", map[string]string{
			"switchyard.io/hostport-network": hpNetwork,
		}, corev1.ContainerPort{ContainerPort: 80, HostPort: 9292}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"hp-multus", "hp-nostatus"} {
			if err := setPodRunning(ctx, e.client, name, hpIPs["hp-decoy"].String()); err != nil {
				t.Fatal(err)
			}
		}
		e.expectServed(t, "hp-multus answers 9191 on "+hpSecondary, []client{outside, fromPod}, node+":9191", []string{"hp-multus"}, nil)
		logged(t, sw, `object="`+hpNamespace+`/hp-nostatus" reason="annotation switchyard.io/hostport-network=\"`+hpNetwork+`\": the pod has no k8s.v1.cni.cncf.io/network-status annotation`)
		e.expectFailing(t, "hp-nostatus is not mapped", outside, node+":9292", lab.ErrRefused)
		// hp-web keeps working beside the skipped pod.
		e.expectServed(t, "hp-web still served", []client{outside}, node+":8080", []string{"hp-web"}, peerIs(l.OutsideIP))
	})

	step("pod deleted: mapping gone, reservation released", func(t *testing.T) {
		zero := int64(0)
		if err := e.client.CoreV1().Pods(hpNamespace).Delete(ctx, "hp-web", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		e.expectFailing(t, "nothing answers 8080 any more", outside, node+":8080", lab.ErrRefused)
		eventually(t, "a node process can bind 8080 (tcp, udp) and "+node+":8081", func() error {
			for _, b := range []struct{ network, addr string }{{"tcp4", ":8080"}, {"udp4", ":8080"}, {"tcp4", node + ":8081"}} {
				if err := bindInNS(l.Node, b.network, b.addr); err != nil {
					return err
				}
			}
			return nil
		})
		save, err := e.iptablesSave()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(save, hpNamespace+"/hp-web:") {
			t.Errorf("rules still name hp-web:\n%s", save)
		}
		// The older pod goes: the newer one gets 9090.
		if err := e.client.CoreV1().Pods(hpNamespace).Delete(ctx, "hp-old", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		e.expectServed(t, "hp-new serves 9090 once hp-old is gone", []client{outside}, node+":9090", []string{"hp-new"}, peerIs(l.OutsideIP))
	})

	step("one event per conflict", func(t *testing.T) {
		// Several syncs happened since the conflict (pods added and
		// deleted): still one event, never repeated as a series.
		evs, err := conflictEvents(ctx, e.client, "hp-new")
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 1 || evs[0].Series != nil {
			t.Errorf("HostPortConflict events on hp-new: %+v", evs)
		}
		if strings.Contains(sw.proc.Output(), "forbidden") {
			t.Errorf("switchyard was refused something:\n%s", tail(sw.proc.Output(), 40))
		}
	})
}

// logged polls until switchyard's output contains s.
func logged(t *testing.T, sw *switchyard, s string) {
	t.Helper()
	eventually(t, "switchyard logs "+s, func() error {
		if !strings.Contains(sw.proc.Output(), s) {
			return errors.New("not logged yet")
		}
		return nil
	})
}

// createHostPortPod creates a Pod bound to the lab's node (no scheduler,
// no kubelet) with one container and the given ports.
func createHostPortPod(ctx context.Context, c kubernetes.Interface, name string, annotations map[string]string, ports ...corev1.ContainerPort) (*corev1.Pod, error) {
	p, err := c.CoreV1().Pods(hpNamespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: hpNamespace, Annotations: annotations},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{
			Name: "echo", Image: "registry.invalid/echo:none", Ports: ports,
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	return p, nil
}

// setPodRunning writes what kubelet would: phase Running and the pod IP,
// through the status subresource.
func setPodRunning(ctx context.Context, c kubernetes.Interface, name, ip string) error {
	for {
		p, err := c.CoreV1().Pods(hpNamespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get pod %s: %w", name, err)
		}
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		p.Status.HostIP = lab.DefaultNodeIP.String()
		_, err = c.CoreV1().Pods(hpNamespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("pod %s status: %w", name, err)
		}
		return nil
	}
}

// conflictEvents lists the events.k8s.io HostPortConflict events regarding
// the pod.
func conflictEvents(ctx context.Context, c kubernetes.Interface, pod string) ([]eventsv1.Event, error) {
	l, err := c.EventsV1().Events(hpNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	var out []eventsv1.Event
	for _, ev := range l.Items {
		if ev.Regarding.Name == pod && ev.Reason == "HostPortConflict" {
			out = append(out, ev)
		}
	}
	return out, nil
}

// expectUDP polls until a UDP datagram from c to addr is answered by pod.
func expectUDP(t *testing.T, c client, addr, pod string) {
	t.Helper()
	eventually(t, "UDP "+c.name+" -> "+addr+" reaches "+pod, func() error {
		r, err := lab.Dial(c.ns, "udp", addr, lab.DefaultDialTimeout)
		if err != nil {
			return err
		}
		if r.Name != pod {
			return fmt.Errorf("answered by %s", r.Name)
		}
		return nil
	})
}

// bindInNS binds network/addr inside namespace ns, as a node process
// would, and closes the socket again.
func bindInNS(ns, network, addr string) error {
	return lab.InNS(ns, func() error {
		if strings.HasPrefix(network, "udp") {
			c, err := net.ListenPacket(network, addr)
			if err != nil {
				return err
			}
			return c.Close()
		}
		ln, err := net.Listen(network, addr)
		if err != nil {
			return err
		}
		return ln.Close()
	})
}
