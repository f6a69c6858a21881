package ipvse2e

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// TestDualStack runs `switchyard --once --proxy-mode=ipvs` in a dual-stack
// lab on test/scenarios' dual-stack fixture (the one
// test/conformance's TestDualStackRealTraffic runs in iptables mode) and
// sends it the same real TCP and UDP traffic: IPv6 cluster IPs from a pod
// (source kept) and from the node, IPv6 node ports on the node's IPv6
// address and on the outside gateway's (masqueraded, as in IPv4), the
// IPv4 side of the dual-stack Service, IPv6 hairpin, an IPv6 Service
// without endpoints (refused), eTP Local (local endpoint, source kept) and
// session affinity (IPVS persistence) over IPv6. Then --cleanup removes
// the IPv6 virtual servers, addresses and ip6tables chains.
func TestDualStack(t *testing.T) {
	requireIPVS(t)
	begin := time.Now()
	l := lab.New(t, lab.Spec{
		NodeIP:    scenarios.Topology.NodeIP,
		OutsideIP: scenarios.Topology.OutsideClient,
		OutsideGW: scenarios.Topology.NodeAddrs[1],
		DualStack: true,
		Pods:      scenarios.DualStackLabPods(true),
	})
	for _, p := range scenarios.DualStackPods {
		if p.Serves {
			startEcho(t, l.Pod(p.Name).NS, p.Name, []uint16{8080}, []uint16{5353})
		}
	}
	t.Logf("dual-stack lab ready after %s", time.Since(begin).Round(time.Millisecond))
	dir := t.TempDir()
	writeManifest(t, dir, "objects.yaml", []byte(scenarios.DualStackManifest))
	var cfg scenarios.Config
	for _, c := range strings.Split(scenarios.DualStackClusterCIDRs, ",") {
		cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, netip.MustParsePrefix(c))
	}
	start := time.Now()
	out := runOnce(t, l, dir, cfg)
	t.Logf("switchyard --once took %s", time.Since(start).Round(time.Millisecond))
	vs := ipvsadm(t, l, l.Node)
	for head, n := range map[string]int{
		"TCP [fd00:10:96::6:1]:80 rr": 2, "UDP [fd00:10:96::6:1]:53 rr": 2, "TCP 10.96.6.1:80 rr": 2,
		"TCP [fd00:10::10]:30680 rr": 2, "UDP [2001:db8::1]:30653 rr": 2, "TCP [fd00:10::10]:30684 rr": 1,
		"TCP [fd00:10:96::6:2]:80 rr": 1, "TCP [fd00:10:96::6:3]:80 rr": 0,
	} {
		if v := vs[head]; v == nil || len(v.Dests) != n {
			t.Errorf("ipvsadm -Ln: want %q with %d real servers; got:\n  %s\nswitchyard said:\n%s", head, n, strings.Join(shape(vs), "\n  "), out)
		}
	}
	if save := l.MustExec(l.Node, "ip6tables-nft-save", "-t", "nat"); !strings.Contains(save, "SWY-IPVS-") {
		t.Errorf("no SWY-IPVS- chains in ip6tables-nft-save -t nat:\n%s", save)
	}

	start = time.Now()
	scenarios.RunDualStackChecks(t, l)
	t.Logf("traffic checks took %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	switchyard(t, l, append([]string{"--cleanup"}, flags(dir, cfg)...)...)
	t.Logf("switchyard --cleanup took %s", time.Since(start).Round(time.Millisecond))
	if vs := ipvsadm(t, l, l.Node); len(vs) != 0 {
		t.Errorf("after --cleanup: ipvsadm -Ln:\n  %s", strings.Join(shape(vs), "\n  "))
	}
	if save := l.MustExec(l.Node, "ip6tables-nft-save"); strings.Contains(save, "SWY-") {
		t.Errorf("ip6tables chains left after --cleanup:\n%s", save)
	}
}
