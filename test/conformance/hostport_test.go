package conformance

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// hostPortPod is a Pod manifest on the lab's node with hostPort (TCP and
// UDP, on hostIP when it is not empty) to the echo port 80.
func hostPortPod(name, ip, created, hostIP string, hostPort int) string {
	bind := ""
	if hostIP != "" {
		bind = ", hostIP: " + hostIP
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
  creationTimestamp: "%s"
spec:
  nodeName: %s
  containers:
  - name: echo
    ports:
    - {containerPort: 80, hostPort: %[5]d, protocol: TCP%[6]s}
    - {containerPort: 80, hostPort: %[5]d, protocol: UDP%[6]s}
status:
  phase: Running
  podIP: %[4]s
`, name, created, scenarios.Topology.NodeName, ip, hostPort, bind)
}

// listenIn tries to bind a socket in namespace ns (a node process taking a
// port).
func listenIn(ns, network, addr string) error {
	return lab.InNS(ns, func() error {
		if strings.HasPrefix(network, "udp") {
			c, err := net.ListenPacket(network, addr)
			if err == nil {
				c.Close()
			}
			return err
		}
		l, err := net.Listen(network, addr)
		if err == nil {
			l.Close()
		}
		return err
	})
}

// TestHostPortsLive runs the switchyard binary on a manifest folder with
// Pods that have hostPorts (issue 10): real TCP and UDP traffic from
// outside, the node, another pod and the pod itself; the older of two pods
// wanting a port serves; the port is reserved on the node; deleting the pod
// removes its rules and releases the port.
func TestHostPortsLive(t *testing.T) { testHostPortsLive(t, "iptables") }

// TestHostPortsLiveNFTables is TestHostPortsLive in nftables mode: the
// hostport decorator's iptables-nft rules (SWY-HOSTPORTS, in the ip nat
// table) work beside the nftables mode's own table.
func TestHostPortsLiveNFTables(t *testing.T) { testHostPortsLive(t, "nftables") }

// TestHostPortsLiveIPVS is TestHostPortsLive in IPVS mode, where the kernel
// has IPVS (make test-vm runs it in the VM): the hostport decorator's nat
// rules beside the IPVS mode's virtual servers and chains.
func TestHostPortsLiveIPVS(t *testing.T) {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Skipf("no IPVS in this kernel (%v); make test-vm runs it in the VM", err)
	}
	testHostPortsLive(t, "ipvs")
}

func testHostPortsLive(t *testing.T, mode string) {
	requireRoot(t)
	l := lab.New(t, lab.Spec{Pods: []lab.Pod{
		{Name: "web", IP: netip.MustParseAddr("10.244.0.5"), TCPPorts: []uint16{80}, UDPPorts: []uint16{80}},
		{Name: "late", IP: netip.MustParseAddr("10.244.0.6"), TCPPorts: []uint16{80}, UDPPorts: []uint16{80}},
		{Name: "client", IP: netip.MustParseAddr("10.244.0.7"), NoEcho: true},
		{Name: "pinned", IP: netip.MustParseAddr("10.244.0.8"), TCPPorts: []uint16{80}, UDPPorts: []uint16{80}},
	}})
	dir := t.TempDir()
	writeManifest(t, dir, "node.yaml", []byte(fmt.Sprintf(`apiVersion: v1
kind: Node
metadata:
  name: %s
status:
  addresses:
  - {type: InternalIP, address: %s}
`, scenarios.Topology.NodeName, l.NodeIP)))
	writeManifest(t, dir, "web.yaml", []byte(hostPortPod("web", "10.244.0.5", "2026-01-01T00:00:00Z", "", 8080)))
	writeManifest(t, dir, "late.yaml", []byte(hostPortPod("late", "10.244.0.6", "2026-01-02T00:00:00Z", "", 8080)))
	// pinned's hostPort 8081 is bound to one node address only.
	writeManifest(t, dir, "pinned.yaml", []byte(hostPortPod("pinned", "10.244.0.8", "2026-01-01T00:00:00Z", l.OutsideGW.String(), 8081)))
	args := append([]string{switchyardBinary(t)}, modeFlags(dir, scenarios.Config{}, mode)...)
	args = append(args, "--min-sync-period", "100ms", "--sync-period", "30s", "--log-level", "debug", "--hostport-mode", "auto")
	sy := &liveSwitchyard{t: t, proc: l.Start(l.Node, args...)}
	mark := sy.waitSync(0, "start")

	node := l.NodeIP.String() + ":8080"
	expect := func(step, ns, proto, addr, pod string, peer func(netip.Addr) bool) {
		t.Helper()
		r, err := lab.Dial(ns, proto, addr, 3*time.Second)
		switch {
		case err != nil:
			t.Errorf("%s: %s %s from %s: %v", step, proto, addr, ns, err)
		case r.Name != pod || !peer(r.Peer.Addr()):
			t.Errorf("%s: %s %s from %s answered by %s seeing %s, want %s", step, proto, addr, ns, r.Name, r.Peer, pod)
		}
	}
	is := func(a netip.Addr) func(netip.Addr) bool { return func(b netip.Addr) bool { return a == b } }
	nodeAddr := func(b netip.Addr) bool { return b == l.NodeIP || b == l.OutsideGW }
	for _, proto := range []string{"tcp", "udp"} {
		expect("outside", l.Outside, proto, node, "web", is(l.OutsideIP))
		expect("outside, other node address", l.Outside, proto, l.OutsideGW.String()+":8080", "web", is(l.OutsideIP))
		expect("node", l.Node, proto, node, "web", nodeAddr)
		expect("other pod", l.Pod("client").NS, proto, node, "web", is(l.Pod("client").IP))
		expect("hairpin", l.Pod("web").NS, proto, node, "web", nodeAddr)
	}
	pinned := l.OutsideGW.String() + ":8081"
	for _, proto := range []string{"tcp", "udp"} {
		expect("outside, to the pod's hostIP", l.Outside, proto, pinned, "pinned", is(l.OutsideIP))
	}
	if r, err := lab.Dial(l.Outside, "tcp", l.NodeIP.String()+":8081", 800*time.Millisecond); err == nil {
		t.Errorf("hostPort 8081 bound to %s also answered on %s:8081 (%s)", l.OutsideGW, l.NodeIP, r.Name)
	}
	if !strings.Contains(sy.proc.Output(), "no CNI portmap chain") {
		t.Errorf("--hostport-mode=auto did not say what it chose:\n%s", sy.proc.Output())
	}
	if !strings.Contains(sy.proc.Output(), "already used by pod default/web") {
		t.Errorf("the conflict is not reported:\n%s", sy.proc.Output())
	}
	for _, network := range []string{"tcp4", "udp4"} {
		if err := listenIn(l.Node, network, ":8080"); !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("a node process binding %s :8080 got %v, want address in use", network, err)
		}
	}

	// web goes: late (the remaining claimant) takes the port.
	if err := os.Remove(filepath.Join(dir, "web.yaml")); err != nil {
		t.Fatal(err)
	}
	mark = sy.waitSync(mark, "removing web")
	for _, proto := range []string{"tcp", "udp"} {
		expect("after web left", l.Outside, proto, node, "late", is(l.OutsideIP))
	}
	// late and pinned go too: no rules, the port is free for node processes.
	for _, f := range []string{"late.yaml", "pinned.yaml"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	sy.waitSync(mark, "removing late")
	if r, err := lab.Dial(l.Outside, "tcp", node, 800*time.Millisecond); err == nil {
		t.Errorf("8080 still forwarded to %s after every pod left", r.Name)
	}
	for _, network := range []string{"tcp4", "udp4"} {
		if err := listenIn(l.Node, network, ":8080"); err != nil {
			t.Errorf("port not released: %s :8080: %v", network, err)
		}
	}
	save := l.MustExec(l.Node, "iptables-nft-save", "-t", "nat")
	if strings.Contains(save, "SWY-HOSTPORT-") {
		t.Errorf("per-mapping chains left:\n%s", save)
	}
}
