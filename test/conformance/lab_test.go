package conformance

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// TestRealTraffic checks the scenario table with real packets: one lab per
// fixture (scenarios sharing a fixture reuse it), the fixture written to a
// manifest folder, `switchyard --once` run in the node namespace with the
// scenario's flags, then real TCP/UDP requests from each packet's origin.
//
//	sudo go test -v -run TestRealTraffic ./test/conformance/
func TestRealTraffic(t *testing.T) { testRealTraffic(t, "iptables") }

// TestRealTrafficNFTables is TestRealTraffic in nftables mode: the whole
// scenario table, real packets, rules written by the nftables backend.
//
//	sudo go test -v -run TestRealTrafficNFTables ./test/conformance/
func TestRealTrafficNFTables(t *testing.T) { testRealTraffic(t, "nftables") }

func testRealTraffic(t *testing.T, mode string) {
	requireRoot(t)
	switchyardBinary(t)
	var fixtures []string
	byFixture := map[string][]scenarios.Scenario{}
	for _, s := range scenarios.All() {
		if byFixture[s.Fixture] == nil {
			fixtures = append(fixtures, s.Fixture)
		}
		byFixture[s.Fixture] = append(byFixture[s.Fixture], s)
	}
	for _, fx := range fixtures {
		t.Run(strings.TrimSuffix(fx, ".yaml"), func(t *testing.T) {
			group := byFixture[fx]
			if allSCTP(group) {
				t.Skip(realTrafficSkip(scenarios.Packet{Proto: proxier.SCTP}))
			}
			objs, err := group[0].Objects()
			if err != nil {
				t.Fatal(err)
			}
			pods, err := objs.Pods()
			if err != nil {
				t.Fatal(err)
			}
			l := newScenarioLab(t, pods)
			yaml, err := group[0].YAML()
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			writeManifest(t, dir, "objects.yaml", yaml)
			for _, s := range group {
				t.Run(s.Name, func(t *testing.T) {
					if s.IPTablesOnly && mode != "iptables" {
						t.Skipf("%s is an iptables-mode feature (not in upstream's %s mode either)", s.Name, mode)
					}
					runOnceMode(t, l, dir, s.Config, mode)
					for _, p := range s.Packets {
						t.Run(p.Name, func(t *testing.T) {
							if why := realTrafficSkip(p); why != "" {
								t.Skip(why)
							}
							counts, errs := sendAndCheck(l, p, pods)
							if len(errs) > 0 {
								t.Errorf("%v\n  want: %s\n  replies: %s\n  problems:\n    %s",
									p, describe(p.Expect), fmtCounts(counts), strings.Join(errs, "\n    "))
							} else if counts != nil {
								t.Logf("%v: %s", p, fmtCounts(counts))
							}
						})
					}
				})
			}
		})
	}
}

func allSCTP(group []scenarios.Scenario) bool {
	for _, s := range group {
		for _, p := range s.Packets {
			if p.Proto != proxier.SCTP {
				return false
			}
		}
	}
	return true
}

// TestBalancedOverThreePods is issue 3's closing evidence: a real TCP
// client pod connects 30 times to a cluster IP with three ready endpoints
// (and one not-ready one) programmed by `switchyard --once`, and each of
// the three pods answers; the per-pod counts are logged.
//
//	sudo go test -v -run TestBalancedOverThreePods ./test/conformance/
func TestBalancedOverThreePods(t *testing.T) {
	requireRoot(t)
	s, _, l, dir := setupScenario(t, "clusterip-tcp")
	runOnce(t, l, dir, s.Config)

	const n = 30
	counts := map[string]int{}
	client := l.Pod(scenarios.Topology.Client.Name)
	for i := 0; i < n; i++ {
		r, err := l.Dial(client.NS, "tcp", "10.96.0.10:80")
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		if r.Peer.Addr() != client.IP {
			t.Errorf("request %d: %s saw source %v, want the client pod's %v", i+1, r.Name, r.Peer.Addr(), client.IP)
		}
		counts[r.Name]++
	}
	t.Logf("%d TCP connections from pod %s (%v) to 10.96.0.10:80 (default/web:p):", n, client.Name, client.IP)
	for _, name := range []string{"web-1", "web-2", "web-3", "web-4"} {
		t.Logf("  %-6s %2d", name, counts[name])
	}
	for _, name := range []string{"web-1", "web-2", "web-3"} {
		if counts[name] == 0 {
			t.Errorf("ready pod %s got no connection: %s", name, fmtCounts(counts))
		}
	}
	if counts["web-4"] != 0 {
		t.Errorf("not-ready pod web-4 got %d connections", counts["web-4"])
	}
}

func scenarioNamed(t *testing.T, name string) scenarios.Scenario {
	t.Helper()
	for _, s := range scenarios.All() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no scenario %s", name)
	return scenarios.Scenario{}
}

// brokenManifest holds an invalid Service (its cluster IP is no address)
// and a valid one with its slice.
const brokenManifest = `apiVersion: v1
kind: Service
metadata: {name: broken, namespace: default}
spec:
  clusterIP: not-an-ip
  ports: [{name: p, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-b, namespace: default}
spec:
  clusterIP: 10.96.0.11
  clusterIPs: ["10.96.0.11"]
  ipFamilies: [IPv4]
  ports: [{name: p, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-b-1
  namespace: default
  labels: {kubernetes.io/service-name: web-b}
addressType: IPv4
ports: [{name: p, protocol: TCP, port: 8080}]
endpoints:
- addresses: ["10.244.0.4"]
  conditions: {ready: true}
  nodeName: node-a
`

// TestBadServiceSkipped puts an invalid Service among valid ones in the
// manifest folder: switchyard names it in its log and skips it, and both
// valid services still get traffic.
func TestBadServiceSkipped(t *testing.T) {
	requireRoot(t)
	s, _, l, dir := setupScenario(t, "clusterip-tcp")
	writeManifest(t, dir, "more.yaml", []byte(brokenManifest))
	out := runOnce(t, l, dir, s.Config)
	if !strings.Contains(out, "default/broken") {
		t.Errorf("the log does not name the invalid service default/broken:\n%s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "default/broken") {
			t.Logf("switchyard: %s", line)
		}
	}
	if strings.Contains(out, "default/web-b:") || strings.Contains(out, "Service default/web ") {
		t.Errorf("the log complains about a valid service:\n%s", out)
	}
	client := l.Pod(scenarios.Topology.Client.Name)
	for dst, want := range map[string]string{"10.96.0.10:80": "", "10.96.0.11:80": "web-4"} {
		r, err := l.Dial(client.NS, "tcp", dst)
		if err != nil {
			t.Errorf("valid service %s next to an invalid one: %v", dst, err)
			continue
		}
		if want != "" && r.Name != want {
			t.Errorf("%s answered by %s, want %s", dst, r.Name, want)
		}
	}
}

// syncedLine matches the runner's debug line in klog's text format (and
// slog's, as switchyard logged before).
var syncedLine = regexp.MustCompile(`(?:msg=synced|"synced") .*wrote=true`)

// liveSwitchyard is a long-running switchyard watching a manifest folder.
type liveSwitchyard struct {
	t    *testing.T
	proc *lab.Process
}

// waitSync waits until the process logs a sync that wrote rules after
// byte offset mark of its output, and returns the new offset.
func (s *liveSwitchyard) waitSync(mark int, what string) int {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out := s.proc.Output()
		if loc := syncedLine.FindStringIndex(out[mark:]); loc != nil {
			return mark + loc[1]
		}
		select {
		case <-s.proc.Done():
			s.t.Fatalf("switchyard exited while waiting for the sync after %s:\n%s", what, out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.t.Fatalf("no sync within 20s after %s; output:\n%s", what, s.proc.Output())
	return 0
}

// TestLiveManifestChanges runs switchyard as a long-running process on a
// manifest folder and changes the folder under it: after the next sync, a
// removed endpoint gets no traffic, an endpoint made not-ready gets none,
// and an added service answers.
func TestLiveManifestChanges(t *testing.T) {
	requireRoot(t)
	s, pods, l, dir := setupScenario(t, "clusterip-tcp")
	args := append([]string{switchyardBinary(t)}, commonFlags(dir, s.Config)...)
	args = append(args, "--min-sync-period", "100ms", "--sync-period", "30s", "--log-level", "debug")
	sy := &liveSwitchyard{t: t, proc: l.Start(l.Node, args...)}
	mark := sy.waitSync(0, "start")

	client := l.Pod(scenarios.Topology.Client.Name)
	svc := netip.MustParseAddrPort("10.96.0.10:80")
	check := func(step string, dst netip.AddrPort, allowed ...string) {
		t.Helper()
		p := scenarios.Packet{Name: step, Origin: scenarios.FromPod, Proto: proxier.TCP, Dst: dst,
			Expect: scenarios.Expect{Endpoints: allowed}}
		counts, errs := sendAndCheck(l, p, pods)
		if len(errs) > 0 {
			t.Errorf("%s: want %s\n  replies: %s\n  problems:\n    %s", step, describe(p.Expect), fmtCounts(counts), strings.Join(errs, "\n    "))
			return
		}
		t.Logf("%s: %s", step, fmtCounts(counts))
	}
	check("initial", svc, "10.244.0.2:8080", "10.244.0.3:8080", "10.244.1.2:8080")

	// web-2 (10.244.0.3) leaves the slice.
	yaml, err := s.YAML()
	if err != nil {
		t.Fatal(err)
	}
	edited := removeEndpoint(t, string(yaml), "10.244.0.3")
	writeManifest(t, dir, "objects.yaml", []byte(edited))
	mark = sy.waitSync(mark, "removing web-2")
	check("web-2 removed", svc, "10.244.0.2:8080", "10.244.1.2:8080")

	// web-1 (10.244.0.2) turns not ready.
	edited = markNotReady(t, edited, "10.244.0.2")
	writeManifest(t, dir, "objects.yaml", []byte(edited))
	mark = sy.waitSync(mark, "web-1 not ready")
	check("web-1 not ready", svc, "10.244.1.2:8080")

	// A new service appears in a new file, served by web-4.
	if r, err := lab.Dial(client.NS, "tcp", "10.96.0.20:80", failTimeout); err == nil {
		t.Fatalf("10.96.0.20:80 answered (%v) before the service exists", r)
	}
	writeManifest(t, dir, "new.yaml", []byte(newServiceManifest))
	mark = sy.waitSync(mark, "adding default/web-new")
	// The Service and its EndpointSlice reach the proxy as two events, and
	// the first may be synced alone (the service then refuses until the
	// next sync, as with kube-proxy's informers): wait for the sync that
	// makes it answer.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := lab.Dial(client.NS, "tcp", "10.96.0.20:80", failTimeout)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10.96.0.20:80 does not answer 10s after default/web-new was added: %v\nswitchyard output since:\n%s", err, sy.proc.Output()[mark:])
		}
		time.Sleep(50 * time.Millisecond)
	}
	check("web-new added", netip.MustParseAddrPort("10.96.0.20:80"), "10.244.0.4:8080")
}

const newServiceManifest = `apiVersion: v1
kind: Service
metadata: {name: web-new, namespace: default}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: ["10.96.0.20"]
  ipFamilies: [IPv4]
  ports: [{name: p, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-new-1
  namespace: default
  labels: {kubernetes.io/service-name: web-new}
addressType: IPv4
ports: [{name: p, protocol: TCP, port: 8080}]
endpoints:
- addresses: ["10.244.0.4"]
  conditions: {ready: true}
  nodeName: node-a
`

// endpointBlock finds the "- addresses: [\"IP\"]" item of a slice in the
// fixture text and returns its start and end offsets.
func endpointBlock(t *testing.T, text, ip string) (int, int) {
	t.Helper()
	head := fmt.Sprintf("- addresses: [%q]\n", ip)
	start := strings.Index(text, head)
	if start < 0 {
		t.Fatalf("fixture has no endpoint %s", ip)
	}
	end := start + len(head)
	for end < len(text) && strings.HasPrefix(text[end:], "  ") {
		end += strings.IndexByte(text[end:], '\n') + 1
	}
	return start, end
}

func removeEndpoint(t *testing.T, text, ip string) string {
	start, end := endpointBlock(t, text, ip)
	return text[:start] + text[end:]
}

func markNotReady(t *testing.T, text, ip string) string {
	start, end := endpointBlock(t, text, ip)
	block := text[start:end]
	nb := strings.Replace(block, "{ready: true, serving: true, terminating: false}", "{ready: false, serving: false, terminating: false}", 1)
	if nb == block {
		t.Fatalf("endpoint %s: conditions not found in %q", ip, block)
	}
	return text[:start] + nb + text[end:]
}
