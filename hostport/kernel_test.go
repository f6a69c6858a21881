package hostport

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard-proxy/switchyard/conntrack"
	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/planner"
	"github.com/switchyard-proxy/switchyard/test/lab"
)

func labPod(name, ip string, created time.Time, ports ...corev1.ContainerPort) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, CreationTimestamp: metav1.NewTime(created)},
		Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

// nsListen reserves ports inside the lab's node namespace.
func nsListen(ns string) ListenFunc {
	return func(network, address string) (io.Closer, error) {
		var c io.Closer
		err := lab.InNS(ns, func() error {
			var err error
			c, err = Listen(network, address)
			return err
		})
		return c, err
	}
}

// TestKernelTraffic programs host ports beside the real iptables mode in a
// lab node namespace and sends real TCP and UDP packets.
func TestKernelTraffic(t *testing.T) {
	l := lab.New(t, lab.Spec{Pods: []lab.Pod{
		{Name: "web", IP: netip.MustParseAddr("10.244.0.5"), TCPPorts: []uint16{80}, UDPPorts: []uint16{80}},
		{Name: "client", IP: netip.MustParseAddr("10.244.0.6"), TCPPorts: []uint16{80}},
		{Name: "old", IP: netip.MustParseAddr("10.244.0.7"), TCPPorts: []uint16{80}},
		{Name: "new", IP: netip.MustParseAddr("10.244.0.8"), TCPPorts: []uint16{80}},
	}})
	ex := iptexec.NetnsExecutor(l.Node)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	inner, err := iptables.New(iptables.Config{Mode: iptables.ModeNFT, Executor: ex, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := conntrack.NewNetlinkTableAt(l.Node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ct.Close() })
	p := Wrap(inner, Config{Mode: iptexec.ModeNFT, Executor: ex, Logger: quiet, Listen: nsListen(l.Node), Conntrack: ct})
	t.Cleanup(func() { _ = p.Cleanup(context.Background()) })

	now := time.Now()
	web := labPod("web", "10.244.0.5", now,
		corev1.ContainerPort{HostPort: 8080, ContainerPort: 80, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{HostPort: 8080, ContainerPort: 80, Protocol: corev1.ProtocolUDP},
		corev1.ContainerPort{HostPort: 8081, ContainerPort: 80, HostIP: l.NodeIP.String()})
	old := labPod("old", "10.244.0.7", now.Add(-time.Hour), corev1.ContainerPort{HostPort: 9090, ContainerPort: 80})
	newer := labPod("new", "10.244.0.8", now, corev1.ContainerPort{HostPort: 9090, ContainerPort: 80})
	cfg := &planner.Config{Node: planner.NodeInfo{Name: "node-1"}, Families: []proxier.IPFamily{proxier.IPv4}}
	var last proxier.SyncResult
	verify := false
	sync := func(full bool, pods ...*corev1.Pod) {
		t.Helper()
		hps, problems := planner.HostPorts(pods, cfg)
		for _, pr := range problems {
			t.Log("planner:", pr.String())
		}
		s := &proxier.Snapshot{Family: proxier.IPv4, NodeName: "node-1", NodeIPs: []netip.Addr{l.NodeIP},
			NodePortAddresses: proxier.NodePortAddresses{All: true}, FullSync: full, Verify: verify,
			Masquerade: proxier.MasqueradeConfig{MarkBit: 14}, HostPorts: hps[proxier.IPv4]}
		res, err := p.Sync(context.Background(), []*proxier.Snapshot{s})
		if err != nil {
			t.Fatal(err)
		}
		last = res
	}
	sync(true, web, old, newer)

	node := l.NodeIP.String()
	expect := func(ns, proto, addr, pod string, peer netip.Addr) {
		t.Helper()
		r, err := lab.Dial(ns, proto, addr, 3*time.Second)
		if err != nil {
			t.Errorf("%s %s from %s: %v", proto, addr, ns, err)
			return
		}
		nodeAddr := r.Peer.Addr() == l.NodeIP || r.Peer.Addr() == l.OutsideGW
		if r.Name != pod || (peer.IsValid() && r.Peer.Addr() != peer) || (!peer.IsValid() && !nodeAddr) {
			t.Errorf("%s %s from %s: answered by %s seeing %s, want %s seeing %v", proto, addr, ns, r.Name, r.Peer, pod, peer)
		}
	}
	refused := func(ns, proto, addr string) {
		t.Helper()
		if r, err := lab.Dial(ns, proto, addr, 800*time.Millisecond); err == nil {
			t.Errorf("%s %s from %s answered by %s, want no answer", proto, addr, ns, r.Name)
		}
	}
	// From outside, TCP and UDP, on every node address (wildcard).
	expect(l.Outside, "tcp", node+":8080", "web", l.OutsideIP)
	expect(l.Outside, "udp", node+":8080", "web", l.OutsideIP)
	expect(l.Outside, "tcp", l.OutsideGW.String()+":8080", "web", l.OutsideIP)
	// A specific host IP answers there only.
	expect(l.Outside, "tcp", node+":8081", "web", l.OutsideIP)
	refused(l.Outside, "tcp", l.OutsideGW.String()+":8081")
	// From the node itself (masqueraded to a node address), from another
	// pod (its own address kept), from the pod itself (hairpin:
	// masqueraded to a node address, else the reply would never come back
	// through the node). An invalid peer means "any node address".
	expect(l.Node, "tcp", node+":8080", "web", netip.Addr{})
	expect(l.Node, "udp", node+":8080", "web", netip.Addr{})
	client := l.Pod("client")
	expect(client.NS, "tcp", node+":8080", "web", client.IP)
	expect(client.NS, "udp", node+":8080", "web", client.IP)
	expect(l.Pod("web").NS, "tcp", node+":8080", "web", netip.Addr{})
	expect(l.Pod("web").NS, "udp", node+":8080", "web", netip.Addr{})
	// Two pods want 9090: the older serves.
	expect(l.Outside, "tcp", node+":9090", "old", l.OutsideIP)

	// A node process cannot take a reserved port.
	for _, c := range []struct{ network, addr string }{{"tcp4", ":8080"}, {"udp4", ":8080"}, {"tcp4", node + ":8081"}, {"tcp4", ":9090"}} {
		_, err := nsListen(l.Node)(c.network, c.addr)
		if err == nil || !errors.Is(err, errAddrInUse()) {
			t.Errorf("binding %s %s on the node: %v, want address in use", c.network, c.addr, err)
		}
	}

	// The rules name the pods.
	save, _, err := ex.Run(context.Background(), nil, "iptables-nft-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"default/web:8080"`, `"default/old:9090"`, "-j SWY-HOSTPORTS"} {
		if !strings.Contains(string(save), want) {
			t.Errorf("iptables-save lacks %s", want)
		}
	}
	if strings.Contains(string(save), "default/new:9090") {
		t.Error("the newer pod's conflicting mapping is programmed")
	}

	// A full, verifying sync of the iptables mode keeps the host-port chains.
	verify = true
	sync(true, web, old, newer)
	expect(l.Outside, "tcp", node+":8080", "web", l.OutsideIP)
	// A verifying sync (iptables-nft: chains listed) finds a deleted jump
	// and puts it back.
	l.MustExec(l.Node, "iptables-nft", "-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL",
		"-m", "comment", "--comment", "switchyard hostports", "-j", DispatchChain)
	sync(false, web, old, newer)
	if last.Repaired["jump"] != 1 {
		t.Errorf("deleted jump not repaired: %+v", last)
	}
	expect(l.Outside, "tcp", node+":8080", "web", l.OutsideIP)
	sync(false, web, old, newer)
	if last.Wrote || len(last.Repaired) != 0 {
		t.Errorf("verify of an untouched kernel wrote: %+v", last)
	}
	verify = false

	// The old pod goes: the newer one gets the port; web goes: its ports
	// are free again and no longer forwarded.
	sync(false, newer)
	expect(l.Outside, "tcp", node+":9090", "new", l.OutsideIP)
	refused(l.Outside, "tcp", node+":8080")
	for _, c := range []struct{ network, addr string }{{"tcp4", ":8080"}, {"udp4", ":8080"}, {"tcp4", node + ":8081"}} {
		s, err := nsListen(l.Node)(c.network, c.addr)
		if err != nil {
			t.Errorf("port of a removed mapping not released: %v", err)
			continue
		}
		_ = s.Close()
	}

	// A UDP client that sent to a port before it was mapped keeps its
	// conntrack entry (no NAT) for as long as it sends: adding the mapping
	// deletes that entry, so its next datagram reaches the pod.
	var conn *net.UDPConn
	if err := lab.InNS(l.Outside, func() error {
		var err error
		conn, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.IP(l.OutsideIP.AsSlice()), Port: 40007},
			&net.UDPAddr{IP: net.IP(l.NodeIP.AsSlice()), Port: 7070})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	dns := labPod("web", "10.244.0.5", now, corev1.ContainerPort{HostPort: 7070, ContainerPort: 80, Protocol: corev1.ProtocolUDP})
	sync(false, newer, dns)
	got := ""
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && got == ""; {
		_, _ = conn.Write([]byte("ping\n")) // an earlier port unreachable may fail one write
		_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 200)
		if n, err := conn.Read(buf); err == nil {
			got = string(buf[:n])
		}
	}
	if !strings.Contains(got, " web ") {
		t.Errorf("UDP flow from before the mapping never reached the pod (reply %q)", got)
	}

	// Cleanup leaves no host-port chain and no jump.
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	save, _, _ = ex.Run(context.Background(), nil, "iptables-nft-save", "-t", "nat")
	if strings.Contains(string(save), "HOSTPORT") {
		t.Errorf("left after cleanup:\n%s", save)
	}
}

func errAddrInUse() error { return syscall.EADDRINUSE }

// TestKernelTrafficDualStack: the same mapping in both families, over IPv6
// too (ip6tables nat, IPv6 masquerade for hairpin, a V6ONLY reservation).
func TestKernelTrafficDualStack(t *testing.T) {
	l := lab.New(t, lab.Spec{Pods: []lab.Pod{
		{Name: "web", IP: netip.MustParseAddr("10.244.0.5"), IPv6: netip.MustParseAddr("fd00:10:244::5"), TCPPorts: []uint16{80}, UDPPorts: []uint16{80}},
	}})
	ex := iptexec.NetnsExecutor(l.Node)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	inner, err := iptables.New(iptables.Config{Mode: iptables.ModeNFT, Executor: ex, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := conntrack.NewNetlinkTableAt(l.Node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ct.Close() })
	p := Wrap(inner, Config{Mode: iptexec.ModeNFT, Executor: ex, Logger: quiet, Listen: nsListen(l.Node), Conntrack: ct})
	t.Cleanup(func() { _ = p.Cleanup(context.Background()) })

	web := labPod("web", "10.244.0.5", time.Now(),
		corev1.ContainerPort{HostPort: 8080, ContainerPort: 80, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{HostPort: 8080, ContainerPort: 80, Protocol: corev1.ProtocolUDP})
	web.Status.PodIPs = []corev1.PodIP{{IP: "10.244.0.5"}, {IP: "fd00:10:244::5"}}
	cfg := &planner.Config{Node: planner.NodeInfo{Name: "node-1"}, Families: []proxier.IPFamily{proxier.IPv4, proxier.IPv6}}
	hps, _ := planner.HostPorts([]*corev1.Pod{web}, cfg)
	var snaps []*proxier.Snapshot
	for fam, nodeIP := range map[proxier.IPFamily]netip.Addr{proxier.IPv4: l.NodeIP, proxier.IPv6: l.NodeIPv6} {
		snaps = append(snaps, &proxier.Snapshot{Family: fam, NodeName: "node-1", NodeIPs: []netip.Addr{nodeIP},
			NodePortAddresses: proxier.NodePortAddresses{All: true}, FullSync: true,
			Masquerade: proxier.MasqueradeConfig{MarkBit: 14}, HostPorts: hps[fam]})
	}
	if snaps[0].Family != proxier.IPv4 {
		snaps[0], snaps[1] = snaps[1], snaps[0]
	}
	if _, err := p.Sync(context.Background(), snaps); err != nil {
		t.Fatal(err)
	}
	v6 := net.JoinHostPort(l.NodeIPv6.String(), "8080")
	for _, proto := range []string{"tcp", "udp"} {
		r, err := lab.Dial(l.Outside, proto, v6, 3*time.Second)
		if err != nil || r.Name != "web" || r.Peer.Addr() != l.OutsideIPv6 {
			t.Errorf("%s %s from outside: %+v %v", proto, v6, r, err)
		}
		r, err = lab.Dial(l.Pod("web").NS, proto, v6, 3*time.Second)
		if err != nil || r.Name != "web" || r.Peer.Addr() == l.Pod("web").IPv6 {
			t.Errorf("%s %s hairpin: %+v %v (want masqueraded)", proto, v6, r, err)
		}
		r, err = lab.Dial(l.Outside, proto, l.NodeIP.String()+":8080", 3*time.Second)
		if err != nil || r.Name != "web" {
			t.Errorf("%s IPv4 from outside: %+v %v", proto, r, err)
		}
	}
	for _, network := range []string{"tcp6", "udp6", "tcp4", "udp4"} {
		addr := "[::]:8080"
		if strings.HasSuffix(network, "4") {
			addr = ":8080"
		}
		if _, err := nsListen(l.Node)(network, addr); !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("binding %s %s on the node: %v, want address in use", network, addr, err)
		}
	}
}
