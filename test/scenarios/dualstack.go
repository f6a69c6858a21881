package scenarios

// The dual-stack fixture: a manifest and the real-traffic checks every
// proxy mode must pass on it in a dual-stack lab (test/lab's
// Spec.DualStack with DualStackLabPods). Used by test/conformance
// (iptables) and test/ipvs-e2e (IPVS, in the VM).

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/lab"
)

// DualStackManifest is a dual-stack node (node-a: 10.0.0.10 and
// fd00:10::10), a RequireDualStack NodePort Service with an IPv4 and an
// IPv6 EndpointSlice (one endpoint on node-a, one on node-b each), and an
// IPv6-only NodePort Service served by node-b's pod only.
const DualStackManifest = `apiVersion: v1
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

// DualStackClusterCIDRs is the --cluster-cidr of the dual-stack runs.
const DualStackClusterCIDRs = "10.244.0.0/16,fd00:10:244::/56"

// DualStackPod is a pod of the dual-stack lab.
type DualStackPod struct {
	Name     string
	IP, IPv6 netip.Addr
	// Serves: the pod answers on TCP 8080 and UDP 5353.
	Serves bool
}

// DualStackPods are the dual-stack lab's pods: the client (no endpoint)
// and ds-1 (node-a) and ds-2 (node-b, routed in the lab all the same).
var DualStackPods = []DualStackPod{
	{Name: "client", IP: netip.MustParseAddr("10.244.0.100"), IPv6: netip.MustParseAddr("fd00:10:244::100")},
	{Name: "ds-1", IP: netip.MustParseAddr("10.244.0.2"), IPv6: netip.MustParseAddr("fd00:10:244::2"), Serves: true},
	{Name: "ds-2", IP: netip.MustParseAddr("10.244.1.2"), IPv6: netip.MustParseAddr("fd00:10:244:1::2"), Serves: true},
}

// Source a pod must see in a DualStackCheck.
const (
	// SeenKept: the client's own address.
	SeenKept = "kept"
	// SeenMasq: a node address (masqueraded).
	SeenMasq = "masqueraded"
)

// DualStackCheck is one real-traffic check of the dual-stack fixture.
type DualStackCheck struct {
	Name string
	// From is a pod name of DualStackPods (sending from its address of
	// the destination's family), FromNode (the kernel picks the source)
	// or FromOutside (the lab's outside client address of that family).
	From string
	// TCP and UDP are the destinations ("": not checked).
	TCP, UDP string
	// Allowed are the pods that may answer; none: refused.
	Allowed []string
	// Seen is SeenKept or SeenMasq.
	Seen string
	// Sticky: session affinity, one pod answers all.
	Sticky bool
}

// DualStackChecks are the checks on DualStackManifest.
var DualStackChecks = []DualStackCheck{
	{"pod → IPv6 cluster IP", "client", "[fd00:10:96::6:1]:80", "[fd00:10:96::6:1]:53", []string{"ds-1", "ds-2"}, SeenKept, false},
	{"node → IPv6 cluster IP", string(FromNode), "[fd00:10:96::6:1]:80", "[fd00:10:96::6:1]:53", []string{"ds-1", "ds-2"}, SeenMasq, false},
	{"outside → IPv6 node port", string(FromOutside), "[fd00:10::10]:30680", "[fd00:10::10]:30653", []string{"ds-1", "ds-2"}, SeenMasq, false},
	{"outside → IPv6 node port on the gateway address", string(FromOutside), "[2001:db8::1]:30680", "[2001:db8::1]:30653", []string{"ds-1", "ds-2"}, SeenMasq, false},
	{"pod → IPv4 cluster IP", "client", "10.96.6.1:80", "10.96.6.1:53", []string{"ds-1", "ds-2"}, SeenKept, false},
	{"outside → IPv4 node port", string(FromOutside), "10.0.0.10:30680", "10.0.0.10:30653", []string{"ds-1", "ds-2"}, SeenMasq, false},
	{"pod → IPv6-only cluster IP", "client", "[fd00:10:96::6:2]:80", "[fd00:10:96::6:2]:53", []string{"ds-2"}, SeenKept, false},
	{"node → IPv6-only cluster IP", string(FromNode), "[fd00:10:96::6:2]:80", "[fd00:10:96::6:2]:53", []string{"ds-2"}, SeenMasq, false},
	{"outside → IPv6-only node port", string(FromOutside), "[fd00:10::10]:30681", "[fd00:10::10]:30654", []string{"ds-2"}, SeenMasq, false},
	{"hairpin: ds-2 → IPv6-only cluster IP", "ds-2", "[fd00:10:96::6:2]:80", "[fd00:10:96::6:2]:53", []string{"ds-2"}, SeenMasq, false},
	{"pod → IPv6 cluster IP without endpoints", "client", "[fd00:10:96::6:3]:80", "[fd00:10:96::6:3]:53", nil, "", false},
	{"outside → IPv6 eTP Local node port", string(FromOutside), "[fd00:10::10]:30684", "", []string{"ds-1"}, SeenKept, false},
	{"pod → IPv6 cluster IP with session affinity", "client", "[fd00:10:96::6:4]:80", "", []string{"ds-1", "ds-2"}, SeenKept, true},
}

// DualStackLabPods are DualStackPods as lab pods; serving ones get lab's
// echo servers on TCP 8080 and UDP 5353 unless noEcho (the caller serves
// them itself).
func DualStackLabPods(noEcho bool) []lab.Pod {
	var pods []lab.Pod
	for _, p := range DualStackPods {
		lp := lab.Pod{Name: p.Name, IP: p.IP, IPv6: p.IPv6, NoEcho: noEcho || !p.Serves}
		if p.Serves {
			lp.TCPPorts, lp.UDPPorts = []uint16{8080}, []uint16{5353}
		}
		pods = append(pods, lp)
	}
	return pods
}

// dualStackSource returns the namespace and source address (invalid: the
// kernel picks) of a check's From for a destination of that family.
func dualStackSource(l *lab.Lab, from string, v6 bool) (string, netip.Addr) {
	pick := func(a4, a6 netip.Addr) netip.Addr {
		if v6 {
			return a6
		}
		return a4
	}
	switch from {
	case string(FromNode):
		return l.Node, netip.Addr{}
	case string(FromOutside):
		return l.Outside, pick(l.OutsideIP, l.OutsideIPv6)
	}
	p := l.Pod(from)
	return p.NS, pick(p.IP, p.IPv6)
}

// Timeouts of the dual-stack checks.
const (
	// DualStackDialTimeout bounds a request that must be answered.
	DualStackDialTimeout = 3 * time.Second
	// RefuseTimeoutV6 bounds an IPv6 TCP connection expected to be
	// refused. In the lab the ICMPv6 port-unreachable of a REJECT comes
	// back while the client's connect() still holds its socket lock, and
	// Linux's IPv6 TCP then keeps the error as a soft one (nstat:
	// TcpExtLockDroppedIcmps): the connection is refused only when the SYN
	// retransmission, about 1s later, draws a second ICMPv6 error. IPv4
	// aborts at the first one.
	RefuseTimeoutV6 = 4 * time.Second
)

// RunDualStackChecks runs every DualStackCheck (TCP and UDP) as a subtest
// with real requests: 3 when one pod may answer, 20 when several may (each
// must answer at least once), 10 with session affinity (one pod answers
// all); the source each pod saw is checked too.
func RunDualStackChecks(t *testing.T, l *lab.Lab) {
	nodeAddrs := map[netip.Addr]bool{l.NodeIP: true, l.OutsideGW: true, l.NodeIPv6: true, l.OutsideGWv6: true}
	for _, tc := range DualStackChecks {
		for _, proto := range []string{"tcp", "udp"} {
			dst := map[string]string{"tcp": tc.TCP, "udp": tc.UDP}[proto]
			if dst == "" {
				continue
			}
			t.Run(tc.Name+"/"+proto, func(t *testing.T) {
				ns, src := dualStackSource(l, tc.From, strings.HasPrefix(dst, "["))
				if len(tc.Allowed) == 0 {
					if r, err := lab.DialFrom(ns, src, proto, dst, RefuseTimeoutV6); !errors.Is(err, lab.ErrRefused) {
						t.Errorf("%s %s: got %v (answer from %q), want connection refused", proto, dst, err, r.Name)
					}
					return
				}
				n := 3
				switch {
				case tc.Sticky:
					n = 10
				case len(tc.Allowed) > 1:
					n = 20
				}
				counts := map[string]int{}
				for i := 0; i < n; i++ {
					r, err := lab.DialFrom(ns, src, proto, dst, DualStackDialTimeout)
					if err != nil {
						t.Fatalf("request %d to %s: %v", i+1, dst, err)
					}
					pod, peer := r.Name, r.Peer.Addr()
					counts[pod]++
					if !slices.Contains(tc.Allowed, pod) {
						t.Errorf("request %d answered by %s, want one of %v", i+1, pod, tc.Allowed)
					}
					switch {
					case tc.Seen == SeenKept && peer != src:
						t.Errorf("request %d: %s saw source %v, want the client's own %v", i+1, pod, peer, src)
					case tc.Seen == SeenMasq && !nodeAddrs[peer]:
						t.Errorf("request %d: %s saw source %v, want a node address (masqueraded)", i+1, pod, peer)
					}
				}
				switch {
				case tc.Sticky && len(counts) > 1:
					t.Errorf("session affinity: one client reached %s", formatCounts(counts))
				case !tc.Sticky && len(tc.Allowed) > 1 && len(counts) < 2:
					t.Errorf("no spread: %d requests all went to %s", n, formatCounts(counts))
				}
				t.Logf("%s %s: %s", proto, dst, formatCounts(counts))
			})
		}
	}
}

func formatCounts(counts map[string]int) string {
	var parts []string
	for n, c := range counts {
		parts = append(parts, fmt.Sprintf("%s=%d", n, c))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}
