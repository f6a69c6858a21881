package iptables

import (
	"context"
	"strings"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// routeLocalnet is the sysctl localhost node ports need: without it the
// kernel drops packets to 127.0.0.0/8 that DNAT sends to another host.
const routeLocalnet = "net.ipv4.conf.all.route_localnet"

// ensureRouteLocalnet sets route_localnet=1 once, when a snapshot asks
// for localhost node ports, through the Executor (so it lands in the
// network namespace the rules are in). A failure is logged, not fatal:
// only the localhost node ports stop working, and the next sync retries.
func (b *Backend) ensureRouteLocalnet(ctx context.Context, snaps []*proxier.Snapshot) {
	if b.routeLocalnetSet {
		return
	}
	wanted := false
	for _, s := range snaps {
		wanted = wanted || s.LocalhostNodePorts
	}
	if !wanted {
		return
	}
	out, _, err := b.cfg.Executor.Run(ctx, nil, "sysctl", "-n", routeLocalnet)
	if err == nil && strings.TrimSpace(string(out)) == "1" {
		b.routeLocalnetSet = true
		return
	}
	b.log.Info("setting route_localnet=1 to allow node ports on localhost; to change this disable --iptables-localhost-nodeports or leave loopback out of --nodeport-addresses")
	if _, stderr, err := b.cfg.Executor.Run(ctx, nil, "sysctl", "-w", routeLocalnet+"=1"); err != nil {
		b.log.Warn("cannot set route_localnet: node ports on 127.0.0.1 will not answer", "stderr", iptexec.Trim(stderr), "err", err)
		return
	}
	b.routeLocalnetSet = true
}
