package app

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/internal/kubeproxyclean"
	"github.com/switchyard-proxy/switchyard/ipvs"
)

// --cleanup-kube-proxy keeps the virtual servers inside --ipvs-exclude-cidrs
// (kube-proxy's cleaner would otherwise delete every foreign one).
func TestCleanupKubeProxyKeepsExcluded(t *testing.T) {
	var got kubeproxyclean.Config
	old := kubeProxyCleaner
	kubeProxyCleaner = func(_ context.Context, cfg kubeproxyclean.Config) (kubeproxyclean.Report, error) {
		got = cfg
		return kubeproxyclean.Report{}, nil
	}
	t.Cleanup(func() { kubeProxyCleaner = old })
	o := defaultOptions()
	cleanupKubeProxy(context.Background(), o, slog.New(slog.DiscardHandler))
	if got.KeepVirtualServer != nil {
		t.Fatal("no exclusion given, yet virtual servers are kept")
	}
	o.IPVSExcludeCIDRs = []string{"172.30.0.0/16", "fd00:30::/64"}
	cleanupKubeProxy(context.Background(), o, slog.New(slog.DiscardHandler))
	for _, c := range []struct {
		v    kubeproxyclean.VirtualServer
		keep bool
	}{
		{kubeproxyclean.VirtualServer{Addr: netip.MustParseAddr("172.30.9.9"), Protocol: "TCP", Port: 80}, true},
		{kubeproxyclean.VirtualServer{Addr: netip.MustParseAddr("fd00:30::1"), Protocol: "UDP", Port: 53}, true},
		{kubeproxyclean.VirtualServer{Addr: netip.MustParseAddr("10.96.0.1"), Protocol: "TCP", Port: 443}, false},
		{kubeproxyclean.VirtualServer{FWMark: 7}, false},
	} {
		if got.KeepVirtualServer == nil || got.KeepVirtualServer(c.v) != c.keep {
			t.Errorf("%v: keep %v", c.v, !c.keep)
		}
	}
}

// --ipvs-exclude-cidrs and the IPVS timeouts have an effect: no
// "no effect" warning, the config file's fields set them (flags win), they
// reach the ipvs backend's settings and bad values exit 2.
func TestIPVSExcludeCIDRsAndTimeouts(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "ipvs.yaml", `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
ipvs:
  excludeCIDRs: ["172.30.0.0/16", "fd00:30::/64"]
  tcpTimeout: 1h
  tcpFinTimeout: 30s
  udpTimeout: 45s
`)
	o := defaultOptions()
	warnings, err := o.loadConfigFile(cfg, map[string]bool{"ipvs-udp-timeout": true})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %q", warnings)
	}
	if _, err := o.validate(); err != nil {
		t.Fatal(err)
	}
	if got := o.ipvsTimeouts(); got != (ipvs.Timeouts{TCP: time.Hour, TCPFin: 30 * time.Second}) {
		t.Errorf("timeouts %+v (udp was given as a flag: the file must not set it)", got)
	}
	ex, err := o.ipvsExcludeCIDRs()
	if err != nil || !slices.Equal(ex, []netip.Prefix{netip.MustParsePrefix("172.30.0.0/16"), netip.MustParsePrefix("fd00:30::/64")}) {
		t.Errorf("exclude %v %v", ex, err)
	}

	for _, args := range [][]string{
		{"--ipvs-exclude-cidrs=172.30.0.0/16,10.1.0.0/24", "--ipvs-tcp-timeout=900s"},
		{"--config", cfg},
	} {
		c, stderr := writeConfigArgs(t, args...)
		if strings.Contains(stderr, "no effect") {
			t.Errorf("%v: %s", args, stderr)
		}
		if len(c.IPVS.ExcludeCIDRs) != 2 || c.IPVS.TCPTimeout.Duration == 0 {
			t.Errorf("%v: written config %+v", args, c.IPVS)
		}
	}
	for _, args := range [][]string{
		{"--ipvs-udp-timeout=500ms"},
		{"--ipvs-tcpfin-timeout=-1s"},
		{"--ipvs-exclude-cidrs=172.30.0.0/16,nope"},
	} {
		if code, _, stderr := runMain(t, args...); code != 2 || !strings.Contains(stderr, "--ipvs-") {
			t.Errorf("%v: exit %d, want 2 with the flag named: %s", args, code, stderr)
		}
	}
}
