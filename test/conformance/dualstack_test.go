package conformance

import (
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// dualStackManifest is a dual-stack node (node-a: 10.0.0.10 and
// fd00:10::10), a RequireDualStack NodePort Service with an IPv4 and an
// IPv6 EndpointSlice (one endpoint on node-a, one on node-b each), and an
// IPv6-only NodePort Service served by node-b's pod only.
const dualStackManifest = `apiVersion: v1
kind: Node
metadata: {name: node-a}
spec:
  podCIDR: 10.244.0.0/24
  podCIDRs: ["10.244.0.0/24", "fd00:10:244::/64"]
status:
  addresses:
  - {type: InternalIP, address: 10.0.0.10}
  - {type: InternalIP, address: "fd00:10::10"}
  - {type: Hostname, address: node-a}
---
apiVersion: v1
kind: Service
metadata: {name: ds, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.6.1
  clusterIPs: ["10.96.6.1", "fd00:10:96::6:1"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  externalTrafficPolicy: Cluster
  ports:
  - {name: t, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30680}
  - {name: u, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30653}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ds-v4
  namespace: default
  labels: {kubernetes.io/service-name: ds}
addressType: IPv4
ports: [{name: t, protocol: TCP, port: 8080}, {name: u, protocol: UDP, port: 5353}]
endpoints:
- addresses: ["10.244.0.2"]
  conditions: {ready: true}
  nodeName: node-a
- addresses: ["10.244.1.2"]
  conditions: {ready: true}
  nodeName: node-b
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ds-v6
  namespace: default
  labels: {kubernetes.io/service-name: ds}
addressType: IPv6
ports: [{name: t, protocol: TCP, port: 8080}, {name: u, protocol: UDP, port: 5353}]
endpoints:
- addresses: ["fd00:10:244::2"]
  conditions: {ready: true}
  nodeName: node-a
- addresses: ["fd00:10:244:1::2"]
  conditions: {ready: true}
  nodeName: node-b
---
apiVersion: v1
kind: Service
metadata: {name: only6, namespace: default}
spec:
  type: NodePort
  clusterIP: "fd00:10:96::6:2"
  clusterIPs: ["fd00:10:96::6:2"]
  ipFamilies: [IPv6]
  ipFamilyPolicy: SingleStack
  ports:
  - {name: t, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30681}
  - {name: u, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30654}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: only6-v6
  namespace: default
  labels: {kubernetes.io/service-name: only6}
addressType: IPv6
ports: [{name: t, protocol: TCP, port: 8080}, {name: u, protocol: UDP, port: 5353}]
endpoints:
- addresses: ["fd00:10:244:1::2"]
  conditions: {ready: true}
  nodeName: node-b
---
apiVersion: v1
kind: Service
metadata: {name: empty6, namespace: default}
spec:
  clusterIP: "fd00:10:96::6:3"
  clusterIPs: ["fd00:10:96::6:3"]
  ipFamilies: [IPv6]
  ports:
  - {name: t, protocol: TCP, port: 80, targetPort: 8080}
  - {name: u, protocol: UDP, port: 53, targetPort: 5353}
---
apiVersion: v1
kind: Service
metadata: {name: local6, namespace: default}
spec:
  type: NodePort
  clusterIP: "fd00:10:96::6:5"
  clusterIPs: ["fd00:10:96::6:5"]
  ipFamilies: [IPv6]
  externalTrafficPolicy: Local
  ports: [{name: t, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30684}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: local6-v6
  namespace: default
  labels: {kubernetes.io/service-name: local6}
addressType: IPv6
ports: [{name: t, protocol: TCP, port: 8080}]
endpoints:
- addresses: ["fd00:10:244::2"]
  conditions: {ready: true}
  nodeName: node-a
- addresses: ["fd00:10:244:1::2"]
  conditions: {ready: true}
  nodeName: node-b
---
apiVersion: v1
kind: Service
metadata: {name: aff6, namespace: default}
spec:
  clusterIP: "fd00:10:96::6:4"
  clusterIPs: ["fd00:10:96::6:4"]
  ipFamilies: [IPv6]
  sessionAffinity: ClientIP
  ports: [{name: t, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: aff6-v6
  namespace: default
  labels: {kubernetes.io/service-name: aff6}
addressType: IPv6
ports: [{name: t, protocol: TCP, port: 8080}]
endpoints:
- addresses: ["fd00:10:244::2"]
  conditions: {ready: true}
  nodeName: node-a
- addresses: ["fd00:10:244:1::2"]
  conditions: {ready: true}
  nodeName: node-b
`

// refuseTimeoutV6 bounds an IPv6 TCP connection expected to be refused. In
// the lab the ICMPv6 port-unreachable of a REJECT comes back while the
// client's connect() still holds its socket lock, and Linux's IPv6 TCP then
// keeps the error as a soft one (nstat: TcpExtLockDroppedIcmps): the
// connection is refused only when the SYN retransmission, about 1s later,
// draws a second ICMPv6 error. IPv4 aborts at the first one.
const refuseTimeoutV6 = 4 * time.Second

// TestDualStackRealTraffic runs `switchyard --once` (iptables mode) in a
// dual-stack lab and checks with real TCP and UDP packets: a pod reaches
// the IPv6 cluster IP with its source kept, the node reaches it, an
// outside client reaches the IPv6 node port (masqueraded), the IPv4 side of
// the same Service still works, an IPv6-only Service answers on its
// cluster IP and node port (hairpin masqueraded), an IPv6 Service without
// endpoints refuses, eTP Local and session affinity hold over IPv6,
// --detect-local-mode NodeCIDR uses the IPv6 pod CIDR, and a Node object
// listing only IPv4 still gets its IPv6 services proxied.
//
//	sudo go test -v -run TestDualStackRealTraffic ./test/conformance/
func TestDualStackRealTraffic(t *testing.T) { testDualStackRealTraffic(t, "iptables") }

// TestDualStackRealTrafficNFTables is TestDualStackRealTraffic in nftables
// mode (tables ip switchyard and ip6 switchyard).
func TestDualStackRealTrafficNFTables(t *testing.T) { testDualStackRealTraffic(t, "nftables") }

func testDualStackRealTraffic(t *testing.T, mode string) {
	requireRoot(t)
	if _, err := exec.LookPath("ip6tables-nft-restore"); err != nil {
		t.Fatalf("ip6tables-nft-restore (Debian package iptables) is required: %v", err)
	}
	ports := []uint16{8080}
	uports := []uint16{5353}
	l := lab.New(t, lab.Spec{
		NodeIP:    scenarios.Topology.NodeIP,
		OutsideIP: scenarios.Topology.OutsideClient,
		OutsideGW: scenarios.Topology.NodeAddrs[1],
		DualStack: true,
		Pods: []lab.Pod{
			{Name: "client", IP: netip.MustParseAddr("10.244.0.100"), IPv6: netip.MustParseAddr("fd00:10:244::100"), NoEcho: true},
			{Name: "ds-1", IP: netip.MustParseAddr("10.244.0.2"), IPv6: netip.MustParseAddr("fd00:10:244::2"), TCPPorts: ports, UDPPorts: uports},
			{Name: "ds-2", IP: netip.MustParseAddr("10.244.1.2"), IPv6: netip.MustParseAddr("fd00:10:244:1::2"), TCPPorts: ports, UDPPorts: uports},
		},
	})
	dir := t.TempDir()
	writeManifest(t, dir, "objects.yaml", []byte(dualStackManifest))
	args := append([]string{"netns", "exec", l.Node, switchyardBinary(t), "--once"}, modeFlags(dir, scenarios.Config{}, mode)...)
	args = append(args, "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56")
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("switchyard --once: %v\n%s", err, out)
	}
	save := l.MustExec(l.Node, "ip6tables-nft-save", "-t", "nat")
	if mode == "nftables" {
		save = l.MustExec(l.Node, "nft", "list", "table", "ip6", "switchyard")
	}
	if !strings.Contains(save, "fd00:10:96::6:1") {
		t.Fatalf("no IPv6 rules for the dual-stack service's cluster IP fd00:10:96::6:1; switchyard said:\n%s\nip6tables-nft-save -t nat:\n%s", out, save)
	}

	client, ds2 := l.Pod("client"), l.Pod("ds-2")
	nodeAddrs := map[netip.Addr]bool{l.NodeIP: true, l.OutsideGW: true, l.NodeIPv6: true, l.OutsideGWv6: true}
	both := []string{"ds-1", "ds-2"}
	const masq = "masqueraded"
	for _, tc := range []struct {
		name    string
		ns      string
		src     netip.Addr // bound source; invalid: the kernel picks
		tcp     string     // TCP destination
		udp     string     // UDP destination ("": TCP only)
		allowed []string   // pods that may answer; none: refused
		seen    string     // source the pod must see: "kept" (the client's own) or masq (a node address)
		sticky  bool       // session affinity: one pod answers all
	}{
		{"pod → IPv6 cluster IP", client.NS, client.IPv6, "[fd00:10:96::6:1]:80", "[fd00:10:96::6:1]:53", both, "kept", false},
		{"node → IPv6 cluster IP", l.Node, netip.Addr{}, "[fd00:10:96::6:1]:80", "[fd00:10:96::6:1]:53", both, masq, false},
		{"outside → IPv6 node port", l.Outside, l.OutsideIPv6, "[fd00:10::10]:30680", "[fd00:10::10]:30653", both, masq, false},
		{"outside → IPv6 node port on the gateway address", l.Outside, l.OutsideIPv6, "[2001:db8::1]:30680", "[2001:db8::1]:30653", both, masq, false},
		{"pod → IPv4 cluster IP", client.NS, client.IP, "10.96.6.1:80", "10.96.6.1:53", both, "kept", false},
		{"outside → IPv4 node port", l.Outside, l.OutsideIP, "10.0.0.10:30680", "10.0.0.10:30653", both, masq, false},
		{"pod → IPv6-only cluster IP", client.NS, client.IPv6, "[fd00:10:96::6:2]:80", "[fd00:10:96::6:2]:53", []string{"ds-2"}, "kept", false},
		{"node → IPv6-only cluster IP", l.Node, netip.Addr{}, "[fd00:10:96::6:2]:80", "[fd00:10:96::6:2]:53", []string{"ds-2"}, masq, false},
		{"outside → IPv6-only node port", l.Outside, l.OutsideIPv6, "[fd00:10::10]:30681", "[fd00:10::10]:30654", []string{"ds-2"}, masq, false},
		{"hairpin: ds-2 → IPv6-only cluster IP", ds2.NS, ds2.IPv6, "[fd00:10:96::6:2]:80", "[fd00:10:96::6:2]:53", []string{"ds-2"}, masq, false},
		{"pod → IPv6 cluster IP without endpoints", client.NS, client.IPv6, "[fd00:10:96::6:3]:80", "[fd00:10:96::6:3]:53", nil, "", false},
		{"outside → IPv6 eTP Local node port", l.Outside, l.OutsideIPv6, "[fd00:10::10]:30684", "", []string{"ds-1"}, "kept", false},
		{"pod → IPv6 cluster IP with session affinity", client.NS, client.IPv6, "[fd00:10:96::6:4]:80", "", both, "kept", true},
	} {
		for _, proto := range []string{"tcp", "udp"} {
			dst := map[string]string{"tcp": tc.tcp, "udp": tc.udp}[proto]
			if dst == "" {
				continue
			}
			t.Run(tc.name+"/"+proto, func(t *testing.T) {
				if len(tc.allowed) == 0 {
					if _, err := lab.DialFrom(tc.ns, tc.src, proto, dst, refuseTimeoutV6); !errors.Is(err, lab.ErrRefused) {
						t.Errorf("%s %s: got %v, want connection refused", proto, dst, errOrReply(err))
					}
					return
				}
				allowed := map[string]bool{}
				for _, n := range tc.allowed {
					allowed[n] = true
				}
				n := singleRequests
				switch {
				case tc.sticky:
					n = stickyRequests
				case len(tc.allowed) > 1:
					n = spreadRequests
				}
				counts := map[string]int{}
				for i := 0; i < n; i++ {
					r, err := lab.DialFrom(tc.ns, tc.src, proto, dst, lab.DefaultDialTimeout)
					if err != nil {
						t.Fatalf("request %d to %s: %v", i+1, dst, err)
					}
					counts[r.Name]++
					if !allowed[r.Name] {
						t.Errorf("request %d answered by %s, want one of %v", i+1, r.Name, tc.allowed)
					}
					switch peer := r.Peer.Addr(); {
					case tc.seen == "kept" && peer != tc.src:
						t.Errorf("request %d: %s saw source %v, want the client's own %v", i+1, r.Name, peer, tc.src)
					case tc.seen == masq && !nodeAddrs[peer]:
						t.Errorf("request %d: %s saw source %v, want a node address (masqueraded)", i+1, r.Name, peer)
					}
				}
				switch {
				case tc.sticky && len(counts) > 1:
					t.Errorf("session affinity: one client reached %s", fmtCounts(counts))
				case !tc.sticky && len(tc.allowed) > 1 && len(counts) < 2:
					t.Errorf("no spread: %d requests all went to %s", n, fmtCounts(counts))
				}
				t.Logf("%s %s: %s", proto, dst, fmtCounts(counts))
			})
		}
	}

	// --detect-local-mode NodeCIDR takes the IPv6 pod CIDR from the Node's
	// spec.podCIDRs: the client (fd00:10:244::100, inside fd00:10:244::/64)
	// keeps its source, node-b's pod ds-2 (fd00:10:244:1::2) is masqueraded.
	t.Run("NodeCIDR", func(t *testing.T) {
		args := append([]string{"netns", "exec", l.Node, switchyardBinary(t), "--once"}, modeFlags(dir, scenarios.Config{}, mode)...)
		args = append(args, "--detect-local-mode", "NodeCIDR")
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("switchyard --once --detect-local-mode NodeCIDR: %v\n%s", err, out)
		}
		for _, c := range []struct {
			p      *lab.PodNS
			masked bool
		}{{client, false}, {ds2, true}} {
			for i := 0; i < singleRequests; i++ {
				r, err := lab.DialFrom(c.p.NS, c.p.IPv6, "tcp", "[fd00:10:96::6:1]:80", lab.DefaultDialTimeout)
				if err != nil {
					t.Fatalf("%s → [fd00:10:96::6:1]:80: %v", c.p.Name, err)
				}
				kept := r.Peer.Addr() == c.p.IPv6
				if kept == c.masked || (c.masked && !nodeAddrs[r.Peer.Addr()]) {
					t.Errorf("%s → [fd00:10:96::6:1]:80: %s saw source %v; want masqueraded %v", c.p.Name, r.Name, r.Peer.Addr(), c.masked)
				}
			}
		}
	})

	// Families come from what the kernel can proxy, not from the Node's
	// addresses (issue 8 item 7): with a Node object that lists only its
	// IPv4 address and IPv4 pod CIDR, the IPv6 cluster IP and node port
	// are still served.
	t.Run("IPv4-only Node object", func(t *testing.T) {
		v4node := strings.Replace(dualStackManifest, "  - {type: InternalIP, address: \"fd00:10::10\"}\n", "", 1)
		v4node = strings.Replace(v4node, `podCIDRs: ["10.244.0.0/24", "fd00:10:244::/64"]`, `podCIDRs: ["10.244.0.0/24"]`, 1)
		if v4node == dualStackManifest || strings.Contains(v4node, `"fd00:10::10"`) {
			t.Fatal("could not remove the Node's IPv6 address from the manifest")
		}
		writeManifest(t, dir, "objects.yaml", []byte(v4node))
		// Start from a clean node, so no IPv6 rule of the runs above
		// answers in place of this one's.
		if out, err := exec.Command("ip", "netns", "exec", l.Node, switchyardBinary(t), "--cleanup", "--iptables-backend", "nft").CombinedOutput(); err != nil {
			t.Fatalf("switchyard --cleanup: %v\n%s", err, out)
		}
		if save := l.MustExec(l.Node, "ip6tables-nft-save", "-t", "nat"); strings.Contains(save, "SWY-") {
			t.Fatalf("IPv6 rules left after --cleanup:\n%s", save)
		}
		args := append([]string{"netns", "exec", l.Node, switchyardBinary(t), "--once"}, modeFlags(dir, scenarios.Config{}, mode)...)
		args = append(args, "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56")
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("switchyard --once: %v\n%s", err, out)
		}
		for _, c := range []struct {
			ns       string
			src      netip.Addr
			dst      string
			wantSeen netip.Addr // invalid: a node address
		}{
			{client.NS, client.IPv6, "[fd00:10:96::6:1]:80", client.IPv6},
			{l.Outside, l.OutsideIPv6, "[fd00:10::10]:30680", netip.Addr{}},
		} {
			r, err := lab.DialFrom(c.ns, c.src, "tcp", c.dst, lab.DefaultDialTimeout)
			if err != nil {
				t.Errorf("%s with an IPv4-only Node object: %v", c.dst, err)
				continue
			}
			if peer := r.Peer.Addr(); (c.wantSeen.IsValid() && peer != c.wantSeen) || (!c.wantSeen.IsValid() && !nodeAddrs[peer]) {
				t.Errorf("%s: %s saw source %v", c.dst, r.Name, peer)
			}
		}
	})
}
