package conformance

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// flowManifest is a service whose endpoints run line servers (long-lived
// TCP flows), and n filler services that make every full sync take a
// while, so that a SIGKILL lands mid-apply.
func flowManifest(n, gen int) []byte {
	var b strings.Builder
	b.WriteString(`apiVersion: v1
kind: Service
metadata: {name: flow, namespace: default}
spec:
  clusterIP: 10.96.0.90
  clusterIPs: ["10.96.0.90"]
  ports: [{name: p, protocol: TCP, port: 90, targetPort: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: flow-1, namespace: default, labels: {kubernetes.io/service-name: flow}}
addressType: IPv4
ports: [{name: p, protocol: TCP, port: 9000}]
endpoints:
- {addresses: ["10.244.0.2"], conditions: {ready: true}, nodeName: node-a, targetRef: {kind: Pod, namespace: default, name: web-1}}
- {addresses: ["10.244.0.3"], conditions: {ready: true}, nodeName: node-a, targetRef: {kind: Pod, namespace: default, name: web-2}}
`)
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata: {name: filler-%d, namespace: default}
spec:
  clusterIP: 10.96.%d.%d
  clusterIPs: ["10.96.%d.%d"]
  ports: [{name: p, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: filler-%d-1, namespace: default, labels: {kubernetes.io/service-name: filler-%d}}
addressType: IPv4
ports: [{name: p, protocol: TCP, port: 8080}]
endpoints:
- {addresses: ["10.244.0.2"], conditions: {ready: true}, nodeName: node-a}
- {addresses: ["10.244.%d.%d"], conditions: {ready: true}, nodeName: node-b}
`, i, 100+i/250, i%250+1, 100+i/250, i%250+1, i, i, 1+gen%2, 10+i%200)
	}
	return []byte(b.String())
}

// TestSIGKILLMidApply kills switchyard with SIGKILL while it applies
// changes (a manifest edit that rewrites hundreds of services, killed at
// several delays after the edit), restarts it each time, and checks that an
// established TCP flow through a cluster IP never stops answering and new
// connections work: a killed apply leaves the previous or the new rules,
// never a half-programmed table, and a restart never blackholes.
func TestSIGKILLMidApply(t *testing.T) {
	requireRoot(t)
	s, _, l, dir := setupScenario(t, "clusterip-tcp")
	lab.StartLineServer(t, l.Pod("web-1").NS, "web-1", 9000)
	lab.StartLineServer(t, l.Pod("web-2").NS, "web-2", 9000)
	const fillers = 250
	writeManifest(t, dir, "objects.yaml", flowManifest(fillers, 0))
	start := func() *liveSwitchyard {
		args := append([]string{switchyardBinary(t)}, commonFlags(dir, s.Config)...)
		args = append(args, "--min-sync-period", "0", "--sync-period", "30s", "--log-level", "debug")
		return &liveSwitchyard{t: t, proc: l.Start(l.Node, args...)}
	}
	sy := start()
	sy.waitSync(0, "start")

	client := l.Pod(scenarios.Topology.Client.Name)
	flow, err := lab.DialConn(client.NS, netip.MustParseAddrPort("10.96.0.90:90"))
	if err != nil {
		t.Fatal(err)
	}
	defer flow.Close()
	first, err := flow.Ask()
	if err != nil {
		t.Fatalf("flow before any kill: %v", err)
	}
	asks := 1
	check := func(when string) {
		t.Helper()
		got, err := flow.Ask()
		if err != nil {
			t.Fatalf("%s: the established flow broke: %v", when, err)
		}
		if got != first {
			t.Fatalf("%s: the established flow moved from %s to %s", when, first, got)
		}
		asks++
		c, err := lab.DialConn(client.NS, netip.MustParseAddrPort("10.96.0.90:90"))
		if err == nil {
			_, err = c.Ask()
			c.Close()
		}
		if err != nil {
			t.Fatalf("%s: a new connection failed: %v", when, err)
		}
	}
	for round, delay := range []time.Duration{0, 20 * time.Millisecond, 60 * time.Millisecond, 150 * time.Millisecond} {
		// Rewrite every filler's remote endpoint, then kill mid-apply.
		tmp := filepath.Join(dir, ".objects.yaml.tmp")
		if err := os.WriteFile(tmp, flowManifest(fillers, round+1), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "objects.yaml")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		sy.proc.Stop() // SIGKILL
		check(fmt.Sprintf("round %d: killed %v after the edit", round, delay))
		sy = start()
		sy.waitSync(0, fmt.Sprintf("restart %d", round))
		check(fmt.Sprintf("round %d: after the restart", round))
	}
	t.Logf("the flow to %s answered %d times across %d SIGKILLs and restarts", first, asks, 4)
}
