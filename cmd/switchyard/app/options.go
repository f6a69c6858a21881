// Package app is switchyard's command line: flags (kube-proxy's names where
// the meaning is the same), the KubeProxyConfiguration file, sub-commands
// and the wiring of sources, tracker, runner and backend. It holds no
// policy: that is the planner's job.
package app

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"
	kpconfig "k8s.io/kube-proxy/config/v1alpha1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/switchyard-proxy/switchyard/internal/nodetune"
	"github.com/switchyard-proxy/switchyard/ipvs"
	"github.com/switchyard-proxy/switchyard/nodeport"
)

// Proxy modes.
const (
	ModeIPTables = "iptables"
	ModeIPVS     = "ipvs"
	ModeNFTables = "nftables"
)

// Options are switchyard's settings, from flags and the config file.
type Options struct {
	ProxyMode          string
	Kubeconfig         string
	Master             string
	HostnameOverride   string
	NodeIPs            []string
	ClusterCIDR        string
	NodePortAddresses  []string
	NodePortRange      string
	MasqueradeAll      bool
	MasqueradeBit      int32
	MinSyncPeriod      time.Duration
	SyncPeriod         time.Duration
	HealthzBindAddress string
	MetricsBindAddress string
	ConfigFile         string
	Cleanup            bool
	Manifests          string
	Once               bool
	ServiceProxyName   string
	IPVSScheduler      string
	IPVSStrictARP      bool
	IPVSGracePeriod    time.Duration
	IPTablesBackend    string
	HostPortMode       string
	LogLevel           string

	// The rest are kube-proxy's flags and config fields that switchyard
	// did not have under its own names.

	// WriteConfigTo writes the effective configuration there and exits.
	WriteConfigTo string
	// InitOnly applies the node settings that need privileges, then exits.
	InitOnly bool
	// CleanupKubeProxy removes upstream kube-proxy's rules, tables, ipsets,
	// virtual servers and kube-ipvs0 after switchyard's first successful
	// sync (taking a node over from kube-proxy).
	CleanupKubeProxy bool
	// FeatureGates is kube-proxy's --feature-gates (no effect here).
	FeatureGates map[string]bool
	// KubeAPIQPS, KubeAPIBurst and KubeAPIContentType shape the API client.
	KubeAPIQPS         float32
	KubeAPIBurst       int32
	KubeAPIContentType string
	// BindAddress is kube-proxy's --bind-address: the node's primary IP
	// when it is not the unspecified address.
	BindAddress string
	// BindAddressHardFail makes a health or metrics port that cannot be
	// bound fatal instead of retried.
	BindAddressHardFail bool
	// EnableProfiling is --profiling (Go's profiles on the metrics address).
	EnableProfiling bool
	// ShowHiddenMetricsForVersion is accepted for compatibility (no effect).
	ShowHiddenMetricsForVersion string
	// quickCleanup: the backend is built to clean another mode's
	// leftovers at start-up, where checking a few chains replaces saving
	// big tables (never for --cleanup).
	quickCleanup bool
	// LocalhostNodePorts is --iptables-localhost-nodeports.
	LocalhostNodePorts bool
	// DetectLocalMode is --detect-local-mode: ClusterCIDR, NodeCIDR,
	// BridgeInterface, InterfaceNamePrefix or empty.
	DetectLocalMode string
	// PodBridgeInterface is --pod-bridge-interface.
	PodBridgeInterface string
	// PodInterfaceNamePrefix is --pod-interface-name-prefix.
	PodInterfaceNamePrefix string
	// The per-mode period flags of kube-proxy, mapped onto SyncPeriod and
	// MinSyncPeriod for the active mode when given.
	IPTablesSyncPeriod, IPTablesMinSyncPeriod time.Duration
	IPVSSyncPeriod, IPVSMinSyncPeriod         time.Duration
	// IPVSExcludeCIDRs is --ipvs-exclude-cidrs: the ipvs backend never
	// deletes virtual servers on addresses inside them.
	IPVSExcludeCIDRs []string
	// IPVSTCPTimeout, IPVSTCPFinTimeout and IPVSUDPTimeout are IPVS's
	// connection timeouts (ipvsadm --set); 0 keeps the kernel's value.
	IPVSTCPTimeout, IPVSTCPFinTimeout, IPVSUDPTimeout time.Duration
	// OOMScoreAdj is written to /proc/self/oom_score_adj at start.
	OOMScoreAdj int32
	// Conntrack holds the --conntrack-* sysctls set at start.
	Conntrack nodetune.Conntrack
	// ConfigSyncPeriod is accepted for compatibility (no effect).
	ConfigSyncPeriod time.Duration
	// HealthzPort and MetricsPort are kube-proxy's deprecated port flags:
	// 0 disables the server; otherwise they complete a bare IP address.
	HealthzPort, MetricsPort int32
	// Logging is component-base's logging configuration (klog flags).
	Logging *logsapi.LoggingConfiguration
	// Version is --version: "", "true", "raw" or a version to report.
	Version string

	// configData is the content of ConfigFile as loaded.
	configData []byte
}

// defaultOptions returns kube-proxy's defaults.
func defaultOptions() *Options {
	return &Options{
		ProxyMode:          ModeIPTables,
		MasqueradeBit:      14,
		MinSyncPeriod:      time.Second,
		SyncPeriod:         30 * time.Second,
		HealthzBindAddress: "0.0.0.0:10256",
		MetricsBindAddress: "127.0.0.1:10249",
		NodePortRange:      "30000-32767",
		IPVSScheduler:      "rr",
		IPTablesBackend:    "auto",
		HostPortMode:       "auto",
		LogLevel:           "info",

		KubeAPIQPS:            5,
		KubeAPIBurst:          10,
		KubeAPIContentType:    "application/vnd.kubernetes.protobuf",
		BindAddress:           "0.0.0.0",
		LocalhostNodePorts:    true,
		IPTablesSyncPeriod:    30 * time.Second,
		IPTablesMinSyncPeriod: time.Second,
		IPVSSyncPeriod:        30 * time.Second,
		OOMScoreAdj:           -999,
		Conntrack: nodetune.Conntrack{
			MaxPerCore:            32 * 1024,
			Min:                   128 * 1024,
			TCPEstablishedTimeout: 24 * time.Hour,
			TCPCloseWaitTimeout:   time.Hour,
		},
		ConfigSyncPeriod: 15 * time.Minute,
		HealthzPort:      10256,
		MetricsPort:      10249,
		Logging:          newLoggingConfiguration(),
	}
}

// Default ports of the health and metrics servers (kube-proxy's).
const (
	defaultHealthzPort = 10256
	defaultMetricsPort = 10249
)

// noEffectFlags are kube-proxy flags switchyard accepts without acting on
// them; giving one draws a single warning with the reason.
var noEffectFlags = map[string]string{
	"feature-gates":                   "switchyard has no feature gates",
	"show-hidden-metrics-for-version": "switchyard hides no metrics",
	"config-sync-period":              "switchyard's informers do not resync periodically",
	"log-text-split-stream":           "switchyard writes one log stream",
	"log-text-info-buffer-size":       "switchyard writes one log stream",
	"log-json-split-stream":           "switchyard writes one log stream",
	"log-json-info-buffer-size":       "switchyard writes one log stream",
	// klog flags removed from kube-proxy in v1.26, still on some installers'
	// command lines (k3s's optional log_file, older kops).
	"add-dir-header":    "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
	"alsologtostderr":   "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
	"log-backtrace-at":  "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
	"log-dir":           "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
	"log-file":          "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
	"log-file-max-size": "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
	"logtostderr":       "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
	"one-output":        "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
	"skip-headers":      "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
	"skip-log-headers":  "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
	"stderrthreshold":   "klog's file flags were removed from kube-proxy; switchyard logs to stderr",
}

// normalizeFlagName accepts kube-proxy's underscore spellings
// (--healthz_bind_address) as the dashed names, like component-base's
// WordSepNormalizeFunc.
func normalizeFlagName(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	return pflag.NormalizedName(strings.ReplaceAll(name, "_", "-"))
}

// versionValue is --version: a bare --version prints the version.
type versionValue struct{ v *string }

func (v versionValue) String() string     { return *v.v }
func (v versionValue) Set(s string) error { *v.v = s; return nil }
func (v versionValue) Type() string       { return "version" }
func (v versionValue) IsBoolFlag() bool   { return true }

// addFlags binds the options to fs. plan and rules take the subset that
// shapes what is programmed; the proxy takes all.
func (o *Options) addFlags(fs *pflag.FlagSet, daemon bool) {
	fs.StringVar(&o.ProxyMode, "proxy-mode", o.ProxyMode, "which proxy mode to use: iptables, ipvs or nftables")
	fs.StringVar(&o.HostnameOverride, "hostname-override", o.HostnameOverride, "the node name to use instead of the hostname")
	fs.StringSliceVar(&o.NodeIPs, "node-ip", o.NodeIPs, "this node's IP addresses (primary first); default: from the Node object")
	fs.StringVar(&o.ClusterCIDR, "cluster-cidr", o.ClusterCIDR, "comma-separated pod CIDRs; traffic to cluster IPs from outside them is masqueraded")
	fs.StringSliceVar(&o.NodePortAddresses, "nodeport-addresses", o.NodePortAddresses, "CIDRs (or 'primary') of the node addresses node ports answer on; default all")
	fs.StringVar(&o.NodePortRange, "service-node-port-range", o.NodePortRange, "the range of valid node ports (as the API server's flag)")
	fs.BoolVar(&o.MasqueradeAll, "masquerade-all", o.MasqueradeAll, "SNAT all traffic sent via service cluster IPs")
	fs.Int32Var(&o.MasqueradeBit, "iptables-masquerade-bit", o.MasqueradeBit, "the fwmark bit (0-31) marking packets to masquerade")
	fs.StringVar(&o.ConfigFile, "config", o.ConfigFile, "a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) file; explicit flags override it")
	fs.StringVar(&o.Manifests, "manifests", o.Manifests, "standalone mode: read Services, EndpointSlices, Node and Pods from the YAML files of this folder instead of the API server")
	fs.StringVar(&o.ServiceProxyName, "service-proxy-name", o.ServiceProxyName, "proxy services whose service.kubernetes.io/service-proxy-name label has this value (and those without it)")
	fs.StringVar(&o.IPVSScheduler, "ipvs-scheduler", o.IPVSScheduler, "the IPVS scheduler (rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh)")
	fs.BoolVar(&o.IPVSStrictARP, "ipvs-strict-arp", o.IPVSStrictARP, "set arp_ignore=1 and arp_announce=2 so the node does not answer ARP for service VIPs (as kube-proxy's --ipvs-strict-arp)")
	fs.DurationVar(&o.IPVSGracePeriod, "ipvs-grace-period", o.IPVSGracePeriod, "how long a removed IPVS real server keeps its connections (weight 0) before it is deleted; 0 means 15m")
	fs.StringVar(&o.IPTablesBackend, "iptables-backend", o.IPTablesBackend, "iptables flavour: auto (the one kubelet's hint chain names, else the one holding more rules), nft or legacy")
	fs.StringVar(&o.HostPortMode, "hostport-mode", o.HostPortMode, "pods' hostPorts: on (switchyard programs and reserves them), off (left to the CNI portmap plugin), auto (off when portmap's CNI-HOSTPORT-DNAT chain exists at the first sync, else on)")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error (filters switchyard's own records; debug also means -v=4; default info, or debug at -v=4 and up)")
	fs.BoolVar(&o.LocalhostNodePorts, "iptables-localhost-nodeports", o.LocalhostNodePorts, "if false, node ports are not reachable on 127.0.0.1 (iptables mode, IPv4 only)")
	fs.StringVar(&o.DetectLocalMode, "detect-local-mode", o.DetectLocalMode, "how traffic from local pods is told apart: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix")
	fs.StringVar(&o.PodBridgeInterface, "pod-bridge-interface", o.PodBridgeInterface, "with --detect-local-mode=BridgeInterface: the pods' bridge")
	fs.StringVar(&o.PodInterfaceNamePrefix, "pod-interface-name-prefix", o.PodInterfaceNamePrefix, "with --detect-local-mode=InterfaceNamePrefix: the prefix of the pods' interfaces")
	addLoggingFlags(o.Logging, fs)
	if !daemon {
		return
	}
	fs.Var(versionValue{&o.Version}, "version", "print the version and exit (--version=raw too)")
	fs.Lookup("version").NoOptDefVal = "true"
	fs.StringVar(&o.WriteConfigTo, "write-config-to", o.WriteConfigTo, "write the effective configuration as a KubeProxyConfiguration to this file and exit")
	fs.BoolVar(&o.InitOnly, "init-only", o.InitOnly, "apply the node settings that need privileges (conntrack sysctls, oom score), then exit")
	fs.Var(newMapStringBool(&o.FeatureGates), "feature-gates", "kube-proxy's feature gates (accepted; switchyard has none)")
	fs.Float32Var(&o.KubeAPIQPS, "kube-api-qps", o.KubeAPIQPS, "QPS to use while talking with the API server")
	fs.Int32Var(&o.KubeAPIBurst, "kube-api-burst", o.KubeAPIBurst, "burst to use while talking with the API server")
	fs.StringVar(&o.KubeAPIContentType, "kube-api-content-type", o.KubeAPIContentType, "content type of requests sent to the API server")
	fs.StringVar(&o.BindAddress, "bind-address", o.BindAddress, "the node's primary IP, unless it is 0.0.0.0 or :: (kube-proxy binds nothing to it either)")
	fs.BoolVar(&o.BindAddressHardFail, "bind-address-hard-fail", o.BindAddressHardFail, "exit if the health or metrics port cannot be bound, instead of retrying")
	fs.BoolVar(&o.EnableProfiling, "profiling", o.EnableProfiling, "serve Go's profiles under /debug/pprof/ on the metrics address (as kube-proxy)")
	fs.StringVar(&o.ShowHiddenMetricsForVersion, "show-hidden-metrics-for-version", o.ShowHiddenMetricsForVersion, "accepted for kube-proxy compatibility (no effect)")
	fs.DurationVar(&o.IPTablesSyncPeriod, "iptables-sync-period", o.IPTablesSyncPeriod, "--sync-period, in every mode but ipvs (kube-proxy's name)")
	fs.DurationVar(&o.IPTablesMinSyncPeriod, "iptables-min-sync-period", o.IPTablesMinSyncPeriod, "--min-sync-period, in every mode but ipvs (kube-proxy's name)")
	fs.DurationVar(&o.IPVSSyncPeriod, "ipvs-sync-period", o.IPVSSyncPeriod, "--sync-period in ipvs mode (kube-proxy's name)")
	fs.DurationVar(&o.IPVSMinSyncPeriod, "ipvs-min-sync-period", o.IPVSMinSyncPeriod, "--min-sync-period in ipvs mode (kube-proxy's name)")
	fs.StringSliceVar(&o.IPVSExcludeCIDRs, "ipvs-exclude-cidrs", o.IPVSExcludeCIDRs, "comma-separated CIDRs: IPVS virtual servers on addresses inside them are never deleted by switchyard's syncs or --cleanup (other IPVS users' services)")
	fs.DurationVar(&o.IPVSTCPTimeout, "ipvs-tcp-timeout", o.IPVSTCPTimeout, "IPVS idle timeout of TCP connections, whole seconds (0 leaves the kernel's, 900s by default)")
	fs.DurationVar(&o.IPVSTCPFinTimeout, "ipvs-tcpfin-timeout", o.IPVSTCPFinTimeout, "IPVS timeout of TCP connections after a FIN, whole seconds (0 leaves the kernel's, 120s by default)")
	fs.DurationVar(&o.IPVSUDPTimeout, "ipvs-udp-timeout", o.IPVSUDPTimeout, "IPVS timeout of UDP flows, whole seconds (0 leaves the kernel's, 300s by default)")
	fs.Int32Var(&o.OOMScoreAdj, "oom-score-adj", o.OOMScoreAdj, "the oom_score_adj of switchyard's process, -1000 to 1000 (a failure to set it is a warning)")
	fs.Int32Var(&o.Conntrack.MaxPerCore, "conntrack-max-per-core", o.Conntrack.MaxPerCore, "nf_conntrack_max per CPU core (0 leaves the limit and ignores --conntrack-min)")
	fs.Int32Var(&o.Conntrack.Min, "conntrack-min", o.Conntrack.Min, "the least nf_conntrack_max, whatever --conntrack-max-per-core")
	fs.DurationVar(&o.Conntrack.TCPEstablishedTimeout, "conntrack-tcp-timeout-established", o.Conntrack.TCPEstablishedTimeout, "idle timeout of established TCP connections (0 leaves it)")
	fs.DurationVar(&o.Conntrack.TCPCloseWaitTimeout, "conntrack-tcp-timeout-close-wait", o.Conntrack.TCPCloseWaitTimeout, "timeout of TCP connections in CLOSE_WAIT (0 leaves it)")
	fs.BoolVar(&o.Conntrack.TCPBeLiberal, "conntrack-tcp-be-liberal", o.Conntrack.TCPBeLiberal, "set nf_conntrack_tcp_be_liberal to 1")
	fs.DurationVar(&o.Conntrack.UDPTimeout, "conntrack-udp-timeout", o.Conntrack.UDPTimeout, "idle timeout of unreplied UDP flows (0 leaves it)")
	fs.DurationVar(&o.Conntrack.UDPStreamTimeout, "conntrack-udp-timeout-stream", o.Conntrack.UDPStreamTimeout, "idle timeout of assured UDP flows (0 leaves it)")
	fs.DurationVar(&o.ConfigSyncPeriod, "config-sync-period", o.ConfigSyncPeriod, "accepted for kube-proxy compatibility (no effect)")
	fs.Int32Var(&o.HealthzPort, "healthz-port", o.HealthzPort, "deprecated (kube-proxy): 0 disables the health server; else the port for a bare --healthz-bind-address IP")
	fs.Int32Var(&o.MetricsPort, "metrics-port", o.MetricsPort, "deprecated (kube-proxy): 0 disables the metrics server; else the port for a bare --metrics-bind-address IP")
	for _, name := range []string{"add-dir-header", "alsologtostderr", "logtostderr", "one-output", "skip-headers", "skip-log-headers"} {
		fs.Bool(name, false, "removed klog flag, accepted for compatibility (no effect)")
	}
	for _, name := range []string{"log-backtrace-at", "log-dir", "log-file", "log-file-max-size", "stderrthreshold"} {
		fs.String(name, "", "removed klog flag, accepted for compatibility (no effect)")
	}
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "path to a kubeconfig file")
	fs.StringVar(&o.Master, "master", o.Master, "the address of the Kubernetes API server (overrides the kubeconfig)")
	fs.DurationVar(&o.MinSyncPeriod, "min-sync-period", o.MinSyncPeriod, "the least time between two syncs")
	fs.DurationVar(&o.SyncPeriod, "sync-period", o.SyncPeriod, "the most time between two syncs")
	fs.StringVar(&o.HealthzBindAddress, "healthz-bind-address", o.HealthzBindAddress, "ip:port (or ip, port 10256) of the /healthz and /livez server; empty disables")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "ip:port (or ip, port 10249) of the /metrics server; empty disables")
	fs.BoolVar(&o.Cleanup, "cleanup", o.Cleanup, "remove every rule, chain, set, interface and virtual server switchyard created, then exit")
	fs.BoolVar(&o.Once, "once", o.Once, "sync once and exit: 0 on success, 1 if the apply failed")
	fs.BoolVar(&o.CleanupKubeProxy, "cleanup-kube-proxy", o.CleanupKubeProxy, "after the first successful sync, remove what kube-proxy left (KUBE- chains but kubelet's, nft table kube-proxy, KUBE- ipsets, its IPVS virtual servers and kube-ipvs0); with --once, a one-shot takeover")
}

// supportedConfigFields are the KubeProxyConfiguration fields switchyard
// honours (or stores for the planner); any other field that is set draws
// one warning.
var supportedConfigFields = map[string]bool{
	"apiVersion": true, "kind": true,
	"mode": true, "clusterCIDR": true, "hostnameOverride": true, "nodePortAddresses": true,
	"healthzBindAddress": true, "metricsBindAddress": true, "bindAddress": true, "bindAddressHardFail": true,
	"clientConnection.kubeconfig": true, "clientConnection.qps": true, "clientConnection.burst": true,
	"clientConnection.contentType": true, "clientConnection.acceptContentTypes": true,
	"iptables.masqueradeAll": true, "iptables.masqueradeBit": true, "iptables.localhostNodePorts": true,
	"iptables.syncPeriod": true, "iptables.minSyncPeriod": true,
	"ipvs.scheduler": true, "ipvs.syncPeriod": true, "ipvs.minSyncPeriod": true, "ipvs.strictARP": true,
	"ipvs.excludeCIDRs": true, "ipvs.tcpTimeout": true, "ipvs.tcpFinTimeout": true, "ipvs.udpTimeout": true,
	"nftables.masqueradeAll": true, "nftables.masqueradeBit": true,
	"nftables.syncPeriod": true, "nftables.minSyncPeriod": true,
	"enableProfiling": true, "detectLocalMode": true, "detectLocal.bridgeInterface": true, "detectLocal.interfaceNamePrefix": true,
	"oomScoreAdj": true, "conntrack.maxPerCore": true, "conntrack.min": true,
	"conntrack.tcpEstablishedTimeout": true, "conntrack.tcpCloseWaitTimeout": true, "conntrack.tcpBeLiberal": true,
	"conntrack.udpTimeout": true, "conntrack.udpStreamTimeout": true,
	"logging.format": true, "logging.verbosity": true, "logging.vmodule": true, "logging.flushFrequency": true,
}

// loadConfigFile applies a KubeProxyConfiguration file to o, leaving the
// options named in explicit (flags given on the command line) untouched.
// Like kube-proxy, unknown fields are decoded leniently; it returns one
// warning per unknown field and per set field switchyard does not support.
func (o *Options) loadConfigFile(path string, explicit map[string]bool) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config file: %w", err)
	}
	o.configData = data
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	if raw["kind"] != "KubeProxyConfiguration" || raw["apiVersion"] != "kubeproxy.config.k8s.io/v1alpha1" {
		return nil, fmt.Errorf("config file %s: want apiVersion kubeproxy.config.k8s.io/v1alpha1 and kind KubeProxyConfiguration, got %v %v", path, raw["apiVersion"], raw["kind"])
	}
	jsonData, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	var cfg kpconfig.KubeProxyConfiguration
	strictErrs, err := kjson.UnmarshalStrict(jsonData, &cfg, kjson.DisallowUnknownFields)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	var warnings []string
	var strictText []string
	for _, e := range strictErrs {
		strictText = append(strictText, e.Error())
		warnings = append(warnings, fmt.Sprintf("config file %s: %v; ignored (decoded leniently, as kube-proxy does)", path, e))
	}
	for _, field := range setFields("", raw) {
		if supportedConfigFields[field] || strings.Contains(strings.Join(strictText, "\n"), `"`+field+`"`) {
			continue
		}
		if field == "configSyncPeriod" && cfg.ConfigSyncPeriod.Duration == 15*time.Minute {
			continue // kube-proxy's default, written out by most installers
		}
		if reason, ok := noEffectFlags[configFieldFlag[field]]; ok {
			warnings = append(warnings, fmt.Sprintf("config field %q has no effect in switchyard: %s", field, reason))
			continue
		}
		warnings = append(warnings, fmt.Sprintf("config field %q is not supported by switchyard and is ignored", field))
	}

	set := func(flag string, apply func()) {
		if !explicit[flag] {
			apply()
		}
	}
	has := func(path ...string) bool {
		m := raw
		for i, k := range path {
			v, ok := m[k]
			if !ok {
				return false
			}
			if i == len(path)-1 {
				return v != nil
			}
			if m, ok = v.(map[string]any); !ok {
				return false
			}
		}
		return false
	}
	if cfg.Mode != "" {
		set("proxy-mode", func() { o.ProxyMode = string(cfg.Mode) })
	}
	if cfg.EnableProfiling {
		set("profiling", func() { o.EnableProfiling = true })
	}
	if cfg.ClusterCIDR != "" {
		set("cluster-cidr", func() { o.ClusterCIDR = cfg.ClusterCIDR })
	}
	if cfg.HostnameOverride != "" {
		set("hostname-override", func() { o.HostnameOverride = cfg.HostnameOverride })
	}
	if len(cfg.NodePortAddresses) > 0 {
		set("nodeport-addresses", func() { o.NodePortAddresses = cfg.NodePortAddresses })
	}
	if cfg.BindAddress != "" {
		set("bind-address", func() { o.BindAddress = cfg.BindAddress })
	}
	// As kube-proxy's defaulting: an empty address means the default, a
	// bare IP gets the default port.
	defHealthz, defMetrics := defaultServerAddresses(o.BindAddress)
	set("healthz-bind-address", func() {
		o.HealthzBindAddress = completeAddress(cfg.HealthzBindAddress, defHealthz, defaultHealthzPort)
	})
	set("metrics-bind-address", func() {
		o.MetricsBindAddress = completeAddress(cfg.MetricsBindAddress, defMetrics, defaultMetricsPort)
	})
	if cfg.BindAddressHardFail {
		set("bind-address-hard-fail", func() { o.BindAddressHardFail = true })
	}
	if cfg.ClientConnection.Kubeconfig != "" {
		set("kubeconfig", func() { o.Kubeconfig = cfg.ClientConnection.Kubeconfig })
	}
	if cfg.ClientConnection.QPS != 0 {
		set("kube-api-qps", func() { o.KubeAPIQPS = cfg.ClientConnection.QPS })
	}
	if cfg.ClientConnection.Burst != 0 {
		set("kube-api-burst", func() { o.KubeAPIBurst = cfg.ClientConnection.Burst })
	}
	if cfg.ClientConnection.ContentType != "" {
		set("kube-api-content-type", func() { o.KubeAPIContentType = cfg.ClientConnection.ContentType })
	}
	if cfg.IPVS.Scheduler != "" {
		set("ipvs-scheduler", func() { o.IPVSScheduler = cfg.IPVS.Scheduler })
	}
	if cfg.IPVS.StrictARP {
		set("ipvs-strict-arp", func() { o.IPVSStrictARP = true })
	}
	if len(cfg.IPVS.ExcludeCIDRs) > 0 {
		set("ipvs-exclude-cidrs", func() { o.IPVSExcludeCIDRs = cfg.IPVS.ExcludeCIDRs })
	}
	if d := cfg.IPVS.TCPTimeout.Duration; d != 0 {
		set("ipvs-tcp-timeout", func() { o.IPVSTCPTimeout = d })
	}
	if d := cfg.IPVS.TCPFinTimeout.Duration; d != 0 {
		set("ipvs-tcpfin-timeout", func() { o.IPVSTCPFinTimeout = d })
	}
	if d := cfg.IPVS.UDPTimeout.Duration; d != 0 {
		set("ipvs-udp-timeout", func() { o.IPVSUDPTimeout = d })
	}
	if cfg.IPTables.LocalhostNodePorts != nil {
		set("iptables-localhost-nodeports", func() { o.LocalhostNodePorts = *cfg.IPTables.LocalhostNodePorts })
	}
	if cfg.DetectLocalMode != "" {
		set("detect-local-mode", func() { o.DetectLocalMode = string(cfg.DetectLocalMode) })
	}
	if cfg.DetectLocal.BridgeInterface != "" {
		set("pod-bridge-interface", func() { o.PodBridgeInterface = cfg.DetectLocal.BridgeInterface })
	}
	if cfg.DetectLocal.InterfaceNamePrefix != "" {
		set("pod-interface-name-prefix", func() { o.PodInterfaceNamePrefix = cfg.DetectLocal.InterfaceNamePrefix })
	}
	if cfg.OOMScoreAdj != nil {
		set("oom-score-adj", func() { o.OOMScoreAdj = *cfg.OOMScoreAdj })
	}
	ct := cfg.Conntrack
	if ct.MaxPerCore != nil {
		set("conntrack-max-per-core", func() { o.Conntrack.MaxPerCore = *ct.MaxPerCore })
	}
	if ct.Min != nil {
		set("conntrack-min", func() { o.Conntrack.Min = *ct.Min })
	}
	if ct.TCPEstablishedTimeout != nil {
		set("conntrack-tcp-timeout-established", func() { o.Conntrack.TCPEstablishedTimeout = ct.TCPEstablishedTimeout.Duration })
	}
	if ct.TCPCloseWaitTimeout != nil {
		set("conntrack-tcp-timeout-close-wait", func() { o.Conntrack.TCPCloseWaitTimeout = ct.TCPCloseWaitTimeout.Duration })
	}
	if ct.TCPBeLiberal {
		set("conntrack-tcp-be-liberal", func() { o.Conntrack.TCPBeLiberal = true })
	}
	if has("conntrack", "udpTimeout") {
		set("conntrack-udp-timeout", func() { o.Conntrack.UDPTimeout = ct.UDPTimeout.Duration })
	}
	if has("conntrack", "udpStreamTimeout") {
		set("conntrack-udp-timeout-stream", func() { o.Conntrack.UDPStreamTimeout = ct.UDPStreamTimeout.Duration })
	}
	// Logging: command-line flags win, as in kube-proxy (copyLogsFromFlags).
	lc := cfg.Logging
	if lc.Format != "" {
		set("logging-format", func() { o.Logging.Format = lc.Format })
	}
	if has("logging", "verbosity") {
		set("v", func() { o.Logging.Verbosity = lc.Verbosity })
	}
	if len(lc.VModule) > 0 {
		o.Logging.VModule = append(lc.VModule, o.Logging.VModule...)
	}
	if lc.FlushFrequency.Duration.Duration != 0 {
		set("log-flush-frequency", func() { o.Logging.FlushFrequency = lc.FlushFrequency })
	}
	// Masquerading and sync periods live in the section of the chosen mode.
	masqAll, masqBit := cfg.IPTables.MasqueradeAll, cfg.IPTables.MasqueradeBit
	syncP, minP := cfg.IPTables.SyncPeriod.Duration, cfg.IPTables.MinSyncPeriod.Duration
	switch o.ProxyMode {
	case ModeIPVS:
		syncP, minP = cfg.IPVS.SyncPeriod.Duration, cfg.IPVS.MinSyncPeriod.Duration
	case ModeNFTables:
		masqAll, masqBit = cfg.NFTables.MasqueradeAll, cfg.NFTables.MasqueradeBit
		syncP, minP = cfg.NFTables.SyncPeriod.Duration, cfg.NFTables.MinSyncPeriod.Duration
	}
	if masqAll {
		set("masquerade-all", func() { o.MasqueradeAll = true })
	}
	if masqBit != nil {
		set("iptables-masquerade-bit", func() { o.MasqueradeBit = *masqBit })
	}
	if syncP != 0 {
		set("sync-period", func() { o.SyncPeriod = syncP })
	}
	if minP != 0 {
		set("min-sync-period", func() { o.MinSyncPeriod = minP })
	}
	return warnings, nil
}

// configFieldFlag names the flag of config fields that have no effect, so
// that both draw the same reason.
var configFieldFlag = map[string]string{
	"featureGates":                "feature-gates",
	"showHiddenMetricsForVersion": "show-hidden-metrics-for-version", "configSyncPeriod": "config-sync-period",
}

// defaultServerAddresses are kube-proxy's default health and metrics
// hosts for a bind address: IPv4 unless it is an IPv6 address.
func defaultServerAddresses(bindAddress string) (healthz, metrics string) {
	if a, err := netip.ParseAddr(bindAddress); err == nil && a.Is6() && !a.Is4In6() {
		return "[::]", "[::1]"
	}
	return "0.0.0.0", "127.0.0.1"
}

// completeAddress applies kube-proxy's defaulting to a server address:
// empty means def:port, a bare IP gets the port.
func completeAddress(addr, def string, port int32) string {
	if addr == "" {
		addr = def
	}
	return appendPortIfNeeded(addr, port)
}

// appendPortIfNeeded adds port to a bare IP address (as kube-proxy's
// AppendPortIfNeeded); anything else is returned unchanged.
func appendPortIfNeeded(addr string, port int32) string {
	if _, err := netip.ParseAddrPort(addr); err == nil {
		return addr
	}
	a, err := netip.ParseAddr(strings.Trim(addr, "[]"))
	if err != nil {
		return addr
	}
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// mapStringBool is a "k1=true,k2=false" flag (--feature-gates).
type mapStringBool struct{ m *map[string]bool }

func newMapStringBool(m *map[string]bool) mapStringBool { return mapStringBool{m} }

func (v mapStringBool) String() string {
	if *v.m == nil {
		return ""
	}
	var parts []string
	for k, b := range *v.m {
		parts = append(parts, fmt.Sprintf("%s=%t", k, b))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (v mapStringBool) Set(s string) error {
	if *v.m == nil {
		*v.m = map[string]bool{}
	}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, val, ok := strings.Cut(kv, "=")
		b, err := strconv.ParseBool(strings.TrimSpace(val))
		if !ok || err != nil {
			return fmt.Errorf("%q: want key=true|false", kv)
		}
		(*v.m)[strings.TrimSpace(k)] = b
	}
	return nil
}

func (v mapStringBool) Type() string { return "mapStringBool" }

// setFields lists the dotted paths of the non-empty leaves of a decoded
// YAML document.
func setFields(prefix string, m map[string]any) []string {
	var out []string
	for k, v := range m {
		path := k
		if prefix != "" {
			path = prefix + "." + k
		}
		switch val := v.(type) {
		case map[string]any:
			out = append(out, setFields(path, val)...)
		case []any:
			if len(val) > 0 {
				out = append(out, path)
			}
		case nil:
		default:
			// Zero values (as kubeadm writes for every default) are not
			// settings worth a warning.
			if val != "" && val != false && val != float64(0) && val != "0s" && val != "0" {
				out = append(out, path)
			}
		}
	}
	sort.Strings(out)
	return out
}

// settings are the validated, parsed forms of Options.
type settings struct {
	nodeName      string
	nodeIPs       []netip.Addr
	clusterCIDRs  []netip.Prefix
	nodePortSel   nodeport.Selector
	nodePortRange [2]uint16
}

// validate checks the options and parses what needs parsing. Its errors
// are one line each and mean exit status 2.
func (o *Options) validate() (*settings, error) {
	s := &settings{}
	switch o.ProxyMode {
	case ModeIPTables, ModeIPVS, ModeNFTables:
	case "":
		o.ProxyMode = ModeIPTables
	default:
		return nil, fmt.Errorf("--proxy-mode %q: want iptables, ipvs or nftables", o.ProxyMode)
	}
	if o.MasqueradeBit < 0 || o.MasqueradeBit > 31 {
		return nil, fmt.Errorf("--iptables-masquerade-bit %d: want 0-31", o.MasqueradeBit)
	}
	if o.SyncPeriod <= 0 {
		return nil, fmt.Errorf("--sync-period %v: must be positive", o.SyncPeriod)
	}
	if o.MinSyncPeriod < 0 || o.MinSyncPeriod > o.SyncPeriod {
		return nil, fmt.Errorf("--min-sync-period %v: must be between 0 and --sync-period (%v)", o.MinSyncPeriod, o.SyncPeriod)
	}
	for _, addr := range []struct{ flag, val string }{{"healthz-bind-address", o.HealthzBindAddress}, {"metrics-bind-address", o.MetricsBindAddress}} {
		if addr.val == "" {
			continue
		}
		if _, err := netip.ParseAddrPort(addr.val); err != nil {
			return nil, fmt.Errorf("--%s %q: want ip:port", addr.flag, addr.val)
		}
	}
	for _, c := range strings.Split(o.ClusterCIDR, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("--cluster-cidr %q: %w", c, err)
		}
		s.clusterCIDRs = append(s.clusterCIDRs, p.Masked())
	}
	// kube-proxy's --bind-address is the node's primary IP unless it is
	// the unspecified address.
	bind, err := netip.ParseAddr(strings.TrimSpace(o.BindAddress))
	if o.BindAddress != "" && err != nil {
		return nil, fmt.Errorf("--bind-address %q: want an IP address", o.BindAddress)
	}
	if err == nil && !bind.IsUnspecified() && len(o.NodeIPs) == 0 {
		s.nodeIPs = append(s.nodeIPs, bind.Unmap())
	}
	for _, v := range o.NodeIPs {
		ip, err := netip.ParseAddr(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("--node-ip %q: %w", v, err)
		}
		s.nodeIPs = append(s.nodeIPs, ip.Unmap())
	}
	sel, err := nodeport.ParseAddresses(expandNodePortKeywords(o.NodePortAddresses))
	if err != nil {
		return nil, fmt.Errorf("--nodeport-addresses: %w", err)
	}
	s.nodePortSel = sel
	lo, hi, err := parsePortRange(o.NodePortRange)
	if err != nil {
		return nil, err
	}
	s.nodePortRange = [2]uint16{lo, hi}
	if o.IPVSGracePeriod < 0 {
		return nil, fmt.Errorf("--ipvs-grace-period %v: must not be negative", o.IPVSGracePeriod)
	}
	switch o.IPTablesBackend {
	case "auto", "nft", "legacy":
	default:
		return nil, fmt.Errorf("--iptables-backend %q: want auto, nft or legacy", o.IPTablesBackend)
	}
	switch o.HostPortMode {
	case "auto", "on", "off":
	default:
		return nil, fmt.Errorf("--hostport-mode %q: want auto, on or off", o.HostPortMode)
	}
	switch o.IPVSScheduler {
	case "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh", "fo", "ovf", "twos":
	default:
		return nil, fmt.Errorf("--ipvs-scheduler %q: want rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh, fo, ovf or twos", o.IPVSScheduler)
	}
	s.nodeName = strings.ToLower(strings.TrimSpace(o.HostnameOverride))
	if s.nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("no --hostname-override and the hostname is unknown: %w", err)
		}
		s.nodeName = strings.ToLower(h)
	}
	switch o.DetectLocalMode {
	case "", "ClusterCIDR", "NodeCIDR":
	case "BridgeInterface":
		if o.PodBridgeInterface == "" {
			return nil, errors.New("--detect-local-mode=BridgeInterface needs --pod-bridge-interface")
		}
	case "InterfaceNamePrefix":
		if o.PodInterfaceNamePrefix == "" {
			return nil, errors.New("--detect-local-mode=InterfaceNamePrefix needs --pod-interface-name-prefix")
		}
	default:
		return nil, fmt.Errorf("--detect-local-mode %q: want ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix", o.DetectLocalMode)
	}
	if o.OOMScoreAdj < -1000 || o.OOMScoreAdj > 1000 {
		return nil, fmt.Errorf("--oom-score-adj %d: want -1000 to 1000", o.OOMScoreAdj)
	}
	ct := o.Conntrack
	if ct.MaxPerCore < 0 || ct.Min < 0 {
		return nil, fmt.Errorf("--conntrack-max-per-core %d, --conntrack-min %d: must not be negative", ct.MaxPerCore, ct.Min)
	}
	for _, d := range []struct {
		flag string
		val  time.Duration
	}{
		{"conntrack-tcp-timeout-established", ct.TCPEstablishedTimeout}, {"conntrack-tcp-timeout-close-wait", ct.TCPCloseWaitTimeout},
		{"conntrack-udp-timeout", ct.UDPTimeout}, {"conntrack-udp-timeout-stream", ct.UDPStreamTimeout},
		{"ipvs-tcp-timeout", o.IPVSTCPTimeout}, {"ipvs-tcpfin-timeout", o.IPVSTCPFinTimeout}, {"ipvs-udp-timeout", o.IPVSUDPTimeout},
	} {
		if d.val < 0 {
			return nil, fmt.Errorf("--%s %v: must not be negative", d.flag, d.val)
		}
	}
	if o.KubeAPIQPS < 0 || o.KubeAPIBurst < 0 {
		return nil, fmt.Errorf("--kube-api-qps %v, --kube-api-burst %d: must not be negative", o.KubeAPIQPS, o.KubeAPIBurst)
	}
	if _, err := o.ipvsExcludeCIDRs(); err != nil {
		return nil, err
	}
	if err := o.ipvsTimeouts().Validate(); err != nil {
		return nil, fmt.Errorf("--ipvs-tcp-timeout/--ipvs-tcpfin-timeout/--ipvs-udp-timeout: %w", err)
	}
	if o.Once && o.Cleanup {
		return nil, errors.New("--once and --cleanup cannot be combined")
	}
	if o.Cleanup && o.CleanupKubeProxy {
		return nil, errors.New("--cleanup and --cleanup-kube-proxy cannot be combined (--cleanup removes switchyard's own rules)")
	}
	return s, nil
}

// ipvsExcludeCIDRs parses --ipvs-exclude-cidrs.
func (o *Options) ipvsExcludeCIDRs() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range o.IPVSExcludeCIDRs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("--ipvs-exclude-cidrs %q: %w", c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ipvsTimeouts returns the --ipvs-*-timeout flags.
func (o *Options) ipvsTimeouts() ipvs.Timeouts {
	return ipvs.Timeouts{TCP: o.IPVSTCPTimeout, TCPFin: o.IPVSTCPFinTimeout, UDP: o.IPVSUDPTimeout}
}

// parsePortRange parses "MIN-MAX" (--service-node-port-range).
func parsePortRange(v string) (uint16, uint16, error) {
	lo, hi, ok := strings.Cut(v, "-")
	a, errA := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, errB := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if !ok || errA != nil || errB != nil || a == 0 || a > b {
		return 0, 0, fmt.Errorf("--service-node-port-range %q: want MIN-MAX within 1-65535", v)
	}
	return uint16(a), uint16(b), nil
}

// applyKubeProxyFlags folds kube-proxy's flags that have a switchyard
// counterpart into it: the per-mode sync periods (for the active mode,
// unless --sync-period/--min-sync-period were given), the deprecated
// --healthz-port/--metrics-port, and bare IPs given to the bind address
// flags.
func (o *Options) applyKubeProxyFlags(explicit map[string]bool) {
	ipvs := o.ProxyMode == ModeIPVS
	for _, m := range []struct {
		flag, target string
		applies      bool
		dst          *time.Duration
		val          time.Duration
	}{
		{"iptables-sync-period", "sync-period", !ipvs, &o.SyncPeriod, o.IPTablesSyncPeriod},
		{"iptables-min-sync-period", "min-sync-period", !ipvs, &o.MinSyncPeriod, o.IPTablesMinSyncPeriod},
		{"ipvs-sync-period", "sync-period", ipvs, &o.SyncPeriod, o.IPVSSyncPeriod},
		{"ipvs-min-sync-period", "min-sync-period", ipvs, &o.MinSyncPeriod, o.IPVSMinSyncPeriod},
	} {
		if explicit[m.flag] && m.applies && !explicit[m.target] {
			*m.dst = m.val
		}
	}
	for _, srv := range []struct {
		addr *string
		port int32
		set  bool
	}{
		{&o.HealthzBindAddress, o.HealthzPort, explicit["healthz-port"]},
		{&o.MetricsBindAddress, o.MetricsPort, explicit["metrics-port"]},
	} {
		if srv.set && srv.port == 0 {
			*srv.addr = ""
			continue
		}
		if *srv.addr != "" {
			*srv.addr = appendPortIfNeeded(*srv.addr, srv.port)
		}
	}
}
