package app

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/ipvs"
)

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
