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

// attrIter walks netlink attributes (4-byte aligned) without allocating.
type attrIter struct {
	b   []byte
	err error
}

// next returns the next attribute's type (without the NESTED and
// NET_BYTEORDER flags) and value; ok is false at the end or on an error
// (then it.err is set).
func (it *attrIter) next() (typ uint16, value []byte, ok bool) {
	if len(it.b) == 0 || it.err != nil {
		return 0, nil, false
	}
	if len(it.b) < 4 {
		it.err = fmt.Errorf("truncated attribute header (%d bytes)", len(it.b))
		return 0, nil, false
	}
	l := int(nl.NativeEndian().Uint16(it.b[0:2]))
	typ = nl.NativeEndian().Uint16(it.b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	if l < 4 || l > len(it.b) {
		it.err = fmt.Errorf("attribute %d: bad length %d (%d bytes left)", typ, l, len(it.b))
		return 0, nil, false
	}
	value = it.b[4:l]
	l = (l + 3) &^ 3
	if l > len(it.b) {
		l = len(it.b)
	}
	it.b = it.b[l:]
	return typ, value, true
}

// parseFlow parses one ctnetlink message (nfgenmsg header, then
// attributes) into f. It returns ok false for entries of other protocols.
func parseFlow(msg []byte, f *Flow) (bool, error) {
	*f = Flow{}
	if len(msg) < nl.SizeofNfgenmsg {
		return false, errors.New("message shorter than its nfgenmsg header")
	}
	var origProto, replyProto uint8
	var err error
	seen := 0
	it := attrIter{b: msg[nl.SizeofNfgenmsg:]}
	for typ, v, ok := it.next(); ok; typ, v, ok = it.next() {
		switch typ {
		case nl.CTA_TUPLE_ORIG:
			if origProto, err = parseTuple(v, &f.Orig); err != nil {
				return false, fmt.Errorf("original tuple: %w", err)
			}
			seen++
		case nl.CTA_TUPLE_REPLY:
			if replyProto, err = parseTuple(v, &f.Reply); err != nil {
				return false, fmt.Errorf("reply tuple: %w", err)
			}
			seen++
		}
	}
	if it.err != nil {
		return false, it.err
	}
	if seen != 2 {
		return false, errors.New("entry without both tuples")
	}
	switch {
	case origProto != replyProto:
		return false, nil
	case origProto == unix.IPPROTO_UDP:
		f.Protocol = proxier.UDP
	case origProto == unix.IPPROTO_SCTP:
		f.Protocol = proxier.SCTP
	default:
		return false, nil
	}
	return true, nil
}

// parseTuple parses a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY payload into t and
// returns its L4 protocol number.
func parseTuple(b []byte, t *Tuple) (uint8, error) {
	var src, dst netip.Addr
	var proto uint8
	var sport, dport uint16
	it := attrIter{b: b}
	for typ, v, ok := it.next(); ok; typ, v, ok = it.next() {
		switch typ {
		case nl.CTA_TUPLE_IP:
			ips := attrIter{b: v}
			for ityp, iv, ok := ips.next(); ok; ityp, iv, ok = ips.next() {
				addr, valid := netip.AddrFromSlice(iv)
				if !valid {
					return 0, fmt.Errorf("address attribute %d of %d bytes", ityp, len(iv))
				}
				switch ityp {
				case nl.CTA_IP_V4_SRC, nl.CTA_IP_V6_SRC:
					src = addr
				case nl.CTA_IP_V4_DST, nl.CTA_IP_V6_DST:
					dst = addr
				}
			}
			if ips.err != nil {
				return 0, ips.err
			}
		case nl.CTA_TUPLE_PROTO:
			ps := attrIter{b: v}
			for ptyp, pv, ok := ps.next(); ok; ptyp, pv, ok = ps.next() {
				switch {
				case ptyp == nl.CTA_PROTO_NUM && len(pv) >= 1:
					proto = pv[0]
				case ptyp == nl.CTA_PROTO_SRC_PORT && len(pv) >= 2:
					sport = binary.BigEndian.Uint16(pv)
				case ptyp == nl.CTA_PROTO_DST_PORT && len(pv) >= 2:
					dport = binary.BigEndian.Uint16(pv)
				}
			}
			if ps.err != nil {
				return 0, ps.err
			}
		}
	}
	if it.err != nil {
		return 0, it.err
	}
	t.Src = netip.AddrPortFrom(src, sport)
	t.Dst = netip.AddrPortFrom(dst, dport)
	return proto, nil
}
