package nodeport

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// PrimaryKeyword is the --nodeport-addresses value that selects the node's
// primary IP of each family.
const PrimaryKeyword = "primary"

// Selector is a parsed --nodeport-addresses value. The zero Selector is the
// default (node ports answer on every local address).
type Selector struct {
	primary  bool
	prefixes []netip.Prefix
}

// ParseAddresses parses the --nodeport-addresses values: CIDRs of either
// family (host bits are ignored, as kube-proxy's sloppy parsing does), or
// the single keyword "primary". An empty list is valid and selects every
// local address. Any other entry, or "primary" mixed with CIDRs (kube-proxy
// rejects that too), is an error that names the entry.
func ParseAddresses(values []string) (Selector, error) {
	var s Selector
	for i, v := range values {
		v = strings.TrimSpace(v)
		if v == PrimaryKeyword {
			if len(values) != 1 {
				return Selector{}, fmt.Errorf("nodeport addresses: entry %d %q: %q cannot be combined with CIDRs", i+1, v, PrimaryKeyword)
			}
			s.primary = true
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil {
			hint := ""
			if a, aerr := netip.ParseAddr(v); aerr == nil {
				hint = fmt.Sprintf(" (for one address write %s)", netip.PrefixFrom(a, a.BitLen()))
			}
			return Selector{}, fmt.Errorf("nodeport addresses: entry %d %q is neither a CIDR nor %q%s: %w", i+1, v, PrimaryKeyword, hint, err)
		}
		p = p.Masked()
		if p.Addr().Is4In6() {
			// "::ffff:10.0.0.0/104" means an IPv4 range; keep it IPv4.
			if p.Bits() < 96 {
				return Selector{}, fmt.Errorf("nodeport addresses: entry %d %q: IPv4-mapped prefix shorter than /96", i+1, v)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if !slices.Contains(s.prefixes, p) {
			s.prefixes = append(s.prefixes, p)
		}
	}
	return s, nil
}

// IsPrimary reports whether the selector is the keyword "primary".
func (s Selector) IsPrimary() bool { return s.primary }

// IsEmpty reports whether no value was given (every local address).
func (s Selector) IsEmpty() bool { return !s.primary && len(s.prefixes) == 0 }

// Prefixes returns the parsed CIDRs (masked, deduplicated, in the given order).
func (s Selector) Prefixes() []netip.Prefix { return slices.Clone(s.prefixes) }

// String returns the selector in flag syntax ("primary", CIDRs joined by
// commas, or "" for the default).
func (s Selector) String() string {
	if s.primary {
		return PrimaryKeyword
	}
	parts := make([]string, len(s.prefixes))
	for i, p := range s.prefixes {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

// familyPrefixes returns the prefixes the selector means for family, and
// whether the family matches every address. It mirrors kube-proxy, which
// turns "primary" into the host CIDRs of the non-loopback primary node IPs
// at startup and then, per family, falls back to 0.0.0.0/0 or ::/0 when
// no CIDR of that family is listed.
func (s Selector) familyPrefixes(family proxier.IPFamily, nodeIPs []netip.Addr) ([]netip.Prefix, bool) {
	var ps []netip.Prefix
	if s.primary {
		if a, ok := Primary(nodeIPs, family); ok && !a.IsLoopback() {
			ps = append(ps, netip.PrefixFrom(a, a.BitLen()))
		}
	} else {
		for _, p := range s.prefixes {
			if proxier.FamilyOf(p.Addr()) == family {
				ps = append(ps, p)
			}
		}
	}
	if len(ps) == 0 {
		return nil, true
	}
	for _, p := range ps {
		if p.Bits() == 0 {
			return nil, true
		}
	}
	return ps, false
}

// Select returns where node ports of family answer, with kube-proxy's
// semantics:
//
//   - an empty selector: All (every local address of the family);
//   - a family none of whose CIDRs is listed: All as well, even when CIDRs
//     of the other family are (kube-proxy adds 0.0.0.0/0 or ::/0 then);
//     a listed 0.0.0.0/0 or ::/0 also means All;
//   - CIDRs: the addresses of localAddrs (this network namespace's interface
//     addresses, see LocalAddresses) of the family that fall in one of
//     them, sorted and deduplicated. Loopback addresses are kept: whether
//     localhost node ports work is the backend's decision, as upstream;
//   - "primary": the family's primary node IP (see Primary), as a host
//     CIDR matched against localAddrs like any other CIDR, so a primary IP
//     that is not configured on this node selects nothing. A family without
//     a primary IP (or whose primary IP is loopback) gets All, because
//     kube-proxy then lists no CIDR for it.
//
// When the CIDRs of a family match no local address the result is All
// false with no Addrs: node ports of that family answer nowhere. kube-proxy
// does the same and logs nothing; callers may want to warn (see NoMatch).
func (s Selector) Select(family proxier.IPFamily, nodeIPs []netip.Addr, localAddrs []netip.Addr) proxier.NodePortAddresses {
	ps, all := s.familyPrefixes(family, nodeIPs)
	if all {
		return proxier.NodePortAddresses{All: true}
	}
	var out []netip.Addr
	for _, a := range localAddrs {
		a = a.Unmap().WithZone("")
		if !a.IsValid() || proxier.FamilyOf(a) != family {
			continue
		}
		for _, p := range ps {
			if p.Contains(a) {
				out = append(out, a)
				break
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	return proxier.NodePortAddresses{Addrs: out}
}

// NoMatch reports whether npa selects no address at all (CIDRs that match
// nothing on this node), which callers should log: node ports of that
// family are unreachable.
func NoMatch(npa proxier.NodePortAddresses) bool {
	return !npa.All && len(npa.Addrs) == 0
}

// LocalAddresses returns the IP addresses of every interface of the current
// network namespace (up or down, loopback and link-local included, like
// kube-proxy's net.InterfaceAddrs), sorted and deduplicated, except those
// of the interfaces named in skip (e.g. the IPVS mode's dummy interface,
// whose addresses are service VIPs). It is the one place switchyard lists
// local addresses.
func LocalAddresses(skip ...string) ([]netip.Addr, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing network interfaces: %w", err)
	}
	var out []netip.Addr
	for _, ifc := range ifaces {
		if slices.Contains(skip, ifc.Name) {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("listing addresses of interface %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			var ip net.IP
			switch v := a.(type) {
			case *net.IPNet:
				ip = v.IP
			case *net.IPAddr:
				ip = v.IP
			default:
				continue
			}
			if addr, ok := netip.AddrFromSlice(ip); ok {
				out = append(out, addr.Unmap())
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

// Usable keeps the addresses node ports can answer on: no loopback,
// link-local, unspecified or multicast address; unmapped, without zone,
// sorted and unique.
func Usable(addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		a = a.Unmap().WithZone("")
		if a.IsValid() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsUnspecified() && !a.IsMulticast() {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
