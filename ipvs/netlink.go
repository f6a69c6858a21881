package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// svcFlagPersistent is IP_VS_SVC_F_PERSISTENT.
const svcFlagPersistent = 0x1

// NetlinkKernel drives the kernel's IPVS over generic netlink (moby/ipvs)
// and swy-ipvs0 over rtnetlink (vishvananda/netlink), in the network
// namespace of the calling process.
type NetlinkKernel struct {
	h *ipvs.Handle
}

var _ Kernel = (*NetlinkKernel)(nil)

// NewNetlinkKernel opens an IPVS netlink handle. It fails when the kernel
// has no IPVS.
func NewNetlinkKernel() (*NetlinkKernel, error) {
	// moby/ipvs does not report a missing IPVS family: look it up first.
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		return nil, fmt.Errorf("ipvs: kernel IPVS not available (generic netlink family IPVS: %w)", err)
	}
	h, err := ipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("ipvs: open netlink handle: %w", err)
	}
	if _, err := h.GetServices(); err != nil {
		h.Close()
		return nil, fmt.Errorf("ipvs: kernel IPVS not available: %w", err)
	}
	return &NetlinkKernel{h: h}, nil
}

// Close releases the netlink handle.
func (k *NetlinkKernel) Close() { k.h.Close() }

func protoNum(p proxier.Protocol) uint16 {
	switch p {
	case proxier.TCP:
		return syscall.IPPROTO_TCP
	case proxier.UDP:
		return syscall.IPPROTO_UDP
	case proxier.SCTP:
		return syscall.IPPROTO_SCTP
	}
	return 0
}

func protoName(n uint16) proxier.Protocol {
	switch n {
	case syscall.IPPROTO_TCP:
		return proxier.TCP
	case syscall.IPPROTO_UDP:
		return proxier.UDP
	case syscall.IPPROTO_SCTP:
		return proxier.SCTP
	}
	return proxier.Protocol(fmt.Sprint(n))
}

func afOf(f proxier.IPFamily) uint16 {
	if f == proxier.IPv6 {
		return syscall.AF_INET6
	}
	return syscall.AF_INET
}

func toService(k Key) *ipvs.Service {
	s := &ipvs.Service{AddressFamily: afOf(k.Family), FWMark: k.FWMark, Netmask: 0xffffffff}
	if k.Family == proxier.IPv6 {
		s.Netmask = 128
	}
	if k.FWMark == 0 {
		s.Address = net.IP(k.Addr.AsSlice())
		s.Protocol = protoNum(k.Protocol)
		s.Port = k.Port
	}
	return s
}

func toFullService(v *VirtualServer) *ipvs.Service {
	s := toService(v.Key)
	s.SchedName = v.Scheduler
	if v.Persistent {
		s.Flags = svcFlagPersistent
		s.Timeout = v.Timeout
	}
	return s
}

func toDest(d RealServer) *ipvs.Destination {
	af := uint16(syscall.AF_INET)
	if d.Addr.Addr().Is6() {
		af = syscall.AF_INET6
	}
	return &ipvs.Destination{
		Address: net.IP(d.Addr.Addr().AsSlice()), Port: d.Addr.Port(), Weight: d.Weight,
		ConnectionFlags: ipvs.ConnectionFlagMasq, AddressFamily: af,
	}
}

func ipAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// VirtualServers implements Kernel.
func (k *NetlinkKernel) VirtualServers() ([]*VirtualServer, error) {
	svcs, err := k.h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("ipvs: GetServices: %w", err)
	}
	out := make([]*VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		fam := proxier.IPv4
		if s.AddressFamily == syscall.AF_INET6 {
			fam = proxier.IPv6
		}
		v := &VirtualServer{Key: Key{Family: fam, FWMark: s.FWMark}, Scheduler: s.SchedName}
		if s.FWMark == 0 {
			v.Addr, v.Protocol, v.Port = ipAddr(s.Address), protoName(s.Protocol), s.Port
			if fam == proxier.IPv6 {
				v.Addr = netip.AddrFrom16(v.Addr.As16())
			}
		}
		if s.Flags&svcFlagPersistent != 0 {
			v.Persistent, v.Timeout = true, s.Timeout
		}
		dests, err := k.h.GetDestinations(s)
		if err != nil {
			return nil, fmt.Errorf("ipvs: GetDestinations %s: %w", v.Key, err)
		}
		for _, d := range dests {
			v.Dests = append(v.Dests, RealServer{
				Addr:   netip.AddrPortFrom(ipAddr(d.Address), d.Port),
				Weight: d.Weight, ActiveConns: d.ActiveConnections, InactiveConns: d.InactiveConnections,
			})
		}
		out = append(out, v)
	}
	return out, nil
}

// AddService implements Kernel.
func (k *NetlinkKernel) AddService(v *VirtualServer) error {
	if err := k.h.NewService(toFullService(v)); err != nil {
		return fmt.Errorf("ipvs: add service %s: %w", v.Key, err)
	}
	return nil
}

// UpdateService implements Kernel.
func (k *NetlinkKernel) UpdateService(v *VirtualServer) error {
	if err := k.h.UpdateService(toFullService(v)); err != nil {
		return fmt.Errorf("ipvs: update service %s: %w", v.Key, err)
	}
	return nil
}

// DelService implements Kernel.
func (k *NetlinkKernel) DelService(key Key) error {
	if err := k.h.DelService(toService(key)); err != nil {
		return fmt.Errorf("ipvs: delete service %s: %w", key, err)
	}
	return nil
}

// AddDest implements Kernel.
func (k *NetlinkKernel) AddDest(key Key, d RealServer) error {
	if err := k.h.NewDestination(toService(key), toDest(d)); err != nil {
		return fmt.Errorf("ipvs: add real server %s to %s: %w", d.Addr, key, err)
	}
	return nil
}

// UpdateDest implements Kernel.
func (k *NetlinkKernel) UpdateDest(key Key, d RealServer) error {
	if err := k.h.UpdateDestination(toService(key), toDest(d)); err != nil {
		return fmt.Errorf("ipvs: update real server %s of %s: %w", d.Addr, key, err)
	}
	return nil
}

// DelDest implements Kernel.
func (k *NetlinkKernel) DelDest(key Key, d RealServer) error {
	if err := k.h.DelDestination(toService(key), toDest(d)); err != nil {
		return fmt.Errorf("ipvs: delete real server %s of %s: %w", d.Addr, key, err)
	}
	return nil
}

func dummyLink() (netlink.Link, error) {
	l, err := netlink.LinkByName(DummyInterface)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("ipvs: look up %s: %w", DummyInterface, err)
	}
	return l, nil
}

// EnsureDummy implements Kernel. The link stays down, as kube-ipvs0 does:
// its addresses are local all the same.
func (k *NetlinkKernel) EnsureDummy() (bool, error) {
	l, err := dummyLink()
	if err != nil || l != nil {
		return false, err
	}
	if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: DummyInterface}}); err != nil {
		return false, fmt.Errorf("ipvs: create %s: %w", DummyInterface, err)
	}
	return true, nil
}

// DummyAddresses implements Kernel.
func (k *NetlinkKernel) DummyAddresses() ([]netip.Addr, error) {
	l, err := dummyLink()
	if err != nil || l == nil {
		return nil, err
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("ipvs: list addresses of %s: %w", DummyInterface, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip := ipAddr(a.IP)
		if ip.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, ip)
	}
	return out, nil
}

func hostNet(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
}

// AddAddress implements Kernel.
func (k *NetlinkKernel) AddAddress(a netip.Addr) error {
	l, err := dummyLink()
	if err == nil && l == nil {
		err = fmt.Errorf("%s does not exist", DummyInterface)
	}
	if err == nil {
		err = netlink.AddrAdd(l, hostNet(a))
	}
	if err != nil {
		return fmt.Errorf("ipvs: bind %s to %s: %w", a, DummyInterface, err)
	}
	return nil
}

// DelAddress implements Kernel.
func (k *NetlinkKernel) DelAddress(a netip.Addr) error {
	l, err := dummyLink()
	if err != nil || l == nil {
		return err
	}
	if err := netlink.AddrDel(l, hostNet(a)); err != nil {
		return fmt.Errorf("ipvs: unbind %s from %s: %w", a, DummyInterface, err)
	}
	return nil
}

// DeleteDummy implements Kernel.
func (k *NetlinkKernel) DeleteDummy() error {
	l, err := dummyLink()
	if err != nil || l == nil {
		return err
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("ipvs: delete %s: %w", DummyInterface, err)
	}
	return nil
}

var _ TimeoutKernel = (*NetlinkKernel)(nil)

// Timeouts implements TimeoutKernel (IPVS_CMD_GET_CONFIG).
func (k *NetlinkKernel) Timeouts() (Timeouts, error) {
	c, err := k.h.GetConfig()
	if err != nil {
		return Timeouts{}, fmt.Errorf("ipvs: GetConfig: %w", err)
	}
	return Timeouts{TCP: c.TimeoutTCP, TCPFin: c.TimeoutTCPFin, UDP: c.TimeoutUDP}, nil
}

// SetTimeouts implements TimeoutKernel (IPVS_CMD_SET_CONFIG; the kernel
// keeps the value of each zero field).
func (k *NetlinkKernel) SetTimeouts(t Timeouts) error {
	if err := k.h.SetConfig(&ipvs.Config{TimeoutTCP: t.TCP, TimeoutTCPFin: t.TCPFin, TimeoutUDP: t.UDP}); err != nil {
		return fmt.Errorf("ipvs: SetConfig: %w", err)
	}
	return nil
}
