package app

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/conntrack"
	"github.com/switchyard-proxy/switchyard/hostport"
)

func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := Main(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrorsExitTwoWithOneLine(t *testing.T) {
	cases := [][]string{
		{"--proxy-mode", "userspace"},
		{"--no-such-flag"},
		{"--cluster-cidr", "10.0.0.0/33"},
		{"--nodeport-addresses", "10.0.0.1"},
		{"--min-sync-period", "1m", "--sync-period", "30s"},
		{"--iptables-masquerade-bit", "40"},
		{"--healthz-bind-address", "nonsense"},
		{"--config", "/does/not/exist.yaml"},
		{"frobnicate"},
		{"plan", "--hostname-override", "n"},
		{"--service-node-port-range", "40000-30000"},
		{"--once", "--cleanup"},
	}
	for _, args := range cases {
		code, _, stderr := runMain(t, args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		last := lines[len(lines)-1]
		if !strings.HasPrefix(last, "switchyard: ") {
			t.Errorf("%v: last stderr line %q is not the one-line error", args, last)
		}
	}
}

func TestVersionAndHelp(t *testing.T) {
	code, out, _ := runMain(t, "version")
	if code != 0 || !strings.Contains(out, "switchyard v") {
		t.Errorf("version: %d %q", code, out)
	}
	code, _, errOut := runMain(t, "--help")
	if code != 0 || !strings.Contains(errOut, "--proxy-mode") {
		t.Errorf("help: %d %q", code, errOut)
	}
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFileFlagsOverrideAndWarnings(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "config.yaml", `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: 10.244.0.0/16
hostnameOverride: from-config
nodePortAddresses: ["10.0.0.0/8"]
metricsBindAddress: ""
iptables:
  masqueradeAll: true
  masqueradeBit: 15
  syncPeriod: 45s
  minSyncPeriod: 2s
conntrack:
  maxPerCore: 0
  min: 1000
oomScoreAdj: -999
`)
	o := defaultOptions()
	warnings, err := o.loadConfigFile(cfg, map[string]bool{"hostname-override": true})
	if err != nil {
		t.Fatal(err)
	}
	if o.ClusterCIDR != "10.244.0.0/16" || !o.MasqueradeAll || o.MasqueradeBit != 15 ||
		o.SyncPeriod != 45*time.Second || o.MinSyncPeriod != 2*time.Second ||
		len(o.NodePortAddresses) != 1 || o.Conntrack.MaxPerCore != 0 || o.Conntrack.Min != 1000 || o.OOMScoreAdj != -999 {
		t.Errorf("config not applied: %+v", o)
	}
	// kube-proxy's defaulting: an empty metricsBindAddress is the default,
	// not "disabled" (kubeadm's config.conf writes it empty).
	if o.MetricsBindAddress != "127.0.0.1:10249" || o.HealthzBindAddress != "0.0.0.0:10256" {
		t.Errorf("server addresses %q %q", o.HealthzBindAddress, o.MetricsBindAddress)
	}
	if o.HostnameOverride != "" {
		t.Errorf("an explicit flag must win over the config file, got %q", o.HostnameOverride)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings %q", warnings)
	}

	// A typo (an unknown field) is decoded leniently, as kube-proxy does,
	// with a warning naming it; the rest of the file applies.
	bad := writeFile(t, dir, "bad.yaml", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIRD: 10.0.0.0/8\nhealthzBindAddress: 127.0.0.1\nshowHiddenMetricsForVersion: \"1.36\"\nenableProfiling: true\n")
	o = defaultOptions()
	warnings, err = o.loadConfigFile(bad, nil)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(warnings, "\n")
	if len(warnings) != 2 || !strings.Contains(joined, `unknown field "clusterCIRD"`) || !strings.Contains(joined, `"showHiddenMetricsForVersion" has no effect`) || !o.EnableProfiling {
		t.Errorf("warnings %q", warnings)
	}
	if o.HealthzBindAddress != "127.0.0.1:10256" {
		t.Errorf("a bare IP must get the default port, got %q", o.HealthzBindAddress)
	}
	// A wrong type is still an error.
	typeErr := writeFile(t, dir, "type.yaml", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nconntrack: {min: lots}\n")
	if _, err := defaultOptions().loadConfigFile(typeErr, nil); err == nil {
		t.Errorf("a wrong type was accepted")
	}
	wrongKind := writeFile(t, dir, "kind.yaml", "apiVersion: v1\nkind: ConfigMap\n")
	if _, err := defaultOptions().loadConfigFile(wrongKind, nil); err == nil {
		t.Errorf("wrong kind accepted")
	}
}

const demoObjects = `apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 10.0.0.10}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.80
  ports: [{name: http, port: 80, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: demo}
spec:
  clusterIP: 10.96.0.999
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.0.11]
  nodeName: node-a
- addresses: [10.244.0.12]
  conditions: {ready: false}
`

func TestPlanAndRulesCommands(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "objects.yaml", demoObjects)
	code, out, stderr := runMain(t, "plan", "--manifests", dir, "--hostname-override", "node-a")
	if code != 0 {
		t.Fatalf("plan exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"name: demo/web:http/TCP", "clusterIP: 10.96.0.80:80", "nodePort: 30080",
		"10.244.0.11:8080 (ready, local)", "10.244.0.12:8080 (not-ready)",
		"Service demo/broken: cluster IP \"10.96.0.999\" is not a valid IP address",
		"- 10.0.0.10",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q:\n%s", want, out)
		}
	}
	code, out, stderr = runMain(t, "rules", "--manifests", dir, "--hostname-override", "node-a")
	if code != 0 {
		t.Fatalf("rules exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "-d 10.96.0.80/32 -p tcp") && !strings.Contains(out, "-d 10.96.0.80 -p tcp") {
		t.Errorf("rules lack the cluster IP rule:\n%s", out)
	}
	if !strings.Contains(out, "--to-destination 10.244.0.11:8080") || strings.Contains(out, "10.244.0.12:8080") {
		t.Errorf("rules must DNAT to the ready endpoint only:\n%s", out)
	}
	if !strings.Contains(stderr, "demo/broken") {
		t.Errorf("rules must warn about the broken service: %s", stderr)
	}
	code, out, stderr = runMain(t, "rules", "--manifests", dir, "--hostname-override", "node-a", "--proxy-mode", "ipvs")
	if code != 0 || !strings.Contains(out, "TCP  10.96.0.80:80 rr") || !strings.Contains(out, "-> 10.244.0.11:8080") || strings.Contains(out, "10.244.0.12:8080") {
		t.Errorf("ipvs rules: exit %d %q\n%s", code, stderr, out)
	}
	code, out, stderr = runMain(t, "rules", "--manifests", dir, "--hostname-override", "node-a", "--proxy-mode", "nftables")
	if code != 0 || !strings.Contains(out, "add element ip switchyard service-ips { 10.96.0.80 . tcp . 80 ") ||
		!strings.Contains(out, "dnat to 10.244.0.11:8080") || strings.Contains(out, "10.244.0.12:8080") {
		t.Errorf("nftables rules: exit %d %q\n%s", code, stderr, out)
	}
}

// Every mode is wrapped with host ports inside conntrack; cleaning another
// mode's leftovers reaches the mode itself, not the shared host ports.
func TestBackendWrapsHostPorts(t *testing.T) {
	o := defaultOptions()
	o.HostPortMode = "off"
	b, err := backendFactory(o, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Skipf("no iptables backend here: %v", err)
	}
	r, ok := b.(*conntrack.Reconciler)
	if !ok {
		t.Fatalf("backend %T, want the conntrack decorator outside", b)
	}
	if _, ok := r.Unwrap().(*hostport.Programmer); !ok {
		t.Fatalf("inside conntrack: %T, want *hostport.Programmer", r.Unwrap())
	}
	if m := modeOnly(b); m.Name() != "iptables" {
		t.Errorf("modeOnly: %T", m)
	} else if _, wrapped := m.(*hostport.Programmer); wrapped {
		t.Error("modeOnly kept the host-port decorator")
	}
}
