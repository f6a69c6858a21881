package app

import (
	"fmt"
	"os"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kpconfig "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"
)

// kubeProxyConfiguration renders the effective options as kube-proxy's
// KubeProxyConfiguration (for --write-config-to and /configz). Fields
// switchyard has no notion of keep kube-proxy's defaults.
func (o *Options) kubeProxyConfiguration() *kpconfig.KubeProxyConfiguration {
	i32 := func(v int32) *int32 { return &v }
	bit := o.MasqueradeBit
	c := &kpconfig.KubeProxyConfiguration{
		TypeMeta:                    metav1.TypeMeta{APIVersion: "kubeproxy.config.k8s.io/v1alpha1", Kind: "KubeProxyConfiguration"},
		FeatureGates:                o.FeatureGates,
		HostnameOverride:            o.HostnameOverride,
		BindAddress:                 o.BindAddress,
		HealthzBindAddress:          o.HealthzBindAddress,
		MetricsBindAddress:          o.MetricsBindAddress,
		BindAddressHardFail:         o.BindAddressHardFail,
		EnableProfiling:             o.EnableProfiling,
		Mode:                        kpconfig.ProxyMode(o.ProxyMode),
		ClusterCIDR:                 o.ClusterCIDR,
		NodePortAddresses:           o.NodePortAddresses,
		OOMScoreAdj:                 i32(o.OOMScoreAdj),
		DetectLocalMode:             kpconfig.LocalMode(o.DetectLocalMode),
		ConfigSyncPeriod:            metav1.Duration{Duration: o.ConfigSyncPeriod},
		ShowHiddenMetricsForVersion: o.ShowHiddenMetricsForVersion,
	}
	c.ClientConnection.Kubeconfig = o.Kubeconfig
	c.ClientConnection.QPS = o.KubeAPIQPS
	c.ClientConnection.Burst = o.KubeAPIBurst
	c.ClientConnection.ContentType = o.KubeAPIContentType
	c.DetectLocal.BridgeInterface = o.PodBridgeInterface
	c.DetectLocal.InterfaceNamePrefix = o.PodInterfaceNamePrefix
	lnp := o.LocalhostNodePorts
	c.IPTables.LocalhostNodePorts = &lnp
	c.IPTables.MasqueradeAll = o.MasqueradeAll
	c.IPTables.MasqueradeBit = &bit
	c.NFTables.MasqueradeAll = o.MasqueradeAll
	c.NFTables.MasqueradeBit = &bit
	period := metav1.Duration{Duration: o.SyncPeriod}
	minPeriod := metav1.Duration{Duration: o.MinSyncPeriod}
	c.IPTables.SyncPeriod, c.IPTables.MinSyncPeriod = period, minPeriod
	c.IPVS.SyncPeriod, c.IPVS.MinSyncPeriod = period, minPeriod
	c.NFTables.SyncPeriod, c.NFTables.MinSyncPeriod = period, minPeriod
	c.IPVS.Scheduler = o.IPVSScheduler
	c.IPVS.StrictARP = o.IPVSStrictARP
	c.IPVS.ExcludeCIDRs = o.IPVSExcludeCIDRs
	c.IPVS.TCPTimeout = metav1.Duration{Duration: o.IPVSTCPTimeout}
	c.IPVS.TCPFinTimeout = metav1.Duration{Duration: o.IPVSTCPFinTimeout}
	c.IPVS.UDPTimeout = metav1.Duration{Duration: o.IPVSUDPTimeout}
	ct := o.Conntrack
	c.Conntrack.MaxPerCore = i32(ct.MaxPerCore)
	c.Conntrack.Min = i32(ct.Min)
	c.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: ct.TCPEstablishedTimeout}
	c.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: ct.TCPCloseWaitTimeout}
	c.Conntrack.TCPBeLiberal = ct.TCPBeLiberal
	c.Conntrack.UDPTimeout = metav1.Duration{Duration: ct.UDPTimeout}
	c.Conntrack.UDPStreamTimeout = metav1.Duration{Duration: ct.UDPStreamTimeout}
	if o.Logging != nil {
		c.Logging = *o.Logging
	}
	return c
}

// writeConfig writes the effective configuration as YAML to path
// (--write-config-to).
func (o *Options) writeConfig(path string) error {
	b, err := yaml.Marshal(o.kubeProxyConfiguration())
	if err != nil {
		return fmt.Errorf("encoding the configuration: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("--write-config-to: %w", err)
	}
	return nil
}

// expandNodePortKeywords turns kube-proxy's --nodeport-addresses keywords
// "all" and "localhost" into their CIDRs; "primary" is passed on.
func expandNodePortKeywords(values []string) []string {
	var out []string
	for _, v := range values {
		switch strings.TrimSpace(v) {
		case "all":
			out = append(out, "0.0.0.0/0", "::/0")
		case "localhost":
			out = append(out, "127.0.0.0/8", "::1/128")
		default:
			out = append(out, v)
		}
	}
	return out
}
