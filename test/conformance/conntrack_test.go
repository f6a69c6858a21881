package conformance

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/echo"
	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// udpProbe is a UDP client that sends an echo request from one fixed
// source address and port every 100 ms, as a DNS resolver or a statsd
// client does, and records who answers.
type udpProbe struct {
	name string
	conn *net.UDPConn
	dst  netip.AddrPort

	mu      sync.Mutex
	replies []probeReply
	done    chan struct{}
	wg      sync.WaitGroup
}

type probeReply struct {
	at   time.Time
	from string
}

// startProbe opens the probe's socket inside namespace ns, bound to src,
// and starts sending to dst; it stops when the test ends.
func startProbe(t *testing.T, name, ns string, src, dst netip.AddrPort) *udpProbe {
	t.Helper()
	conn, err := listenUDPIn(ns, src)
	if err != nil {
		t.Fatalf("probe %s: %v", name, err)
	}
	p := &udpProbe{name: name, conn: conn, dst: dst, done: make(chan struct{})}
	p.wg.Add(2)
	go p.send()
	go p.receive()
	t.Cleanup(p.stop)
	return p
}

func (p *udpProbe) send() {
	defer p.wg.Done()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		// Errors (an ICMP unreachable reported on the socket) are ignored:
		// the client keeps sending, as a real one would.
		_, _ = p.conn.WriteToUDPAddrPort([]byte("ping\n"), p.dst)
		select {
		case <-p.done:
			return
		case <-tick.C:
		}
	}
}

func (p *udpProbe) receive() {
	defer p.wg.Done()
	buf := make([]byte, 512)
	for {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue
		}
		r, err := echo.ParseReply(string(bytes.TrimSpace(buf[:n])) + "\n")
		if err != nil {
			continue
		}
		p.mu.Lock()
		p.replies = append(p.replies, probeReply{time.Now(), r.Name})
		p.mu.Unlock()
	}
}

func (p *udpProbe) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	close(p.done)
	p.wg.Wait()
	_ = p.conn.Close()
}

// waitFor polls until a reply from pod arrives after since and returns
// its time; it fails the test after deadline.
func (p *udpProbe) waitFor(t *testing.T, pod string, since time.Time, deadline time.Duration) time.Time {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		p.mu.Lock()
		for _, r := range p.replies {
			if r.from == pod && r.at.After(since) {
				p.mu.Unlock()
				return r.at
			}
		}
		last := "none"
		if n := len(p.replies); n > 0 {
			last = fmt.Sprintf("%s at %s", p.replies[n-1].from, p.replies[n-1].at.Sub(since).Round(time.Millisecond))
		}
		p.mu.Unlock()
		if time.Now().After(end) {
			t.Fatalf("probe %s (%s): no answer from %s within %s of the change; last answer: %s", p.name, p.dst, pod, deadline, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answersAfter returns who answered after t, in order.
func (p *udpProbe) answersAfter(t time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, r := range p.replies {
		if r.at.After(t) {
			out = append(out, r.from)
		}
	}
	return out
}

// listenUDPIn creates a UDP socket bound to src inside namespace ns.
func listenUDPIn(ns string, src netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := lab.InNS(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(src))
		return err
	})
	return c, err
}

const ctNode = `apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.244.0.0/24, podCIDRs: ["10.244.0.0/24"]}
status:
  addresses:
  - {type: InternalIP, address: 10.0.0.10}
`

// ctService is a UDP NodePort service (name, cluster IP, node port) with
// one EndpointSlice listing the given pod IPs on port 5353.
func ctService(name, clusterIP string, nodePort int, podIPs ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: %s, namespace: default}
spec:
  type: NodePort
  clusterIP: %s
  clusterIPs: [%q]
  ipFamilies: [IPv4]
  ports: [{name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: %d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %s-1
  namespace: default
  labels: {kubernetes.io/service-name: %s}
addressType: IPv4
ports: [{name: dns, protocol: UDP, port: 5353}]
endpoints:`, name, clusterIP, clusterIP, nodePort, name, name)
	if len(podIPs) == 0 {
		b.WriteString(" []\n")
	} else {
		b.WriteString("\n")
	}
	for _, ip := range podIPs {
		fmt.Fprintf(&b, "- addresses: [%q]\n  conditions: {ready: true}\n  nodeName: node-a\n", ip)
	}
	return []byte(b.String())
}

// conntrackList returns `conntrack -L -p udp` of the lab's node namespace
// for one destination address ("" when the tool is missing).
func conntrackList(l *lab.Lab, dst string) string {
	if _, err := exec.LookPath("conntrack"); err != nil {
		return ""
	}
	out, _ := l.Exec(l.Node, "conntrack", "-L", "-p", "udp", "-d", dst)
	var lines []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "udp") {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "\n")
}

// TestConntrackUDPFlowsMove is issue 9's conntrack test, with real packets
// and switchyard running as a process on a manifest folder: UDP clients
// that send from one fixed source port every 100 ms, to a cluster IP from a
// pod and to a node port from outside, follow the service when its only
// endpoint is replaced, and reach a service that goes from no endpoints
// (and from not existing, which leaves un-DNATed entries) to one. Without
// conntrack cleanup the first keep reaching the old pod and the second stay
// black-holed while they keep sending. It runs in iptables mode, and in
// IPVS mode where the kernel has IPVS (test/vm:
// `go test -c -o /var/tmp/conf.test ./test/conformance && test/vm/run
// /var/tmp/conf.test -test.run TestConntrackUDPFlowsMove -test.v`).
func TestConntrackUDPFlowsMove(t *testing.T) {
	requireRoot(t)
	for _, mode := range []string{"iptables", "ipvs"} {
		t.Run(mode, func(t *testing.T) {
			if _, err := os.Stat("/proc/net/ip_vs"); mode == "ipvs" && err != nil {
				t.Skipf("no IPVS in this kernel (%v); run it in test/vm", err)
			}
			testConntrackUDPFlowsMove(t, mode)
		})
	}
}

func testConntrackUDPFlowsMove(t *testing.T, mode string) {
	// Generous (emulated VMs are slow): the issue asks for < 1 s; the
	// measured values are logged.
	const deadline = 60 * time.Second
	l := lab.New(t, lab.Spec{Pods: []lab.Pod{
		{Name: "client", IP: netip.MustParseAddr("10.244.0.100"), NoEcho: true},
		{Name: "dns-old", IP: netip.MustParseAddr("10.244.0.2"), UDPPorts: []uint16{5353}},
		{Name: "dns-new", IP: netip.MustParseAddr("10.244.0.3"), UDPPorts: []uint16{5353}},
		{Name: "late", IP: netip.MustParseAddr("10.244.0.4"), UDPPorts: []uint16{5353}},
	}})
	dir := t.TempDir()
	writeManifest(t, dir, "node.yaml", []byte(ctNode))
	writeManifest(t, dir, "dns.yaml", ctService("dns", "10.96.0.53", 30053, "10.244.0.2"))
	args := append([]string{switchyardBinary(t)}, commonFlags(dir, scenarios.Config{})...)
	args = append(args, "--proxy-mode", mode, "--min-sync-period", "100ms", "--sync-period", "30s", "--log-level", "debug")
	proc := l.Start(l.Node, args...)
	mark := waitWrote(t, proc, 0, "start")
	var logs []string // output of the processes stopped so far

	client := l.Pod("client").NS

	t.Run("only endpoint replaced", func(t *testing.T) {
		fromPod := startProbe(t, "pod→clusterIP", client, netip.MustParseAddrPort("10.244.0.100:40053"), netip.MustParseAddrPort("10.96.0.53:53"))
		fromOutside := startProbe(t, "outside→nodePort", l.Outside, netip.AddrPortFrom(l.OutsideIP, 40053), netip.AddrPortFrom(l.NodeIP, 30053))
		start := time.Now()
		fromPod.waitFor(t, "dns-old", start, deadline)
		fromOutside.waitFor(t, "dns-old", start, deadline)
		t.Logf("before the change:\n%s\n%s", conntrackList(l, "10.96.0.53"), conntrackList(l, l.NodeIP.String()))

		// The only endpoint is replaced while both clients keep sending.
		changed := time.Now()
		writeManifest(t, dir, "dns.yaml", ctService("dns", "10.96.0.53", 30053, "10.244.0.3"))
		for _, p := range []*udpProbe{fromPod, fromOutside} {
			at := p.waitFor(t, "dns-new", changed, deadline)
			t.Logf("%s: first answer from the new pod %s after the manifest changed", p.name, at.Sub(changed).Round(time.Millisecond))
		}
		// Once moved, a flow stays on the new pod.
		moved := time.Now()
		for _, p := range []*udpProbe{fromPod, fromOutside} {
			p.waitFor(t, "dns-new", moved, deadline)
			if got := p.answersAfter(moved); strings.Contains(strings.Join(got, " "), "dns-old") {
				t.Errorf("%s: the old pod answered after the move: %v", p.name, got)
			}
		}
		mark = waitWrote(t, proc, mark, "replacing the endpoint")
	})

	t.Run("restart keeps valid flows", func(t *testing.T) {
		// kubernetes#122740: a restart must not flush conntrack. The
		// first sync reconciles against the full snapshot and finds
		// nothing stale: the flows made above (to dns-new) stay.
		p := startProbe(t, "pod→clusterIP (restart)", client, netip.MustParseAddrPort("10.244.0.100:40055"), netip.MustParseAddrPort("10.96.0.53:53"))
		p.waitFor(t, "dns-new", time.Now(), deadline)
		before := conntrackList(l, "10.96.0.53")
		proc.Stop()
		logs = append(logs, proc.Output())
		proc = l.Start(l.Node, args...)
		mark = waitWrote(t, proc, 0, "the restart")
		restarted := time.Now()
		out := proc.Output()
		if !strings.Contains(out, `"conntrack reconciled"`) {
			t.Errorf("the first sync after the restart did not reconcile conntrack:\n%s", out)
		}
		if strings.Contains(out, "deleted stale conntrack entries") {
			t.Errorf("the restart deleted valid conntrack entries:\n%s", out)
		}
		p.waitFor(t, "dns-new", restarted, deadline)
		if got := p.answersAfter(restarted); strings.Contains(strings.Join(got, " "), "dns-old") {
			t.Errorf("the old pod answered after the restart: %v", got)
		}
		t.Logf("entries before the restart:\n%s\nafter:\n%s", before, conntrackList(l, "10.96.0.53"))
	})

	t.Run("zero endpoints to one", func(t *testing.T) {
		// A service that does not exist yet: the clients' packets leave
		// entries that were never DNATed (to the outside, which drops them;
		// to the node, which has no listener).
		lateCluster := startProbe(t, "pod→clusterIP (late)", client, netip.MustParseAddrPort("10.244.0.100:40054"), netip.MustParseAddrPort("10.96.0.54:53"))
		lateNode := startProbe(t, "outside→nodePort (late)", l.Outside, netip.AddrPortFrom(l.OutsideIP, 40054), netip.AddrPortFrom(l.NodeIP, 30054))
		poll(t, "un-DNATed entries for the late service", func() string {
			if _, err := exec.LookPath("conntrack"); err != nil {
				return ""
			}
			c, n := conntrackList(l, "10.96.0.54"), conntrackList(l, l.NodeIP.String())
			if !strings.Contains(c, "src=10.96.0.54") || !strings.Contains(n, "sport=30054") {
				return fmt.Sprintf("entries:\n%s\n%s", c, n)
			}
			return ""
		})
		t.Logf("before the late service exists:\n%s\n%s", conntrackList(l, "10.96.0.54"), conntrackList(l, l.NodeIP.String()))

		// It appears with no endpoint, then gets its first one.
		writeManifest(t, dir, "late.yaml", ctService("late", "10.96.0.54", 30054))
		mark = waitWrote(t, proc, mark, "adding the late service without endpoints")
		changed := time.Now()
		writeManifest(t, dir, "late.yaml", ctService("late", "10.96.0.54", 30054, "10.244.0.4"))
		for _, p := range []*udpProbe{lateCluster, lateNode} {
			at := p.waitFor(t, "late", changed, deadline)
			t.Logf("%s: first answer from the first endpoint %s after it was added", p.name, at.Sub(changed).Round(time.Millisecond))
		}
	})

	all := strings.Join(append(logs, proc.Output()), "")
	if !strings.Contains(all, "deleted stale conntrack entries") {
		t.Errorf("switchyard never logged a conntrack cleanup:\n%s", all)
	}
	for _, line := range strings.Split(all, "\n") {
		if strings.Contains(line, "conntrack") || strings.Contains(line, "msg=synced") || strings.Contains(line, `"synced"`) {
			t.Logf("switchyard: %s", line)
		}
	}
}

// waitWrote waits until proc logs a sync that wrote rules after byte
// offset mark of its output and returns the new offset (as
// liveSwitchyard.waitSync, with a deadline that suits an emulated VM, where
// one IPVS sync takes seconds).
func waitWrote(t *testing.T, proc *lab.Process, mark int, what string) int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		out := proc.Output()
		if loc := syncedLine.FindStringIndex(out[mark:]); loc != nil {
			return mark + loc[1]
		}
		select {
		case <-proc.Done():
			t.Fatalf("switchyard exited while waiting for the sync after %s:\n%s", what, out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("no sync within 2 min after %s; output:\n%s", what, proc.Output())
	return 0
}

// poll waits until check returns "" (30 s at most).
func poll(t *testing.T, what string, check func() string) {
	t.Helper()
	end := time.Now().Add(30 * time.Second)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
