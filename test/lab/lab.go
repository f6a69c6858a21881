// Package lab builds a small network of Linux network namespaces for tests
// that send real packets through real kernel rules.
//
// Topology (all names start with "swy-<id>-", id random per lab):
//
//	outside ns                 node ns                         pod ns (one per pod)
//	eth0 192.0.2.100/24 ──veth── ext0 192.0.2.1/24        pN ──veth── eth0 10.244.0.X/32
//	default via 192.0.2.1        + 10.0.0.10/32 (node IP)
//	                             10.244.0.X/32 dev pN src NodeIP   default via 10.0.0.10 onlink
//	                             default via 192.0.2.100
//
// Pods are routed, not bridged: each pod has a /32 address and a default
// route through the node IP on its veth (the node answers ARP for it because
// the node IP is one of its local addresses), and the node has a host route
// to each pod on that pod's veth. So pod-to-pod and hairpin traffic crosses
// the node's FORWARD path, with no bridge (and no br_netfilter) involved.
// The node's default route points at the outside namespace, whose
// forwarding is off: a packet to a service IP that no rule rewrites leaves
// the node and is dropped inside the lab, never reaching the host.
//
// In the node namespace ip_forward and route_localnet are on and rp_filter
// is off. Each pod namespace runs the swy-echo server (package test/echo),
// built once per test binary; it answers on IPv4 and IPv6. Everything is
// removed in t.Cleanup.
//
// The lab starts no process to build or remove itself (only the echo
// servers, side by side): namespaces are created and deleted as `ip netns
// add`/`del` do (named under /run/netns, so `ip -n` and `ip netns exec`
// see them), links, addresses and routes go over netlink handles opened
// inside each namespace, and sysctls are written to /proc/sys from a
// thread inside the namespace. Under emulation (test/vm) each `ip` process
// cost seconds; a dual-stack lab needed about 60 of them.
//
// Dual-stack (opt-in: Spec.DualStack, an IPv6 address in the Spec, or a pod
// with Pod.IPv6): the same topology also carries IPv6, with ULA and
// documentation addresses only:
//
//	outside ns                    node ns                               pod ns
//	eth0 2001:db8::100/64 ──veth── ext0 2001:db8::1/64               pN fe80::1/64 ──veth── eth0 fd00:10:244::X/128
//	default via 2001:db8::1        + fd00:10::10/128 (node IPv6)                         default via fe80::1 dev eth0
//	                               fd00:10:244::X/128 dev pN src fd00:10::10
//	                               default via 2001:db8::100
//
// IPv6 has no "answer neighbour solicitations for any local address", so a
// pod's IPv6 next hop is the link-local fe80::1 on the node side of its
// veth (as in routed CNIs). Duplicate address detection is off in every
// namespace (accept_dad=0, and addresses are added with nodad), so no
// address is ever "tentative"; the node forwards IPv6
// (net.ipv6.conf.all.forwarding=1). Without dual-stack nothing of IPv6 is
// configured, exactly as before.
//
// One IPv6 difference tests must allow for: a TCP connection that a REJECT
// rule refuses is seen as refused only about 1s late. The ICMPv6 error comes
// back while the client's connect() still holds its socket lock, Linux's
// IPv6 TCP keeps it as a soft error (nstat TcpExtLockDroppedIcmps), and only
// the SYN retransmission's error aborts the connection (IPv4 aborts at the
// first). Give such dials a few seconds.
package lab

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Prefix starts the name of every namespace the lab creates.
const Prefix = "swy-"

// Default addresses of the lab.
var (
	DefaultNodeIP    = netip.MustParseAddr("10.0.0.10")
	DefaultOutsideGW = netip.MustParseAddr("192.0.2.1")
	DefaultOutsideIP = netip.MustParseAddr("192.0.2.100")
	// DefaultNodeIPv6, DefaultOutsideGWv6 and DefaultOutsideIPv6 are the
	// IPv6 addresses of a dual-stack lab (the outside network is
	// 2001:db8::/64).
	DefaultNodeIPv6    = netip.MustParseAddr("fd00:10::10")
	DefaultOutsideGWv6 = netip.MustParseAddr("2001:db8::1")
	DefaultOutsideIPv6 = netip.MustParseAddr("2001:db8::100")
	// PodGatewayIPv6 is the link-local address of the node side of every
	// pod veth: each pod's IPv6 default route points at it.
	PodGatewayIPv6 = netip.MustParseAddr("fe80::1")
	// DefaultPorts are the echo ports of a pod whose spec names none.
	DefaultPorts = []uint16{80}
)

// Pod describes one pod namespace.
type Pod struct {
	// Name is the pod's name: lower-case letters, digits and '-', at most
	// 20 characters. The echo server answers with it.
	Name string
	// IP is the pod's address (e.g. 10.244.0.5).
	IP netip.Addr
	// IPv6 is the pod's IPv6 address (e.g. fd00:10:244::5); optional, and
	// it makes the lab dual-stack.
	IPv6 netip.Addr
	// TCPPorts and UDPPorts are the echo server's ports; both default to
	// DefaultPorts when both are empty.
	TCPPorts, UDPPorts []uint16
	// NoEcho skips starting the echo server.
	NoEcho bool
}

// Spec describes a lab. Zero addresses take the defaults above.
type Spec struct {
	NodeIP    netip.Addr
	OutsideIP netip.Addr
	OutsideGW netip.Addr
	// OutsideExtraIPs are more client addresses of the outside namespace
	// (in the outside /24), usable as sources with DialFrom.
	OutsideExtraIPs []netip.Addr
	Pods            []Pod
	// DualStack gives the node and the outside network IPv6 addresses
	// too (zero IPv6 addresses below take the defaults). It is implied by
	// any IPv6 address in the Spec or in a pod.
	DualStack bool
	// NodeIPv6 is the node's IPv6 address; OutsideIPv6 and OutsideGWv6
	// are the outside client's and the node's on the outside /64.
	NodeIPv6, OutsideIPv6, OutsideGWv6 netip.Addr
}

// dualStack reports whether the spec asks for IPv6.
func (s Spec) dualStack() bool {
	if s.DualStack || s.NodeIPv6.IsValid() || s.OutsideIPv6.IsValid() || s.OutsideGWv6.IsValid() {
		return true
	}
	for _, p := range s.Pods {
		if p.IPv6.IsValid() {
			return true
		}
	}
	return false
}

// PodNS is a pod namespace of a running lab.
type PodNS struct {
	Pod
	// NS is the namespace name.
	NS string
	// NodeIface is the node side of the pod's veth (in the node namespace).
	NodeIface string
}

// Lab is a running lab. Its fields are read-only.
type Lab struct {
	// ID is the random part of every namespace name.
	ID string
	// Node and Outside are the node and outside-client namespace names.
	Node, Outside string
	// NodeIP, OutsideIP and OutsideGW are the addresses in use.
	NodeIP, OutsideIP, OutsideGW netip.Addr
	// NodeIPv6, OutsideIPv6 and OutsideGWv6 are the IPv6 addresses in use
	// in a dual-stack lab; invalid (zero) otherwise.
	NodeIPv6, OutsideIPv6, OutsideGWv6 netip.Addr
	// ExtIface is the node's interface towards the outside namespace.
	ExtIface string
	// Pods are the pod namespaces, in spec order.
	Pods []*PodNS

	t      testing.TB
	mu     sync.Mutex
	procs  []*Process
	nsList []string
}

var podName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,19}$`)

// New creates the lab described by spec and registers its removal with
// t.Cleanup. It skips the test when not run as root and fails it when a
// needed tool is missing.
func New(t testing.TB, spec Spec) *Lab {
	t.Helper()
	RequireRoot(t)
	if spec.NodeIP == (netip.Addr{}) {
		spec.NodeIP = DefaultNodeIP
	}
	if spec.OutsideIP == (netip.Addr{}) {
		spec.OutsideIP = DefaultOutsideIP
	}
	if spec.OutsideGW == (netip.Addr{}) {
		spec.OutsideGW = DefaultOutsideGW
	}
	dual := spec.dualStack()
	if dual {
		for _, d := range []struct {
			a   *netip.Addr
			def netip.Addr
		}{{&spec.NodeIPv6, DefaultNodeIPv6}, {&spec.OutsideIPv6, DefaultOutsideIPv6}, {&spec.OutsideGWv6, DefaultOutsideGWv6}} {
			if !d.a.IsValid() {
				*d.a = d.def
			}
			if !d.a.Is6() || d.a.Is4In6() {
				t.Fatalf("lab: IPv6 address required, got %v", *d.a)
			}
		}
	}
	var idb [3]byte
	if _, err := rand.Read(idb[:]); err != nil {
		t.Fatalf("lab: random id: %v", err)
	}
	id := hex.EncodeToString(idb[:])
	l := &Lab{
		ID:        id,
		Node:      Prefix + id + "-node",
		Outside:   Prefix + id + "-out",
		NodeIP:    spec.NodeIP,
		OutsideIP: spec.OutsideIP,
		OutsideGW: spec.OutsideGW,
		ExtIface:  "ext0",
		t:         t,
	}
	if dual {
		l.NodeIPv6, l.OutsideIPv6, l.OutsideGWv6 = spec.NodeIPv6, spec.OutsideIPv6, spec.OutsideGWv6
	}
	t.Cleanup(l.cleanup)
	seen := map[string]bool{}
	for i, p := range spec.Pods {
		if !podName.MatchString(p.Name) || seen[p.Name] {
			t.Fatalf("lab: bad or duplicate pod name %q", p.Name)
		}
		seen[p.Name] = true
		if !p.IP.Is4() {
			t.Fatalf("lab: pod %s: IPv4 address required, got %v", p.Name, p.IP)
		}
		if p.IPv6.IsValid() && (!p.IPv6.Is6() || p.IPv6.Is4In6() || p.IPv6.IsLinkLocalUnicast()) {
			t.Fatalf("lab: pod %s: IPv6 must be a global or ULA IPv6 address, got %v", p.Name, p.IPv6)
		}
		if len(p.TCPPorts) == 0 && len(p.UDPPorts) == 0 {
			p.TCPPorts, p.UDPPorts = DefaultPorts, DefaultPorts
		}
		l.Pods = append(l.Pods, &PodNS{Pod: p, NS: Prefix + id + "-" + p.Name, NodeIface: fmt.Sprintf("p%d", i)})
	}

	// Each namespace and its netlink handle; the handles close when New
	// returns (cleanup deletes the namespaces).
	var open []*labNS
	defer func() {
		for _, n := range open {
			n.close()
		}
	}()
	mkNS := func(name string, sysctls ...map[string]string) *labNS {
		t.Helper()
		kv := map[string]string{}
		for _, m := range sysctls {
			for k, v := range m {
				kv[k] = v
			}
		}
		n, mounted, err := createNS(name, kv)
		if mounted {
			l.mu.Lock()
			l.nsList = append(l.nsList, name)
			l.mu.Unlock()
		}
		if err != nil {
			t.Fatalf("lab: %v", err)
		}
		open = append(open, n)
		return n
	}
	check := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("lab: %v", err)
		}
	}
	v6Node, v6Other := map[string]string{}, map[string]string{}
	if dual {
		v6Node, v6Other = ipv6Sysctls("1"), ipv6Sysctls("0")
	}

	// The node's default route points back out of its outside link, so an
	// outside packet to an address no rule rewrote (a service without
	// endpoints) would be "forwarded" out of the interface it came in on
	// and draw an ICMP redirect before the FORWARD hook; that redirect
	// uses up the per-host ICMP rate limit and suppresses the REJECT's
	// port-unreachable. A node is not a router for its clients: redirects
	// are off (default is set before the links exist, so they inherit it).
	node := mkNS(l.Node, map[string]string{
		"net/ipv4/conf/all/send_redirects":     "0",
		"net/ipv4/conf/default/send_redirects": "0",
		"net/ipv4/ip_forward":                  "1",
		"net/ipv4/conf/all/route_localnet":     "1",
		"net/ipv4/conf/all/rp_filter":          "0",
		"net/ipv4/conf/default/rp_filter":      "0",
		"net/ipv4/conf/all/arp_ignore":         "0",
	}, v6Node)
	out := mkNS(l.Outside, map[string]string{"net/ipv4/ip_forward": "0"}, v6Other)

	// node <-> outside
	check(node.veth(l.ExtIface, out, "eth0"))
	check(node.addr(l.ExtIface, netip.PrefixFrom(l.OutsideGW, 24)))
	check(node.addr(l.ExtIface, netip.PrefixFrom(l.NodeIP, 32)))
	check(node.up(l.ExtIface))
	check(out.addr("eth0", netip.PrefixFrom(l.OutsideIP, 24)))
	for _, a := range spec.OutsideExtraIPs {
		check(out.addr("eth0", netip.PrefixFrom(a, 24)))
	}
	check(out.up("eth0"))
	check(out.route(route{gw: l.OutsideGW}))
	check(node.route(route{gw: l.OutsideIP, dev: l.ExtIface}))
	if dual {
		check(node.addr(l.ExtIface, netip.PrefixFrom(l.OutsideGWv6, 64)))
		check(node.addr(l.ExtIface, netip.PrefixFrom(l.NodeIPv6, 128)))
		check(out.addr("eth0", netip.PrefixFrom(l.OutsideIPv6, 64)))
		check(out.route(route{gw: l.OutsideGWv6, dev: "eth0"}))
		check(node.route(route{gw: l.OutsideIPv6, dev: l.ExtIface}))
	}

	for _, p := range l.Pods {
		pns := mkNS(p.NS, map[string]string{"net/ipv4/conf/all/rp_filter": "0"}, v6Other)
		check(node.veth(p.NodeIface, pns, "eth0"))
		check(node.up(p.NodeIface))
		check(node.route(route{dst: netip.PrefixFrom(p.IP, 32), dev: p.NodeIface, src: l.NodeIP}))
		check(setSysctls(node, map[string]string{"net/ipv4/conf/" + p.NodeIface + "/rp_filter": "0"}))
		check(pns.addr("eth0", netip.PrefixFrom(p.IP, 32)))
		check(pns.up("eth0"))
		check(pns.route(route{gw: l.NodeIP, dev: "eth0", onlink: true}))
		if dual {
			// Both ends are up: the node side gets the pods' IPv6
			// gateway, the pod its address and default route.
			check(node.addr(p.NodeIface, netip.PrefixFrom(PodGatewayIPv6, 64)))
			if p.IPv6.IsValid() {
				check(node.route(route{dst: netip.PrefixFrom(p.IPv6, 128), dev: p.NodeIface, src: l.NodeIPv6}))
				check(pns.addr("eth0", netip.PrefixFrom(p.IPv6, 128)))
			}
			check(pns.route(route{gw: PodGatewayIPv6, dev: "eth0"}))
		}
	}
	var need []*PodNS
	for _, p := range l.Pods {
		if !p.NoEcho {
			need = append(need, p)
		}
	}
	if len(need) > 0 {
		// Start every echo server, then wait for each: they start
		// side by side.
		bin := EchoBinary(t)
		procs := make([]*Process, len(need))
		for i, p := range need {
			procs[i] = l.Start(p.NS, bin, "-name", p.Name, "-tcp", joinPorts(p.TCPPorts), "-udp", joinPorts(p.UDPPorts))
		}
		for i, p := range need {
			if err := procs[i].WaitFor("READY", 20*time.Second); err != nil {
				t.Fatalf("lab: echo server in pod %s: %v", p.Name, err)
			}
		}
	}
	return l
}

// RequireRoot skips t unless it runs as root, and fails it when the ip tool
// is missing.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespace lab needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("lab: the ip tool (iproute2) is required: %v", err)
	}
}

// ipv6Sysctls are a dual-stack namespace's IPv6 settings: IPv6 on,
// duplicate address detection off (set before its links exist, so they
// inherit it), and forwarding as given ("1" for the node).
func ipv6Sysctls(forwarding string) map[string]string {
	return map[string]string{
		"net/ipv6/conf/all/disable_ipv6":     "0",
		"net/ipv6/conf/default/disable_ipv6": "0",
		"net/ipv6/conf/all/accept_dad":       "0",
		"net/ipv6/conf/default/accept_dad":   "0",
		"net/ipv6/conf/all/forwarding":       forwarding,
	}
}

func joinPorts(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ",")
}

func run(args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Pod returns the pod namespace with the given pod name, or fails the test.
func (l *Lab) Pod(name string) *PodNS {
	l.t.Helper()
	for _, p := range l.Pods {
		if p.Name == name {
			return p
		}
	}
	l.t.Fatalf("lab: no pod %q", name)
	return nil
}

// Exec runs a command inside namespace ns (through `ip netns exec`) and
// returns its standard output; the error includes standard error.
func (l *Lab) Exec(ns string, args ...string) (string, error) {
	return run(append([]string{"ip", "netns", "exec", ns}, args...)...)
}

// MustExec is Exec that fails the test on error.
func (l *Lab) MustExec(ns string, args ...string) string {
	l.t.Helper()
	out, err := l.Exec(ns, args...)
	if err != nil {
		l.t.Fatalf("lab: %v", err)
	}
	return out
}

// Namespaces returns the names of every namespace of the lab.
func (l *Lab) Namespaces() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.nsList...)
}

func (l *Lab) cleanup() {
	l.mu.Lock()
	procs, nss := l.procs, l.nsList
	l.procs, l.nsList = nil, nil
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop()
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if err := deleteNS(nss[i]); err != nil {
			l.t.Errorf("lab cleanup: %v", err)
		}
	}
}

// Process is a command the lab started inside a namespace.
type Process struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer
	lines  chan string
	done   chan struct{}
	err    error
	stopMu sync.Once
}

// Start runs a long-lived command in namespace ns; it is killed (by its PID)
// in the lab's cleanup, before the namespaces are deleted.
func (l *Lab) Start(ns string, args ...string) *Process {
	l.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	p := &Process{cmd: cmd, lines: make(chan string, 64), done: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		l.t.Fatalf("lab: %v", err)
	}
	cmd.Stderr = &lockedWriter{p: p}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("lab: start %s in %s: %v", strings.Join(args, " "), ns, err)
	}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.out.WriteString(line + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- line:
			default:
			}
		}
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p
}

type lockedWriter struct{ p *Process }

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

// PID returns the process id (ip netns exec execs the command, so this is
// the command itself).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Output returns everything the process printed so far (stdout and stderr).
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// WaitFor waits until the process prints a line equal to want on standard
// output, or fails when it exits or the timeout passes.
func (p *Process) WaitFor(want string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		select {
		case line := <-p.lines:
			if strings.TrimSpace(line) == want {
				return nil
			}
		case <-p.done:
			return fmt.Errorf("exited (%v) before printing %q; output: %s", p.err, want, p.Output())
		case <-deadline:
			return fmt.Errorf("no %q after %v; output: %s", want, timeout, p.Output())
		}
	}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Stop kills the process by its PID and waits for it to exit.
func (p *Process) Stop() {
	p.stopMu.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Kill()
		<-p.done
	})
}
