package iptrace

import (
	"fmt"
	"net/netip"
)

// IPVS is the IPVS table of a node. When Node.IPVS is set, Trace runs the
// IPVS hooks as the kernel's ip_vs module does (masquerading forward only):
//
//   - LOCAL_IN (ip_vs_remote_request, after filter INPUT, before nat
//     INPUT): packets routed to a local address (VIPs bound to the dummy
//     interface are local) are looked up;
//   - LOCAL_OUT (ip_vs_local_request, after mangle and nat OUTPUT, before
//     filter OUTPUT): locally generated packets are looked up.
//
// Lookup (ip_vs_service_find): the firewall-mark services first, by the
// packet's whole fwmark, then (protocol, destination address, destination
// port). No service: the packet goes on unchanged. A service whose real
// servers all have weight 0 (or none): ip_vs_leave answers with an ICMP
// port unreachable (Reject). Otherwise one outcome per real server of
// weight > 0, destination rewritten to it; the packet is then sent again
// through LOCAL_OUT (mangle OUTPUT, filter OUTPUT; nat OUTPUT is not
// consulted: the connection's NAT is already set up) and POSTROUTING
// (mangle, nat), or, for a real server that is a local address, goes on
// to local delivery. A persistent service counts as session-affinity
// rules on the path (Result.AffinityRules, Outcome.AffinityChecked).
type IPVS struct {
	Servers []VirtualServer
}

// VirtualServer is one IPVS service.
type VirtualServer struct {
	// FWMark, when not 0, makes this a firewall-mark service (Addr, Proto
	// and Port unused); it matches any TCP, UDP or SCTP packet of its
	// family whose fwmark equals FWMark.
	FWMark uint32
	// IPv6 is the family of a firewall-mark service.
	IPv6  bool
	Addr  netip.Addr
	Proto string // "tcp", "udp" or "sctp"
	Port  uint16
	// Persistent is ClientIP session affinity.
	Persistent bool
	// RealServers are the destinations (masquerading forward).
	RealServers []RealServer
}

// RealServer is one destination of a virtual server.
type RealServer struct {
	Addr   netip.AddrPort
	Weight int
}

// String names the service as ipvsadm does ("TCP  10.96.0.1:80", "FWM  5").
func (v *VirtualServer) String() string {
	if v.FWMark != 0 {
		return fmt.Sprintf("FWM  %d", v.FWMark)
	}
	return fmt.Sprintf("%s  %s", protoUpper(v.Proto), netip.AddrPortFrom(v.Addr, v.Port))
}

func protoUpper(p string) string {
	switch p {
	case "tcp":
		return "TCP"
	case "udp":
		return "UDP"
	case "sctp":
		return "SCTP"
	}
	return p
}

// lookup returns the service the kernel would pick for st, or nil.
func (t *IPVS) lookup(st *state) *VirtualServer {
	if st.mark != 0 {
		for i := range t.Servers {
			v := &t.Servers[i]
			if v.FWMark != 0 && v.FWMark == st.mark && v.IPv6 == st.dst.Is6() {
				return v
			}
		}
	}
	for i := range t.Servers {
		v := &t.Servers[i]
		if v.FWMark == 0 && v.Proto == st.proto && v.Addr == st.dst && v.Port == st.dport {
			return v
		}
	}
	return nil
}

// ipvs runs the IPVS hook (LOCAL_IN or LOCAL_OUT) over live states. It
// returns the states that go on along the hook's normal path (no service,
// or a local real server) and the ones IPVS sent out again to a remote real
// server; refused ones are recorded.
func (r *run) ipvs(live []*state, hook string) (cont, sent []*state) {
	t := r.tr.node.IPVS
	for _, s := range live {
		if s.vsSeen {
			// skb->ipvs_property: a packet IPVS already handled.
			cont = append(cont, s)
			continue
		}
		v := t.lookup(s)
		if v == nil {
			cont = append(cont, s)
			continue
		}
		s.path = append(s.path, "ipvs/"+hook+" "+v.String())
		s.vsSeen = true
		if v.Persistent {
			s.affChecked = true
		}
		var rss []RealServer
		for _, rs := range v.RealServers {
			if rs.Weight > 0 {
				rss = append(rss, rs)
			}
		}
		if len(rss) == 0 {
			s.rules = append(s.rules, "ipvs: "+v.String()+" has no real server of weight > 0: ICMP port unreachable")
			r.done(s, Reject)
			continue
		}
		for _, rs := range rss {
			c := s.clone()
			c.dst, c.dport = rs.Addr.Addr(), rs.Addr.Port()
			c.dnat = rs.Addr
			c.rules = append(c.rules, fmt.Sprintf("ipvs: %s -> %s", v.String(), rs.Addr))
			if r.tr.node.IsLocal(c.dst) {
				cont = append(cont, c)
			} else {
				sent = append(sent, c)
			}
		}
	}
	return cont, sent
}
