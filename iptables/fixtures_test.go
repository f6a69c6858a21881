package iptables

import (
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/proxiertest"
)

// Snapshots built by hand: the fixtures shared with the nftables mode.
var (
	ep          = proxiertest.EP
	svc         = proxiertest.Svc
	resolve     = proxiertest.Resolve
	snapshot    = proxiertest.Snapshot
	bigSnapshot = proxiertest.BigSnapshot
)

// goldenCases are the Snapshot fixtures of the golden tests.
func goldenCases() map[string][]*proxier.Snapshot { return proxiertest.GoldenCases() }
