package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Tuple is one direction of a conntrack entry.
type Tuple struct {
	Src, Dst netip.AddrPort
}

// Flow is the part of a conntrack entry the reconciler looks at.
type Flow struct {
	// Protocol is UDP or SCTP, or "" for any other protocol.
	Protocol proxier.Protocol
	// Orig is the original direction: client → service frontend.
	Orig Tuple
	// Reply is the reply direction; Reply.Src is the DNAT target (the
	// endpoint), or the frontend itself if the entry was never DNATed.
	Reply Tuple
}

// String returns the entry as `conntrack -L` would show its tuples.
func (f Flow) String() string {
	return fmt.Sprintf("%s %s -> %s reply %s -> %s", f.Protocol, f.Orig.Src, f.Orig.Dst, f.Reply.Src, f.Reply.Dst)
}

// attr is one netlink attribute.
type attr struct {
	typ   uint16 // without the NESTED and NET_BYTEORDER flags
	value []byte
}

// attrs splits b into netlink attributes (4-byte aligned).
func attrs(b []byte) ([]attr, error) {
	var out []attr
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("truncated attribute header (%d bytes)", len(b))
		}
		l := int(nl.NativeEndian().Uint16(b[0:2]))
		t := nl.NativeEndian().Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(b) {
			return nil, fmt.Errorf("attribute %d: bad length %d (%d bytes left)", t, l, len(b))
		}
		out = append(out, attr{typ: t, value: b[4:l]})
		l = (l + 3) &^ 3
		if l > len(b) {
			l = len(b)
		}
		b = b[l:]
	}
	return out, nil
}

// parseFlow parses one ctnetlink message (nfgenmsg header, then
// attributes). It returns ok false for entries of other protocols.
func parseFlow(msg []byte) (Flow, bool, error) {
	if len(msg) < nl.SizeofNfgenmsg {
		return Flow{}, false, errors.New("message shorter than its nfgenmsg header")
	}
	top, err := attrs(msg[nl.SizeofNfgenmsg:])
	if err != nil {
		return Flow{}, false, err
	}
	var f Flow
	var origProto, replyProto uint8
	seen := 0
	for _, a := range top {
		switch a.typ {
		case nl.CTA_TUPLE_ORIG:
			if origProto, err = parseTuple(a.value, &f.Orig); err != nil {
				return Flow{}, false, fmt.Errorf("original tuple: %w", err)
			}
			seen++
		case nl.CTA_TUPLE_REPLY:
			if replyProto, err = parseTuple(a.value, &f.Reply); err != nil {
				return Flow{}, false, fmt.Errorf("reply tuple: %w", err)
			}
			seen++
		}
	}
	if seen != 2 {
		return Flow{}, false, errors.New("entry without both tuples")
	}
	switch {
	case origProto != replyProto:
		return Flow{}, false, nil
	case origProto == unix.IPPROTO_UDP:
		f.Protocol = proxier.UDP
	case origProto == unix.IPPROTO_SCTP:
		f.Protocol = proxier.SCTP
	default:
		return f, false, nil
	}
	return f, true, nil
}

// parseTuple parses a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY payload into t and
// returns its L4 protocol number.
func parseTuple(b []byte, t *Tuple) (uint8, error) {
	as, err := attrs(b)
	if err != nil {
		return 0, err
	}
	var src, dst netip.Addr
	var proto uint8
	var sport, dport uint16
	for _, a := range as {
		switch a.typ {
		case nl.CTA_TUPLE_IP:
			ips, err := attrs(a.value)
			if err != nil {
				return 0, err
			}
			for _, ip := range ips {
				addr, ok := netip.AddrFromSlice(ip.value)
				if !ok {
					return 0, fmt.Errorf("address attribute %d of %d bytes", ip.typ, len(ip.value))
				}
				switch ip.typ {
				case nl.CTA_IP_V4_SRC, nl.CTA_IP_V6_SRC:
					src = addr
				case nl.CTA_IP_V4_DST, nl.CTA_IP_V6_DST:
					dst = addr
				}
			}
		case nl.CTA_TUPLE_PROTO:
			ps, err := attrs(a.value)
			if err != nil {
				return 0, err
			}
			for _, p := range ps {
				switch {
				case p.typ == nl.CTA_PROTO_NUM && len(p.value) >= 1:
					proto = p.value[0]
				case p.typ == nl.CTA_PROTO_SRC_PORT && len(p.value) >= 2:
					sport = binary.BigEndian.Uint16(p.value)
				case p.typ == nl.CTA_PROTO_DST_PORT && len(p.value) >= 2:
					dport = binary.BigEndian.Uint16(p.value)
				}
			}
		}
	}
	t.Src = netip.AddrPortFrom(src, sport)
	t.Dst = netip.AddrPortFrom(dst, dport)
	return proto, nil
}
