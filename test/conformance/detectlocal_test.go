package conformance

import (
	"os/exec"
	"testing"

	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// --detect-local-mode decides which sources count as this node's pods:
// their traffic to a cluster IP keeps its source; everything else is
// masqueraded. Real traffic in the lab for NodeCIDR (the Node's podCIDR
// 10.244.0.0/24: web-3 at 10.244.1.2 is not local), InterfaceNamePrefix
// ("p": the lab's pod veths are p0, p1, ...) and ClusterCIDR (10.244.0.0/16:
// web-3 is local).
func TestDetectLocalModes(t *testing.T) {
	requireRoot(t)
	_, _, l, dir := setupScenario(t, "clusterip-tcp")

	client := l.Pod(scenarios.Topology.Client.Name) // 10.244.0.100, on veth p<n>
	remote := l.Pod("web-3")                        // 10.244.1.2
	for _, tc := range []struct {
		name         string
		flags        []string
		remoteMasked bool
	}{
		{"ClusterCIDR", []string{"--detect-local-mode", "ClusterCIDR", "--cluster-cidr", "10.244.0.0/16"}, false},
		{"NodeCIDR", []string{"--detect-local-mode", "NodeCIDR"}, true},
		{"InterfaceNamePrefix", []string{"--detect-local-mode", "InterfaceNamePrefix", "--pod-interface-name-prefix", "p"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"netns", "exec", l.Node, switchyardBinary(t), "--once"}, commonFlags(dir, scenarios.Config{})...)
			args = append(args, tc.flags...)
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("switchyard --once %v: %v\n%s", tc.flags, err, out)
			}
			expectSource(t, l, client, "10.96.0.10:80", false)
			expectSource(t, l, remote, "10.96.0.10:80", tc.remoteMasked)
			// Off-node sources are always masqueraded.
			r, err := lab.DialFrom(l.Outside, scenarios.Topology.OutsideClient, "tcp", "10.96.0.10:80", lab.DefaultDialTimeout)
			if err != nil {
				t.Fatalf("outside → cluster IP: %v", err)
			}
			if r.Peer.Addr() == scenarios.Topology.OutsideClient {
				t.Errorf("outside → cluster IP: %s saw the client's own address, want masqueraded", r.Name)
			}
		})
	}
}

// expectSource sends requests from pod p to dst and checks the source the
// answering endpoints saw (other than p itself, which is always
// masqueraded: hairpin).
func expectSource(t *testing.T, l *lab.Lab, p *lab.PodNS, dst string, masked bool) {
	t.Helper()
	seen := 0
	for i := 0; i < 12; i++ {
		r, err := l.Dial(p.NS, "tcp", dst)
		if err != nil {
			t.Fatalf("%s → %s: %v", p.Name, dst, err)
		}
		if r.Name == p.Name {
			continue
		}
		seen++
		kept := r.Peer.Addr() == p.IP
		if kept == masked {
			t.Errorf("%s → %s: %s saw source %v; masqueraded want %v", p.Name, dst, r.Name, r.Peer.Addr(), masked)
		}
	}
	if seen == 0 {
		t.Errorf("%s → %s: every answer came from itself", p.Name, dst)
	}
}
