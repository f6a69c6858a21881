// Package ipvs is switchyard's IPVS proxy mode. It renders proxier.Snapshots
// into the desired kernel state (State: addresses on the dummy interface
// swy-ipvs0, IPVS virtual servers with their real servers, SWY- ipsets and
// a few SWY-IPVS- iptables chains), diffs that against a dump of the kernel
// (Diff) and applies only the difference (Backend.Sync). README.md documents
// the layout as a contract.
package ipvs

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Weight is the weight of every serving real server.
const Weight = 1

// Key identifies one virtual server: an address, protocol and port, or a
// firewall mark (FWMark != 0, Addr invalid) of one family.
type Key struct {
	Family   proxier.IPFamily
	Addr     netip.Addr
	Protocol proxier.Protocol
	Port     uint16
	FWMark   uint32
}

// String returns "TCP  10.96.0.1:80" or "FWM  268435457 IPv4", as ipvsadm
// prints the service column.
func (k Key) String() string {
	if k.FWMark != 0 {
		return fmt.Sprintf("FWM  %d %s", k.FWMark, k.Family)
	}
	return fmt.Sprintf("%s  %s", k.Protocol, netip.AddrPortFrom(k.Addr, k.Port))
}

// compareKeys orders keys by family, fwmark (address services first),
// address, protocol and port.
func compareKeys(a, b Key) int {
	return cmp.Or(
		cmp.Compare(a.Family, b.Family),
		cmp.Compare(a.FWMark, b.FWMark),
		a.Addr.Compare(b.Addr),
		cmp.Compare(a.Protocol, b.Protocol),
		cmp.Compare(a.Port, b.Port),
	)
}

// RealServer is one destination of a virtual server.
type RealServer struct {
	Addr   netip.AddrPort
	Weight int
	// ActiveConns and InactiveConns come from a kernel dump (0 when desired).
	ActiveConns   int
	InactiveConns int
}

// VirtualServer is one IPVS service with its real servers (masquerading
// forward).
type VirtualServer struct {
	Key
	// Scheduler is the IPVS scheduler name ("rr", "wrr", ...).
	Scheduler string
	// Persistent is true for ClientIP session affinity; Timeout is then the
	// persistence timeout in seconds.
	Persistent bool
	Timeout    uint32
	// Service names the service port ("ns/name:port") for logs, and
	// ServiceProtocol its protocol (also for fwmark servers, whose key has
	// none); neither is stored in the kernel, both are empty in a dump.
	Service         string
	ServiceProtocol proxier.Protocol
	// Dests are the real servers, sorted by address.
	Dests []RealServer
}

// sameService reports whether the service attributes (not the real
// servers) of a and b match.
func (v *VirtualServer) sameService(o *VirtualServer) bool {
	return v.Scheduler == o.Scheduler && v.Persistent == o.Persistent && (!v.Persistent || v.Timeout == o.Timeout)
}

// IPSet is one ipset with its members in `ipset save` member syntax.
type IPSet struct {
	// Name is the set name (SWY-..., SWY-6-... for IPv6).
	Name string
	// Type is the set type ("hash:ip,port", "bitmap:port", ...).
	Type string
	// Family is the set's family (bitmap:port sets have none but are still
	// kept per family).
	Family proxier.IPFamily
	// Comment explains the set (not stored in the kernel).
	Comment string
	// Members are sorted and unique.
	Members []string
}

// MaxElem is the capacity of every hash set. The kernel allocates buckets
// as members arrive (hashsize is only the start), so a large limit costs
// nothing; ipset's default of 65536 is too small for SWY-LOOP-BACK at 10k
// services × 10 endpoints (one member per endpoint), where `ipset restore`
// failed with "Hash is full".
const MaxElem = 1 << 20

// CreateOptions returns the `ipset create` options after the type.
func (s *IPSet) CreateOptions() string {
	if strings.HasPrefix(s.Type, "bitmap:port") {
		return "range 0-65535"
	}
	if s.Family == proxier.IPv6 {
		return fmt.Sprintf("family inet6 hashsize 1024 maxelem %d", MaxElem)
	}
	return fmt.Sprintf("family inet hashsize 1024 maxelem %d", MaxElem)
}

// FamilyRules is the iptables-restore input of one family.
type FamilyRules struct {
	Family proxier.IPFamily
	// Text is complete restore input (tables mangle, nat, filter) that
	// declares and fills every SWY-IPVS- chain.
	Text string
	// Chains lists the chains Text declares, per table.
	Chains map[string][]string
}

// State is the complete desired (or dumped) kernel state of the IPVS mode.
type State struct {
	// Addresses are bound to swy-ipvs0 (cluster, external and
	// load-balancer IPs), sorted.
	Addresses []netip.Addr
	// Servers are the virtual servers, sorted by key.
	Servers []*VirtualServer
	// Sets are the ipsets, sorted by name.
	Sets []*IPSet
	// Rules holds one restore text per family in the snapshots.
	Rules []FamilyRules
}

// Server returns the virtual server with key k, or nil.
func (s *State) Server(k Key) *VirtualServer {
	i, ok := slices.BinarySearchFunc(s.Servers, k, func(v *VirtualServer, k Key) int { return compareKeys(v.Key, k) })
	if !ok {
		return nil
	}
	return s.Servers[i]
}

// Set returns the ipset named name, or nil.
func (s *State) Set(name string) *IPSet {
	for _, set := range s.Sets {
		if set.Name == name {
			return set
		}
	}
	return nil
}

// FormatIPVS prints the virtual servers as `ipvsadm -Ln` does.
func FormatIPVS(servers []*VirtualServer) string {
	var b strings.Builder
	b.WriteString("IP Virtual Server version 1.2.1 (size=4096)\n")
	b.WriteString("Prot LocalAddress:Port Scheduler Flags\n")
	b.WriteString("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")
	for _, v := range servers {
		if v.FWMark != 0 {
			fmt.Fprintf(&b, "FWM  %d", v.FWMark)
			if v.Family == proxier.IPv6 {
				b.WriteString(" IPv6")
			}
			fmt.Fprintf(&b, " %s", v.Scheduler)
		} else {
			fmt.Fprintf(&b, "%s  %s %s", v.Protocol, netip.AddrPortFrom(v.Addr, v.Port), v.Scheduler)
		}
		if v.Persistent {
			fmt.Fprintf(&b, " persistent %d", v.Timeout)
		}
		b.WriteString("\n")
		for _, d := range v.Dests {
			fmt.Fprintf(&b, "  -> %-28s %-7s %-6d %-10d %d\n", d.Addr, "Masq", d.Weight, d.ActiveConns, d.InactiveConns)
		}
	}
	return b.String()
}

// FormatIPSets prints the sets in `ipset save` format.
func FormatIPSets(sets []*IPSet) string {
	var b strings.Builder
	for _, s := range sets {
		fmt.Fprintf(&b, "create %s %s %s\n", s.Name, s.Type, s.CreateOptions())
		for _, m := range s.Members {
			fmt.Fprintf(&b, "add %s %s\n", s.Name, m)
		}
	}
	return b.String()
}
