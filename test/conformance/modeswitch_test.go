package conformance

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// ipvsLeftovers is what switchyard's IPVS mode leaves on a node, minus the
// virtual servers (this kernel has no IPVS; the VM suite covers them): its
// chains hooked from built-in chains, and an ipset they match.
const ipvsLeftovers = `*nat
:SWY-IPVS-SERVICES - [0:0]
:SWY-IPVS-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment "switchyard ipvs service portals" -j SWY-IPVS-SERVICES
-A OUTPUT -m comment --comment "switchyard ipvs service portals" -j SWY-IPVS-SERVICES
-A POSTROUTING -j SWY-IPVS-POSTROUTING
-A SWY-IPVS-SERVICES -m set --match-set SWY-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
`

// A node that ran the IPVS mode switches to the iptables mode: the first
// sync succeeds next to the IPVS mode's chains (no "chain busy"), traffic
// flows, and then the IPVS mode's chains and ipsets are gone.
func TestModeSwitchFromIPVSLeftovers(t *testing.T) {
	requireRoot(t)
	s, _, l, dir := setupScenario(t, "clusterip-tcp")
	inNode := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", l.Node}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	inNode("ipset", "create", "SWY-CLUSTER-IP", "hash:ip,port")
	cmd := exec.Command("ip", "netns", "exec", l.Node, "iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(ipvsLeftovers)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("load IPVS-mode leftovers: %v\n%s", err, out)
	}

	runOnce(t, l, dir, s.Config)

	client := l.Pod(scenarios.Topology.Client.Name)
	if r, err := l.Dial(client.NS, "tcp", "10.96.0.10:80"); err != nil {
		t.Fatalf("traffic after the mode switch: %v", err)
	} else {
		t.Logf("10.96.0.10:80 answered by %s", r.Name)
	}
	if save := inNode("iptables-save"); strings.Contains(save, "SWY-IPVS-") || !strings.Contains(save, "SWY-SERVICES") {
		t.Errorf("after the switch, want SWY-SERVICES and no SWY-IPVS- chain:\n%s", save)
	}
	if sets := inNode("ipset", "list", "-n"); strings.Contains(sets, "SWY-") {
		t.Errorf("IPVS-mode ipsets left: %s", sets)
	}
}

// A node switches iptables -> nftables -> iptables with `switchyard
// --once`: after each run traffic flows and nothing of the other mode is
// left (no SWY- chain in nftables mode, no switchyard nft table in
// iptables mode); `--cleanup` then removes the nftables tables too.
func TestModeSwitchIPTablesNFTables(t *testing.T) {
	requireRoot(t)
	s, _, l, dir := setupScenario(t, "clusterip-tcp")
	inNode := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", l.Node}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	client := l.Pod(scenarios.Topology.Client.Name)
	for _, mode := range []string{"iptables", "nftables", "iptables"} {
		runOnceMode(t, l, dir, s.Config, mode)
		if r, err := l.Dial(client.NS, "tcp", "10.96.0.10:80"); err != nil {
			t.Fatalf("%s mode: traffic: %v", mode, err)
		} else {
			t.Logf("%s mode: 10.96.0.10:80 answered by %s", mode, r.Name)
		}
		save := inNode("iptables-nft-save")
		tables := inNode("nft", "list", "tables")
		hasChains := strings.Contains(save, ":SWY-SERVICES")
		hasTable := strings.Contains(tables, "table ip switchyard")
		if mode == "nftables" && (hasChains || !hasTable) {
			t.Errorf("nftables mode: SWY- chains %v (want none), switchyard table %v (want it)\n%s\n%s", hasChains, hasTable, save, tables)
		}
		if mode == "iptables" && (!hasChains || hasTable) {
			t.Errorf("iptables mode: SWY- chains %v (want them), switchyard table %v (want none)\n%s", hasChains, hasTable, tables)
		}
	}
	// --cleanup (in nftables mode, after an nftables run) removes both.
	runOnceMode(t, l, dir, s.Config, "nftables")
	if out, err := exec.Command("ip", "netns", "exec", l.Node, switchyardBinary(t), "--cleanup", "--proxy-mode", "nftables").CombinedOutput(); err != nil {
		t.Fatalf("switchyard --cleanup: %v\n%s", err, out)
	}
	if tables := inNode("nft", "list", "tables"); strings.Contains(tables, "switchyard") {
		t.Errorf("--cleanup left the nft table:\n%s", tables)
	}
	if save := inNode("iptables-nft-save"); strings.Contains(save, ":SWY-") {
		t.Errorf("--cleanup left SWY- chains:\n%s", save)
	}
}
