package app

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kpconfig "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// kubeProxyFlags are kube-proxy v1.37.2's flags (cmd/kube-proxy/app
// options.go's AddFlags, component-base's logging flags, --version and
// -h), each with a value it accepts. Every one must parse.
var kubeProxyFlags = map[string]string{
	"config": "", "write-config-to": "", "cleanup": "false", "feature-gates": "AllAlpha=false",
	"kubeconfig": "/k", "master": "https://127.0.0.1:6443", "kube-api-content-type": "application/json",
	"kube-api-burst": "20", "kube-api-qps": "7.5", "hostname-override": "node-a", "bind-address": "0.0.0.0",
	"healthz-bind-address": "0.0.0.0:10256", "metrics-bind-address": "127.0.0.1:10249",
	"bind-address-hard-fail": "false", "profiling": "true", "show-hidden-metrics-for-version": "1.36",
	"init-only": "false", "proxy-mode": "iptables", "iptables-masquerade-bit": "14", "masquerade-all": "true",
	"iptables-localhost-nodeports": "false", "iptables-sync-period": "31s", "iptables-min-sync-period": "2s",
	"ipvs-sync-period": "32s", "ipvs-min-sync-period": "3s", "ipvs-scheduler": "rr",
	"ipvs-exclude-cidrs": "10.0.0.0/8", "ipvs-strict-arp": "true", "ipvs-tcp-timeout": "1m",
	"ipvs-tcpfin-timeout": "5s", "ipvs-udp-timeout": "10s", "detect-local-mode": "NodeCIDR",
	"pod-bridge-interface": "cbr0", "pod-interface-name-prefix": "veth", "cluster-cidr": "10.244.0.0/16",
	"nodeport-addresses": "primary", "oom-score-adj": "-998", "conntrack-max-per-core": "131072",
	"conntrack-min": "1000", "conntrack-tcp-timeout-established": "1h", "conntrack-tcp-timeout-close-wait": "30m",
	"conntrack-tcp-be-liberal": "true", "conntrack-udp-timeout": "30s", "conntrack-udp-timeout-stream": "2m",
	"config-sync-period": "10m", "healthz-port": "10256", "metrics-port": "10249",
	"logging-format": "text", "log-flush-frequency": "5s", "v": "2", "vmodule": "foo=3",
	"log-text-split-stream": "false", "log-text-info-buffer-size": "0", "log-json-split-stream": "false",
	"log-json-info-buffer-size": "0",
}

// writeConfigArgs runs switchyard with args plus --write-config-to (which
// exits after parsing and validation) and returns the written config.
func writeConfigArgs(t *testing.T, args ...string) (*kpconfig.KubeProxyConfiguration, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.yaml")
	code, _, stderr := runMain(t, append(args, "--write-config-to", out)...)
	if code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var c kpconfig.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		t.Fatalf("written config: %v\n%s", err, b)
	}
	return &c, stderr
}

func TestEveryKubeProxyFlagParses(t *testing.T) {
	for name, val := range kubeProxyFlags {
		if name == "write-config-to" || name == "config" {
			continue
		}
		for _, spelling := range []string{name, strings.ReplaceAll(name, "-", "_")} {
			_, stderr := writeConfigArgs(t, "--"+spelling+"="+val)
			warns := strings.Count(stderr, "has no effect in switchyard")
			_, noEffect := noEffectFlags[name]
			if (noEffect && warns != 1) || (!noEffect && warns != 0) {
				t.Errorf("--%s: %d no-effect warnings, want exactly one for a flag without effect:\n%s", spelling, warns, stderr)
			}
		}
	}
	// Boolean and version flags also parse bare.
	for _, f := range []string{"--masquerade-all", "--ipvs-strict-arp", "--conntrack-tcp-be-liberal", "--alsologtostderr", "--logtostderr", "-v=4"} {
		writeConfigArgs(t, f)
	}
	code, out, _ := runMain(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "switchyard v") {
		t.Errorf("--version: %d %q", code, out)
	}
	// klog's removed file flags (k3s's optional log_file, older kops).
	_, stderr := writeConfigArgs(t, "--log_file=/var/log/kube-proxy.log", "--alsologtostderr")
	if strings.Count(stderr, "has no effect") != 2 {
		t.Errorf("removed klog flags: %s", stderr)
	}
}

func TestKubeProxyFlagMeanings(t *testing.T) {
	c, _ := writeConfigArgs(t, "--iptables-sync-period=31s", "--iptables-min-sync-period=2s", "--ipvs-sync-period=99s",
		"--healthz-bind-address=127.0.0.1", "--metrics_port=0", "--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0s", "--iptables-localhost-nodeports=false",
		"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0", "--kube-api-qps=7.5", "--oom-score-adj=-998")
	if c.IPTables.SyncPeriod.Duration != 31*time.Second || c.IPTables.MinSyncPeriod.Duration != 2*time.Second {
		t.Errorf("iptables periods %v %v", c.IPTables.SyncPeriod, c.IPTables.MinSyncPeriod)
	}
	if c.HealthzBindAddress != "127.0.0.1:10256" || c.MetricsBindAddress != "" {
		t.Errorf("addresses %q %q", c.HealthzBindAddress, c.MetricsBindAddress)
	}
	if *c.Conntrack.MaxPerCore != 0 || c.Conntrack.TCPEstablishedTimeout.Duration != 0 || *c.Conntrack.Min != 131072 {
		t.Errorf("conntrack %+v", c.Conntrack)
	}
	if *c.IPTables.LocalhostNodePorts || c.DetectLocalMode != "BridgeInterface" || c.DetectLocal.BridgeInterface != "cbr0" ||
		c.ClientConnection.QPS != 7.5 || *c.OOMScoreAdj != -998 {
		t.Errorf("config %+v", c)
	}
	// In ipvs mode the ipvs periods apply; an explicit --sync-period wins.
	c, _ = writeConfigArgs(t, "--proxy-mode=ipvs", "--iptables-sync-period=31s", "--ipvs-sync-period=42s", "--ipvs-min-sync-period=0s")
	if c.IPVS.SyncPeriod.Duration != 42*time.Second || c.IPVS.MinSyncPeriod.Duration != 0 {
		t.Errorf("ipvs periods %v %v", c.IPVS.SyncPeriod, c.IPVS.MinSyncPeriod)
	}
	c, _ = writeConfigArgs(t, "--iptables-sync-period=31s", "--sync-period=50s")
	if c.IPTables.SyncPeriod.Duration != 50*time.Second {
		t.Errorf("--sync-period must win: %v", c.IPTables.SyncPeriod)
	}
	// The deprecated port flag completes a bare IP.
	c, _ = writeConfigArgs(t, "--healthz-bind-address=127.0.0.1", "--healthz-port=12345")
	if c.HealthzBindAddress != "127.0.0.1:12345" {
		t.Errorf("healthz %q", c.HealthzBindAddress)
	}
	// nodePortAddresses keywords.
	writeConfigArgs(t, "--nodeport-addresses=all")
	writeConfigArgs(t, "--nodeport-addresses=localhost,10.0.0.0/8")
}

func TestKubeProxyFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--detect-local-mode=Bogus"},
		{"--detect-local-mode=BridgeInterface"},
		{"--detect-local-mode=InterfaceNamePrefix"},
		{"--oom-score-adj=-1001"},
		{"--conntrack-min=-1"},
		{"--bind-address=nope"},
		{"--feature-gates=Foo"},
		{"--logging-format=xml"},
		{"--ipvs-exclude-cidrs=10.0.0.1"},
		{"--hostport-mode=maybe"},
		{"--v=x"},
	} {
		code, _, stderr := runMain(t, args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, stderr)
		}
		if !strings.Contains(stderr, "switchyard: ") {
			t.Errorf("%v: no one-line error: %s", args, stderr)
		}
	}
	_, _, stderr := runMain(t, "--detect-local-mode=Bogus")
	if !strings.Contains(stderr, "ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix") {
		t.Errorf("detect-local-mode error: %s", stderr)
	}
}

func TestLogFormats(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "c.yaml", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nshowHiddenMetricsForVersion: \"1.36\"\n")
	_, _, stderr := runMain(t, "--config", cfg, "--write-config-to", filepath.Join(dir, "o.yaml"))
	// klog's text format: a W line with the file and a quoted message.
	var warn string
	for _, l := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(l, "W") {
			warn = l
		}
	}
	if warn == "" || !strings.Contains(warn, "] \"config field") {
		t.Errorf("no klog text warning line in %q", stderr)
	}
	_, _, stderr = runMain(t, "--config", cfg, "--logging-format=json", "--write-config-to", filepath.Join(dir, "o.yaml"))
	if !strings.Contains(stderr, `"msg":"config field`) {
		t.Errorf("no JSON log line in %q", stderr)
	}
}

func TestLogLevelFiltersAndRaisesVerbosity(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "o.yaml")
	_, _, stderr := runMain(t, "--log-level=warn", "--show-hidden-metrics-for-version=1.36", "--write-config-to", out)
	if strings.Contains(stderr, "\nI") || strings.HasPrefix(stderr, "I") || !strings.Contains(stderr, "W") {
		t.Errorf("--log-level=warn: %q", stderr)
	}
	log, _, err := newLogger(newLoggingConfiguration(), "debug", &syncBuffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !log.Enabled(context.Background(), slog.LevelDebug) {
		t.Errorf("--log-level=debug does not enable debug records")
	}
	log, _, _ = newLogger(newLoggingConfiguration(), "info", &syncBuffer{})
	if log.Enabled(context.Background(), slog.LevelDebug) {
		t.Errorf("debug records enabled at -v=0 and --log-level=info")
	}
	c := newLoggingConfiguration()
	c.Verbosity = 4
	log, _, _ = newLogger(c, "info", &syncBuffer{})
	if log.Enabled(context.Background(), slog.LevelDebug) {
		t.Errorf("an explicit --log-level=info must filter debug records even at -v=4")
	}
}

// kubeadm's generated config.conf (testdata/installers) leaves
// healthzBindAddress and metricsBindAddress empty and most fields null or
// zero: kube-proxy's defaults must apply, without warnings.
func TestKubeadmConfigConf(t *testing.T) {
	o := defaultOptions()
	warnings, err := o.loadConfigFile(filepath.Join("testdata", "installers", "kubeadm-config.conf"), map[string]bool{"hostname-override": true})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings on kubeadm's own config: %q", warnings)
	}
	if o.HealthzBindAddress != "0.0.0.0:10256" || o.MetricsBindAddress != "127.0.0.1:10249" {
		t.Errorf("servers %q %q", o.HealthzBindAddress, o.MetricsBindAddress)
	}
	if o.ClusterCIDR != "10.244.0.0/16" || o.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" || o.ProxyMode != ModeIPTables ||
		o.SyncPeriod != 30*time.Second || o.MinSyncPeriod != time.Second || o.MasqueradeBit != 14 || !o.LocalhostNodePorts ||
		o.Conntrack.MaxPerCore != 32768 || o.Conntrack.Min != 131072 || o.Conntrack.TCPEstablishedTimeout != 24*time.Hour ||
		o.OOMScoreAdj != -999 || o.KubeAPIQPS != 5 || o.KubeAPIBurst != 10 {
		t.Errorf("kubeadm config did not get kube-proxy's defaults: %+v", o)
	}
	if _, err := o.validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
	// nodePortAddresses keywords in the file.
	dir := t.TempDir()
	cfg := writeFile(t, dir, "np.yaml", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnodePortAddresses: [all]\nhealthzBindAddress: \"::\"\nbindAddress: \"::\"\n")
	o = defaultOptions()
	if _, err := o.loadConfigFile(cfg, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := o.validate(); err != nil {
		t.Errorf("nodePortAddresses [all]: %v", err)
	}
	if o.HealthzBindAddress != "[::]:10256" || o.MetricsBindAddress != "[::1]:10249" {
		t.Errorf("IPv6 defaults %q %q", o.HealthzBindAddress, o.MetricsBindAddress)
	}
}
