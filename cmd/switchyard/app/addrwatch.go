package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/switchyard-proxy/switchyard/ipvs"
)

// addrSettle is how long the address watch waits for a burst of address
// events to end before it asks for the node to be resolved again.
const addrSettle = 200 * time.Millisecond

// watchAddresses calls changed when interface addresses of this network
// namespace are added or removed, so that the node-port addresses
// (--nodeport-addresses, and the local addresses the IPVS mode binds)
// follow addresses that come and go, not only Node object updates. Events
// of swy-ipvs0 (the IPVS mode's service VIPs) are ignored and bursts are
// coalesced. It returns when ctx ends; a failed subscription is logged and
// the node falls back to resolving addresses on Node updates only.
func watchAddresses(ctx context.Context, changed func(), log *slog.Logger) {
	updates := make(chan netlink.AddrUpdate, 256)
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
	names := map[int]string{} // link index → name, for skipping swy-ipvs0
	linkName := func(index int) string {
		if n, ok := names[index]; ok {
			return n
		}
		n := ""
		if l, err := netlink.LinkByIndex(index); err == nil {
			n = l.Attrs().Name
		}
		names[index] = n
		return n
	}
	var settle <-chan time.Time
	for {
		select {
		case u, ok := <-updates:
			if !ok {
				return
			}
			if linkName(u.LinkIndex) == ipvs.DummyInterface {
				continue
			}
			log.Debug("interface address changed", "addr", u.LinkAddress.String(), "new", u.NewAddr, "link", u.LinkIndex)
			if settle == nil {
				settle = time.After(addrSettle)
			}
		case <-settle:
			settle = nil
			changed()
		}
	}
}
