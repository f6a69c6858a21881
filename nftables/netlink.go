package nftables

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// ruleSummarizer is implemented by knftables interfaces that can report
// each chain's rule count and comments more cheaply than ListRules (which
// makes nft print and knftables parse the whole table as JSON).
type ruleSummarizer interface {
	ruleSummary(ctx context.Context, chains []string) (map[string]*seenChain, error)
}

// kernelNFT is the production interface: knftables (with its netlink
// listing of names) plus a netlink dump of the table's rules for verify.
type kernelNFT struct {
	knftables.Interface
	family proxier.IPFamily
}

func newKernelNFT(f proxier.IPFamily) (knftables.Interface, error) {
	nft, err := knftables.New(knftablesFamily(f), TableName, knftables.UseNetlink)
	if err != nil {
		return nil, err
	}
	return &kernelNFT{Interface: nft, family: f}, nil
}

func (k *kernelNFT) ruleSummary(ctx context.Context, chains []string) (map[string]*seenChain, error) {
	return netlinkRuleSummary(k.family, chains)
}

// netlinkRuleSummary dumps the rules of the named chains of switchyard's
// table of the family in the current network namespace (one
// NFT_MSG_GETRULE dump per chain on one socket: the kernel finds a named
// chain by hash, while a whole-table dump is re-walked for every batch)
// and returns, per chain, the number of rules and their comments in
// order. Expressions are not decoded.
func netlinkRuleSummary(f proxier.IPFamily, chains []string) (map[string]*seenChain, error) {
	fam := byte(unix.NFPROTO_IPV4)
	if f == proxier.IPv6 {
		fam = unix.NFPROTO_IPV6
	}
	c, err := openNetlink()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer c.close()
	out := map[string]*seenChain{}
	for _, chain := range chains {
		attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")},
			{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
		})
		if err != nil {
			return nil, err
		}
		req := netlink.Message{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
				Flags: netlink.Request | netlink.Dump,
			},
			Data: append([]byte{fam, unix.NFNETLINK_V0, 0, 0}, attrs...),
		}
		err = c.dump(req, func(data []byte) error {
			if len(data) < 4 {
				return nil
			}
			ad, err := netlink.NewAttributeDecoder(data[4:])
			if err != nil {
				return err
			}
			var name, table, cmt string
			for ad.Next() {
				switch ad.Type() {
				case unix.NFTA_RULE_TABLE:
					table = ad.String()
				case unix.NFTA_RULE_CHAIN:
					name = ad.String()
				case unix.NFTA_RULE_USERDATA:
					cmt = udataComment(ad.Bytes())
				}
			}
			if err := ad.Err(); err != nil {
				return err
			}
			if table != TableName || name == "" {
				return nil
			}
			s := out[name]
			if s == nil {
				s = &seenChain{}
				out[name] = s
			}
			s.n++
			s.comments = append(s.comments, cmt)
			return nil
		})
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("netlink dump of the rules of chain %s: %w", chain, err)
		}
	}
	return out, nil
}

// nlConn is a NETLINK_NETFILTER socket for dump requests. It reads with a
// 64 KiB buffer: the kernel sizes each batch of a dump by the reader's
// buffer (up to 32 KiB) and walks the dumped objects again from the start
// for every batch, so small reads make a large dump quadratic.
type nlConn struct {
	fd  int
	seq uint32
	buf []byte
}

func openNetlink() (*nlConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &nlConn{fd: fd, buf: make([]byte, 64<<10)}, nil
}

func (c *nlConn) close() { unix.Close(c.fd) }

// dump sends one dump request and calls fn with the payload of every
// reply message until the dump is done.
func (c *nlConn) dump(req netlink.Message, fn func([]byte) error) error {
	c.seq++
	req.Header.Sequence = c.seq
	req.Header.Length = uint32(unix.NLMSG_HDRLEN + len(req.Data))
	b, err := req.MarshalBinary()
	if err != nil {
		return err
	}
	if err := unix.Sendto(c.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if err != nil {
			return err
		}
		rest := c.buf[:n]
		for len(rest) >= unix.NLMSG_HDRLEN {
			var m netlink.Message
			l := int(nativeUint32(rest[0:4]))
			if l < unix.NLMSG_HDRLEN || l > len(rest) {
				return fmt.Errorf("bad netlink message length %d", l)
			}
			if err := m.UnmarshalBinary(rest[:l]); err != nil {
				return err
			}
			switch m.Header.Type {
			case netlink.Done:
				return nil
			case netlink.Error:
				if len(m.Data) >= 4 {
					if code := int32(nativeUint32(m.Data[:4])); code != 0 {
						return unix.Errno(-code)
					}
				}
				return nil
			}
			if err := fn(m.Data); err != nil {
				return err
			}
			al := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
			if al > len(rest) {
				al = len(rest)
			}
			rest = rest[al:]
		}
	}
}

// netlinkDump runs one dump on a new socket.
func netlinkDump(req netlink.Message, fn func([]byte) error) error {
	c, err := openNetlink()
	if err != nil {
		return err
	}
	defer c.close()
	return c.dump(req, fn)
}

// nativeUint32 reads a host-order uint32 (netlink headers are host order).
func nativeUint32(b []byte) uint32 {
	return binary.NativeEndian.Uint32(b)
}

// udataComment returns the comment of a rule's user data (libnftnl's
// type-length-value records; type 0 is the comment, NUL-terminated).
func udataComment(b []byte) string {
	for len(b) >= 2 {
		typ, l := b[0], int(b[1])
		if len(b) < 2+l {
			return ""
		}
		if typ == 0 {
			return strings.TrimRight(string(b[2:2+l]), "\x00")
		}
		b = b[2+l:]
	}
	return ""
}

// listNames is ListAll without the kernel's anonymous sets and maps
// ("__set0", "__map0": they belong to rules, which a netlink listing
// shows and nft's does not).
func listNames(ctx context.Context, nft knftables.Interface) (map[string][]string, error) {
	all, err := nft.ListAll(ctx)
	if err != nil {
		return nil, err
	}
	for typ, names := range all {
		kept := names[:0]
		for _, n := range names {
			if !strings.HasPrefix(n, "__") {
				kept = append(kept, n)
			}
		}
		all[typ] = kept
	}
	return all, nil
}

// isNotFound reports whether err says the table (or object) does not
// exist: knftables' own error from nft, or ENOENT from its netlink listing.
func isNotFound(err error) bool {
	return knftables.IsNotFound(err) || errors.Is(err, unix.ENOENT) ||
		strings.Contains(err.Error(), "no such file or directory")
}

// summaryFromRules is the generic summary (knftables fakes, or any
// interface without a cheaper way): ListRules of the whole table.
func summaryFromRules(ctx context.Context, nft knftables.Interface, chains []string) (map[string]*seenChain, error) {
	if rs, ok := nft.(ruleSummarizer); ok {
		return rs.ruleSummary(ctx, chains)
	}
	rules, err := nft.ListRules(ctx, "")
	if err != nil {
		return nil, err
	}
	out := map[string]*seenChain{}
	for _, rl := range rules {
		s := out[rl.Chain]
		if s == nil {
			s = &seenChain{}
			out[rl.Chain] = s
		}
		s.n++
		c := ""
		if rl.Comment != nil {
			c = *rl.Comment
		}
		s.comments = append(s.comments, c)
	}
	return out, nil
}

// elementLister is implemented by interfaces that can list the elements of
// switchyard's fixed sets and maps more cheaply than ListElements (which
// makes nft print and knftables parse them as JSON).
type elementLister interface {
	listElements(ctx context.Context, s *setSpec) ([]*knftables.Element, error)
}

func (k *kernelNFT) listElements(ctx context.Context, s *setSpec) ([]*knftables.Element, error) {
	return netlinkElements(k.family, s)
}

// listElements lists a fixed set's or map's elements the cheapest way the
// interface offers.
func listElements(ctx context.Context, nft knftables.Interface, s *setSpec) ([]*knftables.Element, error) {
	if el, ok := nft.(elementLister); ok {
		return el.listElements(ctx, s)
	}
	typ := "set"
	if s.isMap {
		typ = "map"
	}
	return nft.ListElements(ctx, typ, s.name)
}

// netlinkElements dumps the elements of one of switchyard's fixed sets or
// maps over netlink and decodes keys (and verdicts) into the strings
// switchyard writes: addresses, "tcp"/"udp"/"sctp", port numbers, "goto
// CHAIN" / "jump CHAIN" / "drop" / "accept".
func netlinkElements(f proxier.IPFamily, s *setSpec) ([]*knftables.Element, error) {
	keyType, _, _ := strings.Cut(s.typ, " : ")
	parts := strings.Split(keyType, " . ")
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(s.name + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	fam := byte(unix.NFPROTO_IPV4)
	if f == proxier.IPv6 {
		fam = unix.NFPROTO_IPV6
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:     netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags:    netlink.Request | netlink.Dump,
			Sequence: 1,
		},
		Data: append([]byte{fam, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	var out []*knftables.Element
	err = netlinkDump(req, func(data []byte) error {
		if len(data) < 4 {
			return nil
		}
		ad, err := netlink.NewAttributeDecoder(data[4:])
		if err != nil {
			return err
		}
		for ad.Next() {
			if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					e := &knftables.Element{}
					if s.isMap {
						e.Map = s.name
					} else {
						e.Set = s.name
					}
					list.Nested(func(el *netlink.AttributeDecoder) error {
						for el.Next() {
							switch el.Type() {
							case unix.NFTA_SET_ELEM_KEY:
								el.Nested(func(d *netlink.AttributeDecoder) error {
									for d.Next() {
										if d.Type() == unix.NFTA_DATA_VALUE {
											k, err := decodeKey(parts, d.Bytes())
											if err != nil {
												return err
											}
											e.Key = k
										}
									}
									return nil
								})
							case unix.NFTA_SET_ELEM_DATA:
								el.Nested(func(d *netlink.AttributeDecoder) error {
									for d.Next() {
										if d.Type() == unix.NFTA_DATA_VERDICT {
											e.Value = []string{decodeVerdict(d.Bytes())}
										}
									}
									return nil
								})
							}
						}
						return nil
					})
					if e.Key != nil {
						out = append(out, e)
					}
				}
				return nil
			})
		}
		return ad.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("netlink dump of %s: %w", s.name, err)
	}
	return out, nil
}

// decodeKey splits a concatenated key (each field padded to 4 bytes).
func decodeKey(types []string, b []byte) ([]string, error) {
	var out []string
	for _, t := range types {
		var n int
		switch t {
		case "ipv4_addr":
			n = 4
		case "ipv6_addr":
			n = 16
		case "inet_proto":
			n = 1
		case "inet_service":
			n = 2
		default:
			return nil, fmt.Errorf("unknown key type %q", t)
		}
		if len(b) < n {
			return nil, fmt.Errorf("short key")
		}
		v := b[:n]
		switch t {
		case "ipv4_addr", "ipv6_addr":
			a, _ := netip.AddrFromSlice(v)
			out = append(out, a.String())
		case "inet_proto":
			out = append(out, protoName(v[0]))
		case "inet_service":
			out = append(out, strconv.Itoa(int(binary.BigEndian.Uint16(v))))
		}
		pad := (n + 3) &^ 3
		if pad > len(b) {
			pad = len(b)
		}
		b = b[pad:]
	}
	return out, nil
}

func protoName(p byte) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

// decodeVerdict turns a NFTA_DATA_VERDICT payload into nft's spelling.
func decodeVerdict(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "?"
	}
	ad.ByteOrder = binary.BigEndian
	var code int32
	var chain string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code = int32(ad.Uint32())
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	switch code {
	case unix.NFT_GOTO:
		return "goto " + chain
	case unix.NFT_JUMP:
		return "jump " + chain
	case 0: // NF_DROP
		return "drop"
	case 1: // NF_ACCEPT
		return "accept"
	case unix.NFT_RETURN:
		return "return"
	}
	return "verdict " + strconv.Itoa(int(code))
}
