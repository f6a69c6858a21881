package ipvse2e

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// excludeService is a NodePort Service with one endpoint (pod-a).
const excludeService = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.20.1
  clusterIPs: ["10.96.20.1"]
  ipFamilies: [IPv4]
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30200}]
`

// TestExcludeCIDRsAndTimeouts runs the real binary with
// --ipvs-exclude-cidrs and the three IPVS timeouts (kube-proxy's flags):
//   - `ipvsadm -L --timeout` shows the timeouts after the first sync;
//   - a foreign virtual server on a node address in the node-port range
//     (which switchyard otherwise takes for a stale node port of its own
//     and deletes: the control server on the other node address shows it)
//     survives the syncs and `switchyard --cleanup` when its address is in
//     an excluded CIDR;
//   - a Service's node port on an excluded address is still programmed
//     and carries traffic, and --cleanup leaves it (exclusion only ever
//     stops deletions, as in kube-proxy).
func TestExcludeCIDRsAndTimeouts(t *testing.T) {
	requireIPVS(t)
	a := podA
	a.Ports = map[proxier.Protocol][]uint16{proxier.TCP: {8080}}
	l := newLab(t, []scenarios.Pod{a})
	gw := scenarios.Topology.NodeAddrs[1].String() // the node's second address (the outside network's gateway)
	const (
		protected = "TCP %s:31999 wlc"
		control   = "TCP 10.0.0.10:31998 wlc"
		ownOnGW   = "TCP %s:30200 rr"
		ownOnNode = "TCP 10.0.0.10:30200 rr"
	)
	prot, own := strings.Replace(protected, "%s", gw, 1), strings.Replace(ownOnGW, "%s", gw, 1)
	l.MustExec(l.Node, "ipvsadm", "-A", "-t", gw+":31999", "-s", "wlc")
	l.MustExec(l.Node, "ipvsadm", "-A", "-t", "10.0.0.10:31998", "-s", "wlc")
	dir := t.TempDir()
	writeManifest(t, dir, "web.yaml", []byte(liveNode+"---\n"+excludeService+slice("web", `[{name: http, protocol: TCP, port: 8080}]`, a)))
	cfg := scenarios.Config{ClusterCIDRs: []netip.Prefix{scenarios.Topology.ClusterCIDR}}
	extra := []string{"--ipvs-exclude-cidrs", gw + "/32,fd00:5::/64",
		"--ipvs-tcp-timeout", "3600s", "--ipvs-tcpfin-timeout", "30s", "--ipvs-udp-timeout", "45s"}

	out := runOnce(t, l, dir, cfg, extra...)
	if strings.Contains(out, "no effect") {
		t.Errorf("a flag was reported to have no effect:\n%s", out)
	}
	if got := strings.TrimSpace(l.MustExec(l.Node, "ipvsadm", "-L", "--timeout")); got != "Timeout (tcp tcpfin udp): 3600 30 45" {
		t.Errorf("ipvsadm -L --timeout: %q, want 3600 30 45", got)
	}
	vs := ipvsadm(t, l, l.Node)
	for _, head := range []string{prot, own, ownOnNode, "TCP 10.96.20.1:80 rr"} {
		if vs[head] == nil {
			t.Errorf("after the first sync: %q missing; ipvsadm -Ln:\n  %s", head, strings.Join(shape(vs), "\n  "))
		}
	}
	if vs[control] != nil {
		t.Errorf("control: %q (a node address, node-port range, not excluded) survived the sync: the protected one proves nothing", control)
	}
	c, _ := requests(t, l.Outside, scenarios.Topology.OutsideClient, proxier.TCP, gw+":30200", singleRequests)
	expectPods(t, "outside → node port on the excluded address", c, []string{a.Name}, false, false)

	switchyard(t, l, append([]string{"--cleanup"}, flags(dir, cfg, extra...)...)...)
	vs = ipvsadm(t, l, l.Node)
	if len(vs) != 2 || vs[prot] == nil || vs[own] == nil || vs[ownOnNode] != nil {
		t.Errorf("after --cleanup: want only the excluded %q and %q; ipvsadm -Ln:\n  %s", prot, own, strings.Join(shape(vs), "\n  "))
	}
	if out, err := l.Exec(l.Node, "ip", "link", "show", "swy-ipvs0"); err == nil {
		t.Errorf("swy-ipvs0 still exists: %s", out)
	}
	// Without the flag, --cleanup takes the stale node port (the control).
	switchyard(t, l, append([]string{"--cleanup"}, flags(dir, cfg)...)...)
	vs = ipvsadm(t, l, l.Node)
	if vs[own] != nil || vs[prot] != nil {
		t.Errorf("--cleanup without --ipvs-exclude-cidrs kept node-port servers on a node address:\n  %s", strings.Join(shape(vs), "\n  "))
	}
}
