package kubeproxyclean

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"

	"github.com/switchyard-proxy/switchyard/ipvs"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/vishvananda/netlink"
)

// netlinkIPVS is the real IPVS, through the ipvs backend's netlink kernel.
type netlinkIPVS struct{ k *ipvs.NetlinkKernel }

func openNetlinkIPVS() (IPVS, error) {
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoIPVS, err)
	}
	k, err := ipvs.NewNetlinkKernel()
	if err != nil {
		return nil, err
	}
	return netlinkIPVS{k}, nil
}

func (n netlinkIPVS) VirtualServers() ([]VirtualServer, error) {
	vs, err := n.k.VirtualServers()
	if err != nil {
		return nil, err
	}
	out := make([]VirtualServer, 0, len(vs))
	for _, v := range vs {
		out = append(out, VirtualServer{Addr: v.Addr, Protocol: string(v.Protocol), Port: v.Port, FWMark: v.FWMark})
	}
	return out, nil
}

func (n netlinkIPVS) Delete(v VirtualServer) error {
	fam := proxier.IPv4
	if v.Addr.Is6() {
		fam = proxier.IPv6
	}
	return n.k.DelService(ipvs.Key{Family: fam, Addr: v.Addr, Protocol: proxier.Protocol(strings.ToUpper(v.Protocol)), Port: v.Port, FWMark: v.FWMark})
}

// netlinkLinks reads and deletes links over rtnetlink.
type netlinkLinks struct{}

func (netlinkLinks) Addresses(name string) ([]netip.Addr, bool, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) {
			return nil, false, nil
		}
		return nil, false, err
	}
	list, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, true, err
	}
	var out []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !a.IP.Equal(net.IPv4zero) {
			out = append(out, ip.Unmap())
		}
	}
	return out, true, nil
}

func (netlinkLinks) Delete(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(l)
}
