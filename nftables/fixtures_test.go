package nftables

import (
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/proxiertest"
)

// Snapshots built by hand: the fixtures shared with the iptables mode.
var (
	ep          = proxiertest.EP
	ips         = proxiertest.IPs
	svc         = proxiertest.Svc
	resolve     = proxiertest.Resolve
	snapshot    = proxiertest.Snapshot
	bigSnapshot = proxiertest.BigSnapshot
)

// goldenCases are the shared golden fixtures plus a case of names no valid
// object holds: they reach the table only as comments, escaped.
func goldenCases() map[string][]*proxier.Snapshot {
	cases := proxiertest.GoldenCases()
	hostile := svc("ns\"; flush ruleset", "web\n}", "p\"x", proxier.TCP, "10.96.0.99", 80, ep("10.244.1.9:80", false))
	cases["hostile-names"] = []*proxier.Snapshot{snapshot(proxier.IPv4, hostile)}
	return cases
}
