package app

import (
	"context"
	"log/slog"

	"github.com/vishvananda/netlink"
)

// watchAddresses calls changed whenever an interface address of this
// network namespace is added or removed, so that the node-port addresses
// (--nodeport-addresses, and the local addresses the IPVS mode binds) follow
// addresses that come and go, not only Node object updates. It returns
// when ctx ends; a failed subscription is logged and the node falls back
// to resolving addresses on Node updates only.
func watchAddresses(ctx context.Context, changed func(), log *slog.Logger) {
	updates := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
		ErrorCallback: func(err error) {
			log.Warn("address watch failed; node-port addresses follow Node updates only", "err", err)
		},
	})
	if err != nil {
		log.Warn("cannot watch interface addresses; node-port addresses follow Node updates only", "err", err)
		return
	}
	go func() {
		<-ctx.Done()
		close(done)
	}()
	for u := range updates {
		log.Debug("interface address changed", "addr", u.LinkAddress.String(), "new", u.NewAddr, "link", u.LinkIndex)
		changed()
	}
}
