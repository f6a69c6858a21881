package conformance

import (
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// With --nodeport-addresses as CIDRs, an address added to the node later
// serves node ports without any Node update: switchyard follows interface
// addresses over netlink (issue 8 item 8).
func TestNodePortAddressesFollowInterfaces(t *testing.T) {
	requireRoot(t)
	s, _, l, dir := setupScenario(t, "nodeport-etp-cluster")
	args := append([]string{switchyardBinary(t)}, commonFlags(dir, s.Config)...)
	args = append(args, "--nodeport-addresses", "192.0.2.0/24", "--min-sync-period", "100ms", "--sync-period", "1h", "--log-level", "debug")
	sy := &liveSwitchyard{t: t, proc: l.Start(l.Node, args...)}
	sy.waitSync(0, "start")

	dial := func(dst string) error {
		_, err := lab.DialFrom(l.Outside, scenarios.Topology.OutsideClient, "tcp", dst, time.Second)
		return err
	}
	if err := dial("192.0.2.1:30080"); err != nil {
		t.Fatalf("node port on the selected address 192.0.2.1: %v", err)
	}
	if err := dial("10.0.0.10:30080"); err == nil {
		t.Fatalf("node port answered on 10.0.0.10, outside --nodeport-addresses")
	}
	l.MustExec(l.Node, "ip", "addr", "add", "192.0.2.77/24", "dev", l.ExtIface)
	start := time.Now()
	deadline := start.Add(15 * time.Second)
	for {
		err := dial("192.0.2.77:30080")
		if err == nil {
			t.Logf("node port answered on the new address after %v", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node port never answered on the added address 192.0.2.77: %v\n%s", err, sy.proc.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
