package ipvse2e

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// The live test's pods: a and b on this node, c on node-b (routed in the
// lab all the same).
var (
	podA = scenarios.Pod{Name: "pod-a", IP: netip.MustParseAddr("10.244.0.11"), Node: "node-a"}
	podB = scenarios.Pod{Name: "pod-b", IP: netip.MustParseAddr("10.244.0.12"), Node: "node-a"}
	podC = scenarios.Pod{Name: "pod-c", IP: netip.MustParseAddr("10.244.1.13"), Node: "node-b"}
)

const liveNode = `apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.244.0.0/24, podCIDRs: ["10.244.0.0/24"]}
status:
  addresses:
  - {type: InternalIP, address: 10.0.0.10}
`

// liveServices are the live test's Services:
//   - web: NodePort 30100 (TCP 80 → 8080) and 30101 (UDP 53 → 5353), an
//     external IP, the default scheduler (rr);
//   - hash: cluster IP with the annotation switchyard.io/ipvs-scheduler: sh;
//   - long: TCP 9000 to long-lived line servers (graceful termination);
//   - local: NodePort 30102 with externalTrafficPolicy Local.
const liveServices = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.10.1
  clusterIPs: ["10.96.10.1"]
  ipFamilies: [IPv4]
  externalIPs: ["198.51.100.50"]
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30100}
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30101}
---
apiVersion: v1
kind: Service
metadata:
  name: hash
  namespace: default
  annotations: {switchyard.io/ipvs-scheduler: sh}
spec:
  clusterIP: 10.96.10.2
  clusterIPs: ["10.96.10.2"]
  ipFamilies: [IPv4]
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: long, namespace: default}
spec:
  clusterIP: 10.96.10.3
  clusterIPs: ["10.96.10.3"]
  ipFamilies: [IPv4]
  ports: [{name: p, protocol: TCP, port: 9000, targetPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  clusterIP: 10.96.10.4
  clusterIPs: ["10.96.10.4"]
  ipFamilies: [IPv4]
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30102}]
`

// slice renders an EndpointSlice of service with ready endpoints pods.
func slice(service string, ports string, pods ...scenarios.Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s-1\n  namespace: default\n"+
		"  labels: {kubernetes.io/service-name: %s}\naddressType: IPv4\nports: %s\nendpoints:", service, service, ports)
	if len(pods) == 0 {
		b.WriteString(" []")
	}
	b.WriteString("\n")
	for _, p := range pods {
		fmt.Fprintf(&b, "- addresses: [%q]\n  conditions: {ready: true, serving: true, terminating: false}\n  nodeName: %s\n", p.IP, p.Node)
	}
	return b.String()
}

// liveManifest is the whole folder content with the given endpoints of web
// and long.
func liveManifest(web, long []scenarios.Pod) []byte {
	httpPort := `[{name: http, protocol: TCP, port: 8080}]`
	return []byte(liveNode + "---\n" + liveServices +
		slice("web", `[{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 5353}]`, web...) +
		slice("hash", httpPort, podA, podB, podC) +
		slice("long", `[{name: p, protocol: TCP, port: 9000}]`, long...) +
		slice("local", httpPort, podA, podC))
}

// TestLive runs switchyard in IPVS mode as a long-running process in the
// lab's node namespace and changes its manifest folder under it. In order:
// the state after the first sync (ipvsadm, real traffic: spread, the sh
// scheduler from the annotation, node ports, an external IP, eTP Local from
// outside, from a pod and from the node); a periodic sync with nothing to
// do writes nothing; graceful termination of a removed endpoint with an
// open connection; a restart with a weight-0 real server that is desired
// again (kubernetes#92019); the real server's removal once its connection
// is closed; immediate removal of idle TCP and UDP real servers; and
// `switchyard --cleanup`, which leaves a foreign virtual server alone.
func TestLive(t *testing.T) {
	requireIPVS(t)
	l := liveLab(t)
	client := l.Pod(scenarios.Topology.Client.Name)
	outside, nodeIP := scenarios.Topology.OutsideClient, scenarios.Topology.NodeIP
	all := []scenarios.Pod{podA, podB, podC}
	dir := t.TempDir()
	writeManifest(t, dir, "live.yaml", liveManifest(all, []scenarios.Pod{podA, podB}))
	// A foreign virtual server: switchyard must never touch it.
	l.MustExec(l.Node, "ipvsadm", "-A", "-t", "172.30.0.1:8080", "-s", "wlc")
	l.MustExec(l.Node, "ipvsadm", "-a", "-t", "172.30.0.1:8080", "-r", "10.244.0.11:8080", "-m")
	const foreign = "TCP 172.30.0.1:8080 wlc"
	cfg := scenarios.Config{ClusterCIDRs: []netip.Prefix{scenarios.Topology.ClusterCIDR}}
	extra := []string{"--sync-period", "3s"}
	sy := startLive(t, l, dir, cfg, extra...)
	abc := []string{podA.Name, podB.Name, podC.Name}

	t.Run("first sync", func(t *testing.T) {
		vs := ipvsadm(t, l, l.Node)
		for head, n := range map[string]int{
			"TCP 10.96.10.1:80 rr": 3, "UDP 10.96.10.1:53 rr": 3, "TCP 10.0.0.10:30100 rr": 3,
			"TCP 192.0.2.1:30100 rr": 3, "UDP 10.0.0.10:30101 rr": 3, "TCP 198.51.100.50:80 rr": 3,
			"TCP 10.96.10.2:80 sh": 3, "TCP 10.96.10.3:9000 rr": 2, "TCP 10.96.10.4:80 rr": 2,
			"TCP 10.0.0.10:30102 rr": 1, "TCP 192.0.2.1:30102 rr": 1, foreign: 1,
		} {
			if v := vs[head]; v == nil || len(v.Dests) != n {
				t.Errorf("ipvsadm -Ln: want %q with %d real servers; got:\n  %s", head, n, strings.Join(shape(vs), "\n  "))
			}
		}
		c, _ := requests(t, client.NS, netip.Addr{}, proxier.TCP, "10.96.10.1:80", spreadRequests)
		expectPods(t, "pod → TCP cluster IP (rr)", c, abc, true, false)
		c, _ = requests(t, client.NS, netip.Addr{}, proxier.UDP, "10.96.10.1:53", spreadRequests)
		expectPods(t, "pod → UDP cluster IP (rr)", c, abc, true, false)
		c, peers := requests(t, l.Outside, outside, proxier.TCP, "10.0.0.10:30100", spreadRequests)
		expectPods(t, "outside → TCP node port", c, abc, true, false)
		for p := range peers {
			if !slices.Contains(scenarios.Topology.NodeAddrs, p) {
				t.Errorf("outside → node port: a pod saw source %v, want a node address (masqueraded)", p)
			}
		}
		c, _ = requests(t, l.Outside, outside, proxier.UDP, "192.0.2.1:30101", spreadRequests)
		expectPods(t, "outside → UDP node port on the gateway address", c, abc, true, false)
		c, _ = requests(t, l.Outside, outside, proxier.TCP, "198.51.100.50:80", spreadRequests)
		expectPods(t, "outside → external IP", c, abc, true, false)

		// The sh scheduler (annotation): one endpoint per client.
		c, _ = requests(t, client.NS, netip.Addr{}, proxier.TCP, "10.96.10.2:80", stickyRequests)
		expectPods(t, "pod → sh service", c, abc, false, true)
		c, _ = requests(t, l.Node, nodeIP, proxier.TCP, "10.96.10.2:80", stickyRequests)
		expectPods(t, "node → sh service", c, abc, false, true)

		// eTP Local: outside clients reach local endpoints only, source
		// kept; pods and the node reach every endpoint (kubernetes#71596).
		for _, dst := range []string{"10.0.0.10:30102", "192.0.2.1:30102"} {
			c, peers = requests(t, l.Outside, outside, proxier.TCP, dst, singleRequests)
			expectPods(t, "outside → eTP Local node port "+dst, c, []string{podA.Name}, false, false)
			if len(peers) != 1 || !peers[outside] {
				t.Errorf("outside → eTP Local node port %s: pods saw sources %v, want only the client's %v", dst, peers, outside)
			}
		}
		c, peers = requests(t, client.NS, netip.Addr{}, proxier.TCP, "10.0.0.10:30102", spreadRequests)
		expectPods(t, "pod → eTP Local node port", c, []string{podA.Name, podC.Name}, true, false)
		if len(peers) != 1 || !peers[client.IP] {
			t.Errorf("pod → eTP Local node port: pods saw sources %v, want the client pod's %v", peers, client.IP)
		}
		c, _ = requests(t, l.Node, nodeIP, proxier.TCP, "10.0.0.10:30102", spreadRequests)
		expectPods(t, "node → its own eTP Local node port", c, []string{podA.Name, podC.Name}, true, false)
	})

	t.Run("idle sync writes nothing", func(t *testing.T) {
		before, rulesBefore, setsBefore := shape(ipvsadm(t, l, l.Node)), iptablesSave(t, l), ipsetAdds(t, l, l.Node)
		// rtnetlink events of the node namespace (swy-ipvs0 and its
		// addresses) while switchyard runs its periodic syncs.
		mon := l.Start(l.Node, "ip", "-o", "monitor", "link", "address")
		var logs []string
		for i := 0; i < 2; i++ {
			logs = append(logs, sy.waitSync("idle", false))
		}
		seg := strings.Join(logs, "\n")
		if strings.Contains(seg, "wrote=true") || strings.Contains(seg, "\"ipvs sync\"") {
			t.Errorf("a periodic sync with nothing to do wrote to the kernel:\n%s", seg)
		}
		// Prove the monitor listens: a change of our own must show up, and
		// be the only event.
		l.MustExec(l.Node, "ip", "addr", "add", "127.0.0.42/8", "dev", "lo")
		defer l.MustExec(l.Node, "ip", "addr", "del", "127.0.0.42/8", "dev", "lo")
		poll(t, "ip monitor sees a test address", 20*time.Second, func() string {
			if strings.Contains(mon.Output(), "127.0.0.42") {
				return ""
			}
			return "no event yet: " + mon.Output()
		})
		mon.Stop()
		for _, line := range strings.Split(strings.TrimSpace(mon.Output()), "\n") {
			if !strings.Contains(line, "127.0.0.42") {
				t.Errorf("rtnetlink event during idle syncs: %s", line)
			}
		}
		if after := shape(ipvsadm(t, l, l.Node)); !slices.Equal(before, after) {
			t.Errorf("ipvsadm -Ln changed during idle syncs:\n  %s", strings.Join(diffLines(before, after), "\n  "))
		}
		if after := iptablesSave(t, l); after != rulesBefore {
			t.Errorf("iptables-save changed during idle syncs")
		}
		if after := ipsetAdds(t, l, l.Node); !slices.Equal(setsBefore, after) {
			t.Errorf("ipset members changed during idle syncs:\n  %s", strings.Join(diffLines(setsBefore, after), "\n  "))
		}
		t.Logf("two periodic syncs: %s", seg)
	})

	// issue 9: what switchyard owns, changed by hand, comes back at the
	// next periodic sync (logged at WARN, counted by kind).
	t.Run("drift is repaired by the periodic sync", func(t *testing.T) {
		before, rulesBefore, setsBefore, addrsBefore := shape(ipvsadm(t, l, l.Node)), iptablesSave(t, l), ipsetAdds(t, l, l.Node), dummyAddrs(t, l, l.Node)
		for _, cmd := range [][]string{
			{"ipvsadm", "-D", "-t", "10.96.10.2:80"},                           // a virtual server
			{"ipvsadm", "-d", "-t", "10.96.10.1:80", "-r", "10.244.0.11:8080"}, // a real server
			{"ip", "addr", "del", "10.96.10.4/32", "dev", "swy-ipvs0"},         // an address
			{"ipset", "del", "SWY-CLUSTER-IP", "10.96.10.1,tcp:80"},            // an ipset entry
			{"iptables-nft", "-w", "-t", "nat", "-F", "SWY-IPVS-SERVICES"},     // a chain's rules
			{"iptables-nft", "-w", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "switchyard ipvs services", "-j", "SWY-IPVS-SERVICES"}, // a hook
		} {
			l.MustExec(l.Node, cmd...)
		}
		seg := sy.waitSync("drift", true)
		if !strings.Contains(seg, "changed behind our back; repaired") {
			t.Errorf("no WARN about the repaired drift in:\n%s", seg)
		}
		poll(t, "everything back as written", syncDeadline, func() string {
			if after := shape(ipvsadm(t, l, l.Node)); !slices.Equal(before, after) {
				return "ipvsadm -Ln:\n  " + strings.Join(diffLines(before, after), "\n  ")
			}
			if after := ipsetAdds(t, l, l.Node); !slices.Equal(setsBefore, after) {
				return "ipset:\n  " + strings.Join(diffLines(setsBefore, after), "\n  ")
			}
			if after := dummyAddrs(t, l, l.Node); !slices.Equal(addrsBefore, after) {
				return "swy-ipvs0: " + strings.Join(diffLines(addrsBefore, after), " ")
			}
			if iptablesSave(t, l) != rulesBefore {
				return "iptables-save differs"
			}
			return ""
		})
		c, _ := requests(t, client.NS, netip.Addr{}, proxier.TCP, "10.96.10.2:80", stickyRequests)
		expectPods(t, "pod → repaired sh service", c, abc, false, true)
		c, _ = requests(t, client.NS, netip.Addr{}, proxier.TCP, "10.96.10.1:80", spreadRequests)
		expectPods(t, "pod → repaired TCP cluster IP", c, abc, true, false)
		c, _ = requests(t, l.Outside, outside, proxier.TCP, "10.0.0.10:30100", spreadRequests)
		expectPods(t, "outside → node port after the PREROUTING hook came back", c, abc, true, false)
		t.Logf("repair: %s", seg)
	})

	const long = "TCP 10.96.10.3:9000 rr"
	longDest := func(p scenarios.Pod) string { return p.IP.String() + ":9000" }
	var open *lab.Conn
	var kept, other scenarios.Pod // the endpoint of the open connection, and the other one
	t.Run("graceful termination", func(t *testing.T) {
		var err error
		open, err = lab.DialConn(client.NS, netip.MustParseAddrPort("10.96.10.3:9000"))
		if err != nil {
			t.Fatal(err)
		}
		name, err := open.Ask()
		if err != nil {
			t.Fatal(err)
		}
		kept, other = podA, podB
		if name == podB.Name {
			kept, other = podB, podA
		}
		writeManifest(t, dir, "live.yaml", liveManifest(all, []scenarios.Pod{other}))
		vs := waitIPVS(t, l, "removing "+kept.Name+" from default/long", func(vs map[string]*virtualServer) string {
			if d, ok := findDest(vs, long, longDest(kept)); !ok || d.Weight != 0 || d.Active < 1 {
				return fmt.Sprintf("removed real server %s with an open connection: %+v (present %v), want weight 0 with an active connection", longDest(kept), d, ok)
			}
			return ""
		})
		if d, ok := findDest(vs, long, longDest(other)); !ok || d.Weight != 1 {
			t.Errorf("remaining real server %s: %+v (present %v), want weight 1", longDest(other), d, ok)
		}
		if got, err := open.Ask(); err != nil || got != kept.Name {
			t.Errorf("the open connection to the removed endpoint: answer %q, %v; want %s to keep answering", got, err, kept.Name)
		}
		counts := connect(t, client.NS, "10.96.10.3:9000", 6)
		expectPods(t, "new connections after the removal", counts, []string{other.Name}, false, false)
	})

	t.Run("restart recovers a weight-0 real server (kubernetes#92019)", func(t *testing.T) {
		if open == nil {
			t.Skip("graceful termination failed")
		}
		sy.proc.Stop()
		writeManifest(t, dir, "live.yaml", liveManifest(all, []scenarios.Pod{podA, podB}))
		sy = startLive(t, l, dir, cfg, extra...)
		// The first sync of the new process (startLive waited for it).
		if d, ok := findDest(ipvsadm(t, l, l.Node), long, longDest(kept)); !ok || d.Weight != 1 {
			t.Errorf("after the restart, desired again: %s is %+v (present %v), want weight 1", longDest(kept), d, ok)
		}
		counts := connect(t, client.NS, "10.96.10.3:9000", 6)
		expectPods(t, "new connections after the restart", counts, []string{podA.Name, podB.Name}, true, false)
	})

	t.Run("removed once the connection closes", func(t *testing.T) {
		if open == nil {
			t.Skip("graceful termination failed")
		}
		writeManifest(t, dir, "live.yaml", liveManifest(all, []scenarios.Pod{other}))
		waitIPVS(t, l, "removing "+kept.Name+" again", func(vs map[string]*virtualServer) string {
			if d, ok := findDest(vs, long, longDest(kept)); !ok || d.Weight != 0 {
				return fmt.Sprintf("removed again with the connection open: %+v (present %v), want weight 0", d, ok)
			}
			return ""
		})
		if got, err := open.Ask(); err != nil || got != kept.Name {
			t.Errorf("the open connection: answer %q, %v; want %s", got, err, kept.Name)
		}
		if err := open.CloseRST(); err != nil {
			t.Fatal(err)
		}
		open = nil
		// IPVS expires a reset connection after 10 s; the next periodic
		// sync (3 s) then deletes the real server.
		poll(t, "real server deleted after its last connection", 60*time.Second, func() string {
			if d, ok := findDest(ipvsadm(t, l, l.Node), long, longDest(kept)); ok {
				return fmt.Sprintf("still there: %+v", d)
			}
			return ""
		})
	})

	t.Run("idle real servers go at once", func(t *testing.T) {
		// pod-b leaves web: UDP real servers are deleted at once; TCP ones
		// at once when they have no connection entries, else at weight 0
		// (earlier requests left TIME_WAIT entries).
		writeManifest(t, dir, "live.yaml", liveManifest([]scenarios.Pod{podA, podC}, []scenarios.Pod{other}))
		b := podB.IP.String()
		// The sync applies its IPVS changes one by one: a dump can see the
		// UDP deletions before the TCP update, so both are waited for.
		waitIPVS(t, l, "removing pod-b from default/web", func(vs map[string]*virtualServer) string {
			for _, head := range []string{"UDP 10.96.10.1:53 rr", "UDP 10.0.0.10:30101 rr"} {
				if d, ok := findDest(vs, head, b+":5353"); ok {
					return fmt.Sprintf("%s: UDP real server %s still there: %+v", head, b, d)
				}
			}
			if d, ok := findDest(vs, "TCP 10.96.10.1:80 rr", b+":8080"); ok && (d.Weight != 0 || d.Active+d.Inactive == 0) {
				return fmt.Sprintf("TCP real server %s: %+v, want deleted, or weight 0 while it has connections", b, d)
			}
			return ""
		})
		c, _ := requests(t, client.NS, netip.Addr{}, proxier.UDP, "10.96.10.1:53", spreadRequests)
		expectPods(t, "UDP after the removal", c, []string{podA.Name, podC.Name}, true, false)
		c, _ = requests(t, client.NS, netip.Addr{}, proxier.TCP, "10.96.10.1:80", spreadRequests)
		expectPods(t, "TCP after the removal", c, []string{podA.Name, podC.Name}, true, false)
	})

	t.Run("cleanup", func(t *testing.T) {
		sy.proc.Stop()
		if open != nil {
			_ = open.CloseRST()
		}
		switchyard(t, l, append([]string{"--cleanup"}, flags(dir, cfg)...)...)
		if out, err := l.Exec(l.Node, "ip", "link", "show", "swy-ipvs0"); err == nil {
			t.Errorf("swy-ipvs0 still exists: %s", out)
		}
		vs := ipvsadm(t, l, l.Node)
		if len(vs) != 1 || vs[foreign] == nil || len(vs[foreign].Dests) != 1 {
			t.Errorf("after --cleanup, ipvsadm -Ln must list only the foreign virtual server; got:\n  %s", strings.Join(shape(vs), "\n  "))
		}
		if out := l.MustExec(l.Node, "ipset", "list", "-n"); strings.Contains(out, "SWY-") {
			t.Errorf("ipsets left: %s", out)
		}
		for _, tool := range []string{"iptables-nft-save", "iptables-legacy-save"} {
			if out, err := l.Exec(l.Node, tool); err != nil {
				t.Errorf("%s: %v", tool, err)
			} else if strings.Contains(out, "SWY-") {
				t.Errorf("%s after --cleanup still shows SWY- chains:\n%s", tool, out)
			}
		}
	})

	// A node switches modes iptables → ipvs → iptables (issue 8): each
	// first sync cleans what the other mode left, traffic flows after each
	// step, and the foreign virtual server survives.
	t.Run("mode switch iptables → ipvs → iptables", func(t *testing.T) {
		check := func(mode string) {
			t.Helper()
			c, _ := requests(t, client.NS, netip.Addr{}, proxier.TCP, "10.96.10.1:80", spreadRequests)
			expectPods(t, mode+": pod → TCP cluster IP", c, abc, true, false)
			save := iptablesSave(t, l)
			vs := ipvsadm(t, l, l.Node)
			_, linkErr := l.Exec(l.Node, "ip", "link", "show", "swy-ipvs0")
			sets := l.MustExec(l.Node, "ipset", "list", "-n")
			switch mode {
			case "iptables":
				if strings.Contains(save, "SWY-IPVS-") || linkErr == nil || strings.Contains(sets, "SWY-") || len(vs) != 1 {
					t.Errorf("iptables mode after ipvs: IPVS-mode leftovers (chains %v, swy-ipvs0 %v, sets %q, virtual servers %d)",
						strings.Contains(save, "SWY-IPVS-"), linkErr == nil, sets, len(vs))
				}
			case "ipvs":
				if strings.Contains(save, "SWY-SERVICES") || strings.Contains(save, "SWY-SVC-") {
					t.Errorf("ipvs mode after iptables: iptables-mode chains left:\n%s", save)
				}
			}
			if vs[foreign] == nil {
				t.Errorf("%s: the foreign virtual server is gone", mode)
			}
		}
		runOnce(t, l, dir, cfg, "--proxy-mode", "iptables")
		check("iptables")
		runOnce(t, l, dir, cfg)
		check("ipvs")
		runOnce(t, l, dir, cfg, "--proxy-mode", "iptables")
		check("iptables")
		switchyard(t, l, append([]string{"--cleanup"}, flags(dir, cfg)...)...)
	})
}

// waitIPVS polls the node's `ipvsadm -Ln` until check returns "" (the
// change reached the kernel) and returns that state; it fails the test
// with check's complaint after syncDeadline.
func waitIPVS(t *testing.T, l *lab.Lab, what string, check func(map[string]*virtualServer) string) map[string]*virtualServer {
	t.Helper()
	var vs map[string]*virtualServer
	poll(t, what, syncDeadline, func() string {
		vs = ipvsadm(t, l, l.Node)
		return check(vs)
	})
	return vs
}

// connect opens n TCP connections from ns to dst, asks each once, closes
// each with a reset (no TIME_WAIT entry left in IPVS) and returns the
// per-pod counts.
func connect(t *testing.T, ns, dst string, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		c, err := lab.DialConn(ns, netip.MustParseAddrPort(dst))
		if err != nil {
			t.Errorf("connection %d: %v", i+1, err)
			continue
		}
		name, err := c.Ask()
		_ = c.CloseRST()
		if err != nil {
			t.Errorf("connection %d: %v", i+1, err)
			continue
		}
		counts[name]++
	}
	return counts
}

// iptablesSave returns the node namespace's iptables-nft-save output
// without its comment lines (which carry a timestamp).
func iptablesSave(t *testing.T, l *lab.Lab) string {
	t.Helper()
	var keep []string
	for _, line := range strings.Split(l.MustExec(l.Node, "iptables-nft-save"), "\n") {
		if !strings.HasPrefix(line, "#") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// liveLab builds the live test's lab: the client pod and pods a, b, c with
// echo servers on TCP 8080 and UDP 5353, and line servers on TCP 9000 in a
// and b.
func liveLab(t *testing.T) *lab.Lab {
	t.Helper()
	ports := map[proxier.Protocol][]uint16{proxier.TCP: {8080}, proxier.UDP: {5353}}
	client := scenarios.Topology.Client
	var pods []scenarios.Pod
	for _, p := range []scenarios.Pod{podA, podB, podC} {
		p.Ports = ports
		pods = append(pods, p)
	}
	l := newLab(t, append(pods, client))
	lab.StartLineServer(t, l.Pod(podA.Name).NS, podA.Name, 9000)
	lab.StartLineServer(t, l.Pod(podB.Name).NS, podB.Name, 9000)
	return l
}

// requests sends n requests from ns (source src when valid) to dst and
// returns the per-pod counts and the source addresses the pods saw.
func requests(t *testing.T, ns string, src netip.Addr, proto proxier.Protocol, dst string, n int) (map[string]int, map[netip.Addr]bool) {
	t.Helper()
	counts, peers := map[string]int{}, map[netip.Addr]bool{}
	for i := 0; i < n; i++ {
		r, err := lab.DialFrom(ns, src, proto.Lower(), dst, lab.DefaultDialTimeout)
		if err != nil {
			t.Errorf("%s %s from %s: request %d: %v", proto, dst, ns, i+1, err)
			continue
		}
		counts[r.Name]++
		peers[r.Peer.Addr()] = true
	}
	return counts, peers
}

// expectPods checks that counts came only from allowed pods and, when
// spread is set, from more than one; when sticky is set, from one only.
func expectPods(t *testing.T, what string, counts map[string]int, allowed []string, spread, sticky bool) {
	t.Helper()
	for name := range counts {
		if !slices.Contains(allowed, name) {
			t.Errorf("%s: answered by %s, want one of %v (%s)", what, name, allowed, fmtCounts(counts))
		}
	}
	switch {
	case spread && len(counts) < 2:
		t.Errorf("%s: no spread over %v: %s", what, allowed, fmtCounts(counts))
	case sticky && len(counts) != 1:
		t.Errorf("%s: want one endpoint for one client, got %s", what, fmtCounts(counts))
	}
	t.Logf("%s: %s", what, fmtCounts(counts))
}
