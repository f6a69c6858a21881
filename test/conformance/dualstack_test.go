package conformance

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// TestDualStackRealTraffic runs `switchyard --once` (iptables mode) in a
// dual-stack lab and checks with real TCP and UDP packets: a pod reaches
// the IPv6 cluster IP with its source kept, the node reaches it, an
// outside client reaches the IPv6 node port (masqueraded), the IPv4 side of
// the same Service still works, an IPv6-only Service answers on its
// cluster IP and node port (hairpin masqueraded), an IPv6 Service without
// endpoints refuses, eTP Local and session affinity hold over IPv6,
// --detect-local-mode NodeCIDR uses the IPv6 pod CIDR, and a Node object
// listing only IPv4 still gets its IPv6 services proxied.
//
//	sudo go test -v -run TestDualStackRealTraffic ./test/conformance/
func TestDualStackRealTraffic(t *testing.T) { testDualStackRealTraffic(t, "iptables") }

// TestDualStackRealTrafficNFTables is TestDualStackRealTraffic in nftables
// mode (tables ip switchyard and ip6 switchyard).
func TestDualStackRealTrafficNFTables(t *testing.T) { testDualStackRealTraffic(t, "nftables") }

func testDualStackRealTraffic(t *testing.T, mode string) {
	requireRoot(t)
	if _, err := exec.LookPath("ip6tables-nft-restore"); err != nil {
		t.Fatalf("ip6tables-nft-restore (Debian package iptables) is required: %v", err)
	}
	l := lab.New(t, lab.Spec{
		NodeIP:    scenarios.Topology.NodeIP,
		OutsideIP: scenarios.Topology.OutsideClient,
		OutsideGW: scenarios.Topology.NodeAddrs[1],
		DualStack: true,
		Pods:      scenarios.DualStackLabPods(false),
	})
	dir := t.TempDir()
	writeManifest(t, dir, "objects.yaml", []byte(scenarios.DualStackManifest))
	args := append([]string{"netns", "exec", l.Node, switchyardBinary(t), "--once"}, modeFlags(dir, scenarios.Config{}, mode)...)
	args = append(args, "--cluster-cidr", scenarios.DualStackClusterCIDRs)
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("switchyard --once: %v\n%s", err, out)
	}
	save := l.MustExec(l.Node, "ip6tables-nft-save", "-t", "nat")
	if mode == "nftables" {
		save = l.MustExec(l.Node, "nft", "list", "table", "ip6", "switchyard")
	}
	if !strings.Contains(save, "fd00:10:96::6:1") {
		t.Fatalf("no IPv6 rules for the dual-stack service's cluster IP fd00:10:96::6:1; switchyard said:\n%s\nip6tables-nft-save -t nat:\n%s", out, save)
	}

	client, ds2 := l.Pod("client"), l.Pod("ds-2")
	nodeAddrs := map[netip.Addr]bool{l.NodeIP: true, l.OutsideGW: true, l.NodeIPv6: true, l.OutsideGWv6: true}
	scenarios.RunDualStackChecks(t, l)

	// --detect-local-mode NodeCIDR takes the IPv6 pod CIDR from the Node's
	// spec.podCIDRs: the client (fd00:10:244::100, inside fd00:10:244::/64)
	// keeps its source, node-b's pod ds-2 (fd00:10:244:1::2) is masqueraded.
	t.Run("NodeCIDR", func(t *testing.T) {
		args := append([]string{"netns", "exec", l.Node, switchyardBinary(t), "--once"}, modeFlags(dir, scenarios.Config{}, mode)...)
		args = append(args, "--detect-local-mode", "NodeCIDR")
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("switchyard --once --detect-local-mode NodeCIDR: %v\n%s", err, out)
		}
		for _, c := range []struct {
			p      *lab.PodNS
			masked bool
		}{{client, false}, {ds2, true}} {
			for i := 0; i < singleRequests; i++ {
				r, err := lab.DialFrom(c.p.NS, c.p.IPv6, "tcp", "[fd00:10:96::6:1]:80", lab.DefaultDialTimeout)
				if err != nil {
					t.Fatalf("%s → [fd00:10:96::6:1]:80: %v", c.p.Name, err)
				}
				kept := r.Peer.Addr() == c.p.IPv6
				if kept == c.masked || (c.masked && !nodeAddrs[r.Peer.Addr()]) {
					t.Errorf("%s → [fd00:10:96::6:1]:80: %s saw source %v; want masqueraded %v", c.p.Name, r.Name, r.Peer.Addr(), c.masked)
				}
			}
		}
	})

	// Families come from what the kernel can proxy, not from the Node's
	// addresses (issue 8 item 7): with a Node object that lists only its
	// IPv4 address and IPv4 pod CIDR, the IPv6 cluster IP and node port
	// are still served.
	t.Run("IPv4-only Node object", func(t *testing.T) {
		v4node := strings.Replace(scenarios.DualStackManifest, "  - {type: InternalIP, address: \"fd00:10::10\"}\n", "", 1)
		v4node = strings.Replace(v4node, `podCIDRs: ["10.244.0.0/24", "fd00:10:244::/64"]`, `podCIDRs: ["10.244.0.0/24"]`, 1)
		if v4node == scenarios.DualStackManifest || strings.Contains(v4node, `"fd00:10::10"`) {
			t.Fatal("could not remove the Node's IPv6 address from the manifest")
		}
		writeManifest(t, dir, "objects.yaml", []byte(v4node))
		// Start from a clean node, so no IPv6 rule of the runs above
		// answers in place of this one's.
		if out, err := exec.Command("ip", "netns", "exec", l.Node, switchyardBinary(t), "--cleanup", "--iptables-backend", "nft").CombinedOutput(); err != nil {
			t.Fatalf("switchyard --cleanup: %v\n%s", err, out)
		}
		if save := l.MustExec(l.Node, "ip6tables-nft-save", "-t", "nat"); strings.Contains(save, "SWY-") {
			t.Fatalf("IPv6 rules left after --cleanup:\n%s", save)
		}
		args := append([]string{"netns", "exec", l.Node, switchyardBinary(t), "--once"}, modeFlags(dir, scenarios.Config{}, mode)...)
		args = append(args, "--cluster-cidr", scenarios.DualStackClusterCIDRs)
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("switchyard --once: %v\n%s", err, out)
		}
		for _, c := range []struct {
			ns       string
			src      netip.Addr
			dst      string
			wantSeen netip.Addr // invalid: a node address
		}{
			{client.NS, client.IPv6, "[fd00:10:96::6:1]:80", client.IPv6},
			{l.Outside, l.OutsideIPv6, "[fd00:10::10]:30680", netip.Addr{}},
		} {
			r, err := lab.DialFrom(c.ns, c.src, "tcp", c.dst, lab.DefaultDialTimeout)
			if err != nil {
				t.Errorf("%s with an IPv4-only Node object: %v", c.dst, err)
				continue
			}
			if peer := r.Peer.Addr(); (c.wantSeen.IsValid() && peer != c.wantSeen) || (!c.wantSeen.IsValid() && !nodeAddrs[peer]) {
				t.Errorf("%s: %s saw source %v", c.dst, r.Name, peer)
			}
		}
	})
}
