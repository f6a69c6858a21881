package hostport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/conntrack"
	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/planner"
	"github.com/switchyard-proxy/switchyard/test/lab"
)

// portmapBinary is where Debian's containernetworking-plugins puts the CNI
// portmap plugin (make deps installs it).
const portmapBinary = "/usr/lib/cni/portmap"

// hostPortImpl programs the side-by-side scenarios' host ports in a lab
// node: the CNI portmap plugin or switchyard.
type hostPortImpl interface {
	// add maps the pod's ports (in the order given: for portmap, the
	// order of CNI ADDs).
	add(t *testing.T, pod *corev1.Pod)
	// remove unmaps the pod (CNI DEL; switchyard: the pod is gone).
	remove(t *testing.T, pod *corev1.Pod)
}

// portmapImpl calls the real portmap binary as a container runtime does:
// CNI_COMMAND=ADD/DEL, the network configuration with a prevResult and
// runtimeConfig.portMappings on stdin, run inside the lab's node namespace.
type portmapImpl struct {
	l *lab.Lab
}

func (p *portmapImpl) call(t *testing.T, command string, pod *corev1.Pod) {
	t.Helper()
	type mapping struct {
		HostPort      int32  `json:"hostPort"`
		ContainerPort int32  `json:"containerPort"`
		Protocol      string `json:"protocol"`
		HostIP        string `json:"hostIP,omitempty"`
	}
	var mappings []mapping
	for _, cp := range pod.Spec.Containers[0].Ports {
		mappings = append(mappings, mapping{cp.HostPort, cp.ContainerPort, strings.ToLower(string(cp.Protocol)), cp.HostIP})
	}
	podNS := p.l.Pod(pod.Name)
	conf := map[string]any{
		"cniVersion":    "1.0.0",
		"name":          "hp-lab",
		"type":          "portmap",
		"capabilities":  map[string]bool{"portMappings": true},
		"snat":          true,
		"runtimeConfig": map[string]any{"portMappings": mappings},
		"prevResult": map[string]any{
			"cniVersion": "1.0.0",
			"interfaces": []map[string]string{{"name": podNS.NodeIface}, {"name": "eth0", "sandbox": "/run/netns/" + podNS.NS}},
			"ips":        []map[string]any{{"address": podNS.IP.String() + "/32", "interface": 1, "gateway": p.l.NodeIP.String()}},
		},
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", p.l.Node, portmapBinary)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID=hp-"+pod.Name, "CNI_NETNS=/run/netns/"+podNS.NS,
		"CNI_IFNAME=eth0", "CNI_PATH=/usr/lib/cni")
	cmd.Stdin = bytes.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("portmap %s %s: %v\n%s", command, pod.Name, err, out.String())
	}
}

func (p *portmapImpl) add(t *testing.T, pod *corev1.Pod) { p.call(t, "ADD", pod) }

func (p *portmapImpl) remove(t *testing.T, pod *corev1.Pod) { p.call(t, "DEL", pod) }

// switchyardImpl is the hostport Programmer over the real iptables mode.
type switchyardImpl struct {
	l    *lab.Lab
	p    *Programmer
	pods []*corev1.Pod
}

func newSwitchyardImpl(t *testing.T, l *lab.Lab, auto bool) *switchyardImpl {
	t.Helper()
	ex := iptexec.NetnsExecutor(l.Node)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	inner, err := iptables.New(iptables.Config{Mode: iptables.ModeNFT, Executor: ex, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := conntrack.NewNetlinkTableAt(l.Node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ct.Close() })
	p := Wrap(inner, Config{Mode: iptexec.ModeNFT, Executor: ex, Logger: quiet, Listen: nsListen(l.Node), Conntrack: ct, Auto: auto})
	t.Cleanup(func() { _ = p.Cleanup(context.Background()) })
	return &switchyardImpl{l: l, p: p}
}

func (s *switchyardImpl) sync(t *testing.T) {
	t.Helper()
	cfg := &planner.Config{Node: planner.NodeInfo{Name: "node-1"}, Families: []proxier.IPFamily{proxier.IPv4}}
	hps, _ := planner.HostPorts(s.pods, cfg)
	snap := &proxier.Snapshot{Family: proxier.IPv4, NodeName: "node-1", NodeIPs: []netip.Addr{s.l.NodeIP},
		NodePortAddresses: proxier.NodePortAddresses{All: true}, FullSync: true,
		Masquerade: proxier.MasqueradeConfig{MarkBit: 14}, HostPorts: hps[proxier.IPv4]}
	if _, err := s.p.Sync(context.Background(), []*proxier.Snapshot{snap}); err != nil {
		t.Fatal(err)
	}
}

func (s *switchyardImpl) add(t *testing.T, pod *corev1.Pod) {
	s.pods = append(s.pods, pod)
	s.sync(t)
}

func (s *switchyardImpl) remove(t *testing.T, pod *corev1.Pod) {
	var kept []*corev1.Pod
	for _, p := range s.pods {
		if p != pod {
			kept = append(kept, p)
		}
	}
	s.pods = kept
	s.sync(t)
}

// sideBySideLab is the lab both implementations run in: hp-web serves TCP
// and UDP on 80, hp-client has no server, hp-old and hp-new both want 9090.
func sideBySideLab(t *testing.T) *lab.Lab {
	return lab.New(t, lab.Spec{Pods: []lab.Pod{
		{Name: "hp-web", IP: netip.MustParseAddr("10.244.0.5"), TCPPorts: []uint16{80}, UDPPorts: []uint16{80}},
		{Name: "hp-client", IP: netip.MustParseAddr("10.244.0.6"), NoEcho: true},
		{Name: "hp-old", IP: netip.MustParseAddr("10.244.0.7"), TCPPorts: []uint16{80}},
		{Name: "hp-new", IP: netip.MustParseAddr("10.244.0.8"), TCPPorts: []uint16{80}},
	}})
}

// sideBySidePods are the pods of the scenarios (hp-old an hour older).
func sideBySidePods(l *lab.Lab) (web, old, newer *corev1.Pod) {
	now := time.Now()
	web = labPod("hp-web", "10.244.0.5", now,
		corev1.ContainerPort{HostPort: 8080, ContainerPort: 80, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{HostPort: 8080, ContainerPort: 80, Protocol: corev1.ProtocolUDP},
		corev1.ContainerPort{HostPort: 8081, ContainerPort: 80, Protocol: corev1.ProtocolTCP, HostIP: l.NodeIP.String()})
	old = labPod("hp-old", "10.244.0.7", now.Add(-time.Hour), corev1.ContainerPort{HostPort: 9090, ContainerPort: 80, Protocol: corev1.ProtocolTCP})
	newer = labPod("hp-new", "10.244.0.8", now, corev1.ContainerPort{HostPort: 9090, ContainerPort: 80, Protocol: corev1.ProtocolTCP})
	return web, old, newer
}

// scenarios runs every scenario against the lab and returns, per
// scenario, what happened: "<pod> sees <source>" (source "client" when
// the client's own address was kept, "node" for a node address,
// "127.0.0.1" for loopback), "refused", "timeout", or for the binding
// scenario "bound" / "in use".
func scenarios(t *testing.T, l *lab.Lab, impl hostPortImpl) map[string]string {
	t.Helper()
	web, old, newer := sideBySidePods(l)
	impl.add(t, web)
	// The newer pod's sandbox is set up first (e.g. the older one's was
	// recreated after a node reboot).
	impl.add(t, newer)
	impl.add(t, old)
	node := l.NodeIP.String()
	client := l.Pod("hp-client")
	nodeAddrs := []netip.Addr{l.NodeIP, l.OutsideGW}
	dial := func(ns string, self netip.Addr, proto, addr string) string {
		r, err := lab.Dial(ns, proto, addr, 1500*time.Millisecond)
		switch {
		case errors.Is(err, lab.ErrRefused):
			return "refused"
		case errors.Is(err, lab.ErrTimeout):
			return "timeout"
		case err != nil:
			return err.Error()
		}
		peer := r.Peer.Addr().String()
		switch {
		case r.Peer.Addr() == self:
			peer = "client"
		case r.Peer.Addr().IsLoopback():
		case r.Peer.Addr() == nodeAddrs[0] || r.Peer.Addr() == nodeAddrs[1]:
			peer = "node"
		}
		return r.Name + " sees " + peer
	}
	bind := func(network, addr string) string {
		c, err := nsListen(l.Node)(network, addr)
		if errors.Is(err, syscall.EADDRINUSE) {
			return "in use"
		}
		if err != nil {
			return err.Error()
		}
		_ = c.Close()
		return "bound"
	}
	out := map[string]string{}
	for _, proto := range []string{"tcp", "udp"} {
		out["outside -> nodeIP:8080 "+proto] = dial(l.Outside, l.OutsideIP, proto, node+":8080")
		out["outside -> other node address:8080 "+proto] = dial(l.Outside, l.OutsideIP, proto, l.OutsideGW.String()+":8080")
		out["node -> nodeIP:8080 "+proto] = dial(l.Node, netip.Addr{}, proto, node+":8080")
		out["node -> 127.0.0.1:8080 "+proto] = dial(l.Node, netip.Addr{}, proto, "127.0.0.1:8080")
		out["other pod -> nodeIP:8080 "+proto] = dial(client.NS, client.IP, proto, node+":8080")
		out["hairpin -> nodeIP:8080 "+proto] = dial(l.Pod("hp-web").NS, l.Pod("hp-web").IP, proto, node+":8080")
		out["node process binds :8080 "+proto] = bind(proto+"4", ":8080")
	}
	out["outside -> hostIP:8081 tcp"] = dial(l.Outside, l.OutsideIP, "tcp", node+":8081")
	out["outside -> other node address:8081 tcp"] = dial(l.Outside, l.OutsideIP, "tcp", l.OutsideGW.String()+":8081")
	out["conflict: outside -> nodeIP:9090 tcp"] = dial(l.Outside, l.OutsideIP, "tcp", node+":9090")
	impl.remove(t, web)
	out["removed: outside -> nodeIP:8080 tcp"] = dial(l.Outside, l.OutsideIP, "tcp", node+":8080")
	out["removed: node process binds :8080 tcp"] = bind("tcp4", ":8080")
	return out
}

// TestPortmapSideBySide runs the same host-port scenarios against the CNI
// portmap plugin (Debian's containernetworking-plugins, called as a
// runtime calls it) and against switchyard, each in its own lab node, and
// checks the differences hostport/README.md lists, point by point. It then
// checks coexistence (auto mode stays off beside portmap's chains) and the
// README's migration steps.
func TestPortmapSideBySide(t *testing.T) {
	lab.RequireRoot(t)
	if _, err := os.Stat(portmapBinary); err != nil {
		t.Fatalf("the CNI portmap plugin is required (make deps: Debian package containernetworking-plugins): %v", err)
	}
	if _, err := exec.LookPath("iptables-nft-save"); err != nil {
		t.Fatalf("iptables-nft-save is required: %v", err)
	}

	pl := sideBySideLab(t)
	pm := &portmapImpl{l: pl}
	portmap := scenarios(t, pl, pm)

	sl := sideBySideLab(t)
	switchyard := scenarios(t, sl, newSwitchyardImpl(t, sl, false))

	same := func(v string) [2]string { return [2]string{v, v} }
	want := map[string][2]string{ // portmap, switchyard
		"outside -> nodeIP:8080 tcp":             same("hp-web sees client"),
		"outside -> nodeIP:8080 udp":             same("hp-web sees client"),
		"outside -> other node address:8080 tcp": same("hp-web sees client"),
		"outside -> other node address:8080 udp": same("hp-web sees client"),
		"outside -> hostIP:8081 tcp":             same("hp-web sees client"),
		"outside -> other node address:8081 tcp": same("refused"),
		"node -> nodeIP:8080 tcp":                same("hp-web sees node"),
		"node -> nodeIP:8080 udp":                same("hp-web sees node"),
		"node -> 127.0.0.1:8080 tcp":             same("hp-web sees node"),
		"node -> 127.0.0.1:8080 udp":             same("hp-web sees node"),
		"other pod -> nodeIP:8080 tcp":           same("hp-web sees client"),
		"other pod -> nodeIP:8080 udp":           same("hp-web sees client"),
		"hairpin -> nodeIP:8080 tcp":             same("hp-web sees node"),
		"hairpin -> nodeIP:8080 udp":             same("hp-web sees node"),
		"node process binds :8080 tcp":           {"bound", "in use"},
		"node process binds :8080 udp":           {"bound", "in use"},
		"conflict: outside -> nodeIP:9090 tcp":   {"hp-new sees client", "hp-old sees client"},
		"removed: outside -> nodeIP:8080 tcp":    same("refused"),
		"removed: node process binds :8080 tcp":  same("bound"),
	}
	var table []string
	for k := range want {
		table = append(table, fmt.Sprintf("%-42s portmap: %-20s switchyard: %s", k, portmap[k], switchyard[k]))
		if got := [2]string{portmap[k], switchyard[k]}; got != want[k] {
			t.Errorf("%s: portmap %q, switchyard %q; want %q, %q", k, got[0], got[1], want[k][0], want[k][1])
		}
	}
	for k := range portmap {
		if _, ok := want[k]; !ok {
			t.Errorf("scenario %q has no expectation", k)
		}
	}
	sort.Strings(table)
	t.Logf("side by side:\n%s", strings.Join(table, "\n"))

	// Coexistence: beside portmap's chains, auto mode programs nothing.
	web, _, _ := sideBySidePods(pl)
	pm.add(t, web)
	auto := newSwitchyardImpl(t, pl, true)
	auto.add(t, web)
	save := pl.MustExec(pl.Node, "iptables-nft-save", "-t", "nat")
	if strings.Contains(save, "SWY-HOSTPORT") || !strings.Contains(save, PortmapChain) {
		t.Fatalf("auto beside portmap:\n%s", save)
	}

	// Migration (README): CNI DEL of every pod (portmap removes its
	// per-pod chains), delete the then-empty CNI-HOSTPORT-* chains and
	// their jumps, restart switchyard (auto): it programs the ports.
	pm.remove(t, web)
	_, old, newer := sideBySidePods(pl)
	pm.remove(t, old)
	pm.remove(t, newer)
	save = pl.MustExec(pl.Node, "iptables-nft-save", "-t", "nat")
	if strings.Contains(save, "CNI-DN-") {
		t.Fatalf("portmap left per-pod chains after DEL:\n%s", save)
	}
	removePortmapChains(t, pl)
	restarted := newSwitchyardImpl(t, pl, true)
	restarted.add(t, web)
	r, err := lab.Dial(pl.Outside, "tcp", pl.NodeIP.String()+":8080", 3*time.Second)
	if err != nil || r.Name != "hp-web" {
		t.Errorf("after migrating, outside -> nodeIP:8080: %+v %v", r, err)
	}
}

// removePortmapChains is the README's migration step: remove the jumps to
// portmap's chains, then flush and delete every CNI-HOSTPORT-* chain.
func removePortmapChains(t *testing.T, l *lab.Lab) {
	t.Helper()
	save := l.MustExec(l.Node, "iptables-nft-save", "-t", "nat")
	var chains []string
	for _, line := range strings.Split(save, "\n") {
		if strings.HasPrefix(line, ":CNI-HOSTPORT-") {
			chains = append(chains, strings.Fields(line[1:])[0])
		}
		if strings.HasPrefix(line, "-A ") && strings.Contains(line, "-j CNI-HOSTPORT-") {
			if f := strings.Fields(line); !strings.HasPrefix(f[1], "CNI-HOSTPORT-") {
				// The shell reads the saved rule's quoting back.
				l.MustExec(l.Node, "sh", "-c", "iptables-nft -t nat -D "+strings.TrimPrefix(line, "-A "))
			}
		}
	}
	for _, c := range chains {
		l.MustExec(l.Node, "iptables-nft", "-t", "nat", "-F", c)
	}
	for _, c := range chains {
		l.MustExec(l.Node, "iptables-nft", "-t", "nat", "-X", c)
	}
	if len(chains) == 0 {
		t.Fatal("no CNI-HOSTPORT-* chain to remove: portmap's layout changed?")
	}
}
