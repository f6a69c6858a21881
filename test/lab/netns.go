package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The lab builds its namespaces, links, addresses and routes over netlink
// and writes sysctls through /proc/sys from a thread inside the namespace:
// no process per step. Under emulation (test/vm) each `ip` process cost
// seconds, and a dual-stack lab needed about 60 of them.

// netnsDir is where named network namespaces are mounted, as `ip netns`
// does (they are the same namespaces `ip -n` and `ip netns exec` open).
const netnsDir = "/run/netns"

// labNS is a namespace the lab created: a handle to it and a netlink
// handle whose sockets live in it.
type labNS struct {
	name string
	fd   netns.NsHandle
	nl   *netlink.Handle
}

func (n *labNS) close() {
	if n.nl != nil {
		n.nl.Close()
	}
	if n.fd.IsOpen() {
		_ = n.fd.Close()
	}
}

// createNS creates the named network namespace (as `ip netns add`), sets
// its loopback up, writes sysctls in it and returns it. mounted reports that
// the name exists under netnsDir (it must be deleted, even when err is not
// nil); a name that already existed is an error and is never touched.
func createNS(name string, sysctls map[string]string) (n *labNS, mounted bool, err error) {
	type result struct {
		n       *labNS
		mounted bool
		err     error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread moves into the new namespace and is never
		// unlocked: it ends with this goroutine, so no other goroutine
		// ever runs in that namespace by accident.
		runtime.LockOSThread()
		var r result
		r.n, r.mounted, r.err = createNSOnThread(name, sysctls)
		ch <- r
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.mounted, fmt.Errorf("create namespace %s: %w", name, r.err)
	}
	return r.n, r.mounted, nil
}

// createNSOnThread is createNS on a locked OS thread, which it leaves in
// the new namespace.
func createNSOnThread(name string, sysctls map[string]string) (*labNS, bool, error) {
	host, err := netns.Get()
	if err != nil {
		return nil, false, fmt.Errorf("current namespace: %w", err)
	}
	defer host.Close()
	if err := shareNetnsDir(); err != nil {
		return nil, false, err
	}
	path := filepath.Join(netnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if err != nil {
		return nil, false, err
	}
	_ = f.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		_ = os.Remove(path)
		return nil, false, fmt.Errorf("unshare: %w", err)
	}
	self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
	if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
		_ = os.Remove(path)
		return nil, false, fmt.Errorf("bind-mount %s: %w", path, err)
	}
	n := &labNS{name: name}
	if n.fd, err = netns.GetFromPath(path); err != nil {
		return nil, true, err
	}
	// Never write sysctls or links anywhere but in the new namespace.
	cur, err := netns.Get()
	if err != nil {
		n.close()
		return nil, true, fmt.Errorf("current namespace: %w", err)
	}
	same, isHost := cur.Equal(n.fd), cur.Equal(host)
	_ = cur.Close()
	if !same || isHost {
		n.close()
		return nil, true, fmt.Errorf("thread is not in the new namespace")
	}
	// The handle's sockets are opened in this thread's namespace and
	// stay there.
	if n.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
		n.close()
		return nil, true, fmt.Errorf("netlink: %w", err)
	}
	// Loopback goes up first, as before sysctls: setting it up pins some
	// of its IPv4 settings (send_redirects) against later writes of
	// "default".
	if err := n.up("lo"); err != nil {
		n.close()
		return nil, true, err
	}
	if err := writeSysctls(sysctls); err != nil {
		n.close()
		return nil, true, err
	}
	return n, true, nil
}

// shareNetnsDir makes netnsDir a shared mount point, as `ip netns add`
// does, so that namespace mounts propagate between mount namespaces.
func shareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: make it one.
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s shared: %w", netnsDir, err)
	}
	return nil
}

// deleteNS removes a namespace createNS made (as `ip netns del`): its links
// go with it once no process holds it.
func deleteNS(name string) error {
	path := filepath.Join(netnsDir, name)
	uerr := unix.Unmount(path, unix.MNT_DETACH)
	if err := os.Remove(path); err != nil {
		if uerr != nil {
			err = fmt.Errorf("%w (unmount: %v)", err, uerr)
		}
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	return nil
}

// writeSysctls writes each "net/..." key under /proc/sys, in key order.
// /proc/sys/net shows the calling thread's network namespace.
func writeSysctls(kv map[string]string) error {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(kv[k]+"\n"), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", k, kv[k], err)
		}
	}
	return nil
}

// setSysctls writes sysctls in the namespace of n from a thread inside it.
func setSysctls(n *labNS, kv map[string]string) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := netns.Set(n.fd); err != nil {
			ch <- fmt.Errorf("enter namespace %s: %w", n.name, err)
			return
		}
		ch <- writeSysctls(kv)
	}()
	if err := <-ch; err != nil {
		return fmt.Errorf("namespace %s: %w", n.name, err)
	}
	return nil
}

func (n *labNS) link(dev string) (netlink.Link, error) {
	link, err := n.nl.LinkByName(dev)
	if err != nil {
		return nil, fmt.Errorf("namespace %s: link %s: %w", n.name, dev, err)
	}
	return link, nil
}

// up sets link dev up (ip link set DEV up).
func (n *labNS) up(dev string) error {
	link, err := n.link(dev)
	if err != nil {
		return err
	}
	if err := n.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("namespace %s: link set %s up: %w", n.name, dev, err)
	}
	return nil
}

// veth creates a veth pair: name here, peerName in namespace peer
// (ip link add NAME type veth peer name PEER netns PEERNS).
func (n *labNS) veth(name string, peer *labNS, peerName string) error {
	attrs := netlink.NewLinkAttrs() // kernel defaults (queue lengths...)
	attrs.Name = name
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: peerName, PeerTxQLen: -1, PeerNamespace: netlink.NsFd(peer.fd)}
	if err := n.nl.LinkAdd(v); err != nil {
		return fmt.Errorf("namespace %s: veth %s peer %s in %s: %w", n.name, name, peerName, peer.name, err)
	}
	return nil
}

// addr adds an address (ip addr add P dev DEV; IPv6 ones with nodad). Like
// ip, it sets no IPv4 broadcast address.
func (n *labNS) addr(dev string, p netip.Prefix) error {
	link, err := n.link(dev)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is4() {
		a.Broadcast = net.IPv4zero // none: the library would compute one
	} else {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := n.nl.AddrAdd(link, a); err != nil {
		return fmt.Errorf("namespace %s: addr add %v dev %s: %w", n.name, p, dev, err)
	}
	return nil
}

// route is one `ip route add`: Dst (invalid: default) [via GW] [dev DEV]
// [src SRC] [onlink].
type route struct {
	dst    netip.Prefix
	gw     netip.Addr
	dev    string
	src    netip.Addr
	onlink bool
}

func (r route) String() string {
	s := "default"
	if r.dst.IsValid() {
		s = r.dst.String()
	}
	if r.gw.IsValid() {
		s += " via " + r.gw.String()
	}
	if r.dev != "" {
		s += " dev " + r.dev
	}
	if r.src.IsValid() {
		s += " src " + r.src.String()
	}
	if r.onlink {
		s += " onlink"
	}
	return s
}

// route adds r to the main table with ip's defaults (protocol boot, scope
// link when there is no gateway).
func (n *labNS) route(r route) error {
	nr := &netlink.Route{Protocol: unix.RTPROT_BOOT}
	if r.dst.IsValid() {
		nr.Dst = ipNet(r.dst)
	}
	if r.gw.IsValid() {
		nr.Gw = r.gw.AsSlice()
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.src.IsValid() {
		nr.Src = r.src.AsSlice()
	}
	if r.dev != "" {
		link, err := n.link(r.dev)
		if err != nil {
			return err
		}
		nr.LinkIndex = link.Attrs().Index
	}
	if r.onlink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	if err := n.nl.RouteAdd(nr); err != nil {
		return fmt.Errorf("namespace %s: route add %v: %w", n.name, r, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
