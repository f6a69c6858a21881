package nodeport

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// NodeIPs returns this node's IP addresses, primary first.
//
// Without an override they come from node.Status.Addresses like kube-proxy
// reads them (GetNodeHostIPs): every InternalIP in order, then every
// ExternalIP in order; unparsable and unspecified addresses are skipped and
// duplicates dropped. The first address is the node's primary IP; the first
// address of the other family is that family's primary.
//
// override is the --node-ip flag. Like kube-proxy's --node-ip-override, it
// replaces the node's addresses only in the families it names: its
// addresses come first (in the given order), followed by the node's
// addresses of the families the override does not mention. So a dual-stack
// override replaces everything, and an IPv4-only override on a dual-stack
// node keeps the node's IPv6 addresses. node may be nil.
//
// The result is empty when nothing is known. Unlike kube-proxy, NodeIPs does
// not invent 127.0.0.1 / ::1 then; callers decide what an unknown node IP
// means.
func NodeIPs(node *corev1.Node, override []netip.Addr) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	overridden := map[proxier.IPFamily]bool{}
	add := func(a netip.Addr) {
		a = a.Unmap().WithZone("")
		if !a.IsValid() || a.IsUnspecified() || seen[a] {
			return
		}
		seen[a] = true
		out = append(out, a)
	}
	for _, a := range override {
		if !a.IsValid() || a.Unmap().IsUnspecified() {
			continue
		}
		overridden[proxier.FamilyOf(a)] = true
		add(a)
	}
	if node == nil {
		return out
	}
	for _, typ := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, na := range node.Status.Addresses {
			if na.Type != typ {
				continue
			}
			a, err := netip.ParseAddr(na.Address)
			if err != nil || overridden[proxier.FamilyOf(a)] {
				continue
			}
			add(a)
		}
	}
	return out
}

// OfFamily returns the addresses of ips that belong to family, in order.
func OfFamily(ips []netip.Addr, family proxier.IPFamily) []netip.Addr {
	var out []netip.Addr
	for _, a := range ips {
		if a.IsValid() && proxier.FamilyOf(a) == family {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Primary returns the primary IP of family among ips (as returned by
// NodeIPs): the first address of that family. ok is false when ips has
// none.
func Primary(ips []netip.Addr, family proxier.IPFamily) (addr netip.Addr, ok bool) {
	for _, a := range ips {
		if a.IsValid() && proxier.FamilyOf(a) == family {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// PrimaryFamily returns the family of the node's primary IP (the first of
// ips). ok is false when ips is empty.
func PrimaryFamily(ips []netip.Addr) (family proxier.IPFamily, ok bool) {
	for _, a := range ips {
		if a.IsValid() {
			return proxier.FamilyOf(a), true
		}
	}
	return 0, false
}
