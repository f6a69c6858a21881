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
	kpconfig "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"

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
	LogLevel           string
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
		LogLevel:           "info",
	}
}

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
	fs.StringVar(&o.IPTablesBackend, "iptables-backend", o.IPTablesBackend, "iptables flavour: auto (the one holding more rules), nft or legacy")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	if !daemon {
		return
	}
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "path to a kubeconfig file")
	fs.StringVar(&o.Master, "master", o.Master, "the address of the Kubernetes API server (overrides the kubeconfig)")
	fs.DurationVar(&o.MinSyncPeriod, "min-sync-period", o.MinSyncPeriod, "the least time between two syncs")
	fs.DurationVar(&o.SyncPeriod, "sync-period", o.SyncPeriod, "the most time between two syncs")
	fs.StringVar(&o.HealthzBindAddress, "healthz-bind-address", o.HealthzBindAddress, "ip:port of the /healthz and /livez server; empty disables")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "ip:port of the /metrics server; empty disables")
	fs.BoolVar(&o.Cleanup, "cleanup", o.Cleanup, "remove every rule, chain, set, interface and virtual server switchyard created, then exit")
	fs.BoolVar(&o.Once, "once", o.Once, "sync once and exit: 0 on success, 1 if the apply failed")
}

// supportedConfigFields are the KubeProxyConfiguration fields switchyard
// honours; any other field that is set draws one warning.
var supportedConfigFields = map[string]bool{
	"apiVersion": true, "kind": true,
	"mode": true, "clusterCIDR": true, "hostnameOverride": true, "nodePortAddresses": true,
	"healthzBindAddress": true, "metricsBindAddress": true, "clientConnection.kubeconfig": true,
	"iptables.masqueradeAll": true, "iptables.masqueradeBit": true,
	"iptables.syncPeriod": true, "iptables.minSyncPeriod": true,
	"ipvs.scheduler": true, "ipvs.syncPeriod": true, "ipvs.minSyncPeriod": true, "ipvs.strictARP": true,
	"nftables.masqueradeAll": true, "nftables.masqueradeBit": true,
	"nftables.syncPeriod": true, "nftables.minSyncPeriod": true,
}

// loadConfigFile applies a KubeProxyConfiguration file to o, leaving the
// options named in explicit (flags given on the command line) untouched.
// It returns one warning per set field that switchyard does not support.
func (o *Options) loadConfigFile(path string, explicit map[string]bool) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config file: %w", err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	if raw["kind"] != "KubeProxyConfiguration" || raw["apiVersion"] != "kubeproxy.config.k8s.io/v1alpha1" {
		return nil, fmt.Errorf("config file %s: want apiVersion kubeproxy.config.k8s.io/v1alpha1 and kind KubeProxyConfiguration, got %v %v", path, raw["apiVersion"], raw["kind"])
	}
	var cfg kpconfig.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	var warnings []string
	for _, field := range setFields("", raw) {
		if !supportedConfigFields[field] {
			warnings = append(warnings, fmt.Sprintf("config field %q is not supported by switchyard and is ignored", field))
		}
	}

	set := func(flag string, apply func()) {
		if !explicit[flag] {
			apply()
		}
	}
	if cfg.Mode != "" {
		set("proxy-mode", func() { o.ProxyMode = string(cfg.Mode) })
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
	if _, ok := raw["healthzBindAddress"]; ok {
		set("healthz-bind-address", func() { o.HealthzBindAddress = cfg.HealthzBindAddress })
	}
	if _, ok := raw["metricsBindAddress"]; ok {
		set("metrics-bind-address", func() { o.MetricsBindAddress = cfg.MetricsBindAddress })
	}
	if cfg.ClientConnection.Kubeconfig != "" {
		set("kubeconfig", func() { o.Kubeconfig = cfg.ClientConnection.Kubeconfig })
	}
	if cfg.IPVS.Scheduler != "" {
		set("ipvs-scheduler", func() { o.IPVSScheduler = cfg.IPVS.Scheduler })
	}
	if cfg.IPVS.StrictARP {
		set("ipvs-strict-arp", func() { o.IPVSStrictARP = true })
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
			if val != "" && val != false && val != float64(0) && val != "0s" {
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
	for _, v := range o.NodeIPs {
		ip, err := netip.ParseAddr(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("--node-ip %q: %w", v, err)
		}
		s.nodeIPs = append(s.nodeIPs, ip.Unmap())
	}
	sel, err := nodeport.ParseAddresses(o.NodePortAddresses)
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
	if o.Once && o.Cleanup {
		return nil, errors.New("--once and --cleanup cannot be combined")
	}
	return s, nil
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
