package conntrack

import (
	"errors"
	"fmt"
	"io/fs"
	"sync/atomic"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Table is the conntrack table of one network namespace: the seam between
// the reconciler and the kernel (tests use a fake).
type Table interface {
	// Delete dumps the family's entries of the given protocols (UDP,
	// SCTP) and deletes every one for which stale returns true. An
	// interrupted dump (the table changed under it) still deletes what it
	// saw and returns an error wrapping ErrDumpInterrupted.
	Delete(family proxier.IPFamily, protocols []proxier.Protocol, stale func(*Flow) bool) (Result, error)
}

// Result says what one Table.Delete did.
type Result struct {
	// Scanned counts the entries the dump returned; Deleted those deleted.
	Scanned, Deleted int
}

// ErrDumpInterrupted means the kernel reported that the table changed
// during the dump, so some entries may have been missed.
var ErrDumpInterrupted = errors.New("conntrack dump interrupted")

// NetlinkTable is the kernel's conntrack table, reached over a netfilter
// netlink socket.
type NetlinkTable struct {
	ns netns.NsHandle // closed: the caller's namespace
	// noFilter is set once the kernel refused a filtered dump (CTA_FILTER
	// needs Linux 5.8): dumps then return every entry of the family.
	noFilter atomic.Bool
}

var _ Table = (*NetlinkTable)(nil)

// NewNetlinkTable returns the conntrack table of the calling process's
// network namespace.
func NewNetlinkTable() *NetlinkTable { return &NetlinkTable{ns: netns.None()} }

// NewNetlinkTableAt returns the conntrack table of the named network
// namespace (as `ip netns` names it). Close releases the namespace handle.
func NewNetlinkTableAt(name string) (*NetlinkTable, error) {
	h, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("conntrack: open network namespace %s: %w", name, err)
	}
	return &NetlinkTable{ns: h}, nil
}

// Close releases the namespace handle of NewNetlinkTableAt.
func (t *NetlinkTable) Close() error {
	if t.ns.IsOpen() {
		return t.ns.Close()
	}
	return nil
}

func inetFamily(f proxier.IPFamily) uint8 {
	if f == proxier.IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

func protoNum(p proxier.Protocol) uint8 {
	if p == proxier.SCTP {
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_UDP
}

// Kernel ABI values not in the netlink library: the CTA_FILTER attribute
// (enum ctattr_type), its CTA_FILTER_ORIG_FLAGS member and the flag that
// filters a dump on the original tuple's L4 protocol
// (CTA_FILTER_F_CTA_PROTO_NUM, net/netfilter/nf_internals.h).
const (
	ctaFilter          = 25
	ctaFilterOrigFlags = 1
	ctaFilterProtoNum  = 1 << 3
)

func (t *NetlinkTable) request(family proxier.IPFamily, op, flags int, sock *nl.SocketHandle) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|op, flags)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: inetFamily(family), Version: nl.NFNETLINK_V0})
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: sock}
	return req
}

// dumpRequest asks for the family's entries, of one L4 protocol only when
// filtered (the kernel then copies nothing else to us).
func (t *NetlinkTable) dumpRequest(family proxier.IPFamily, proto uint8, filtered bool, sock *nl.SocketHandle) *nl.NetlinkRequest {
	req := t.request(family, nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP, sock)
	if filtered {
		tuple := nl.NewRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG, nil)
		p := tuple.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
		p.AddRtAttr(nl.CTA_PROTO_NUM, []byte{proto})
		req.AddData(tuple)
		filter := nl.NewRtAttr(unix.NLA_F_NESTED|ctaFilter, nil)
		filter.AddRtAttr(ctaFilterOrigFlags, nl.Uint32Attr(ctaFilterProtoNum))
		req.AddData(filter)
	}
	return req
}

// Delete implements Table.
func (t *NetlinkTable) Delete(family proxier.IPFamily, protocols []proxier.Protocol, stale func(*Flow) bool) (Result, error) {
	var res Result
	s, err := nl.GetNetlinkSocketAt(t.ns, netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return res, fmt.Errorf("conntrack: netlink socket: %w", err)
	}
	defer s.Close()
	if err := s.SetSendTimeout(&nl.SocketTimeoutTv); err != nil {
		return res, fmt.Errorf("conntrack: socket timeout: %w", err)
	}
	if err := s.SetReceiveTimeout(&nl.SocketTimeoutTv); err != nil {
		return res, fmt.Errorf("conntrack: socket timeout: %w", err)
	}
	sock := &nl.SocketHandle{Socket: s}

	// Dump (one L4 protocol at a time when the kernel filters, else
	// everything once); keep only the stale entries' raw attributes (they
	// name the entry's tuple and id, which is what a delete needs).
	var victims [][]byte
	var parseErr error
	var errs []error
	var f Flow
	want := map[proxier.Protocol]bool{}
	for _, p := range protocols {
		want[p] = true
	}
	collect := func(msg []byte) bool {
		res.Scanned++
		ok, err := parseFlow(msg, &f)
		if err != nil {
			if parseErr == nil {
				parseErr = err
			}
			return true
		}
		if ok && want[f.Protocol] && stale(&f) {
			victims = append(victims, append([]byte(nil), msg[nl.SizeofNfgenmsg:]...))
		}
		return true
	}
	dump := func(proto uint8, filtered bool) error {
		err := t.dumpRequest(family, proto, filtered, sock).ExecuteIter(unix.NETLINK_NETFILTER, 0, collect)
		if errors.Is(err, nl.ErrDumpInterrupted) {
			errs = append(errs, fmt.Errorf("%s table: %w", family, ErrDumpInterrupted))
			return nil
		}
		return err
	}
	unfiltered := t.noFilter.Load()
	for i, p := range protocols {
		if unfiltered {
			break
		}
		if err := dump(protoNum(p), true); err != nil {
			if i == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)) {
				t.noFilter.Store(true) // an old kernel: dump everything
				unfiltered = true
				break
			}
			return res, fmt.Errorf("conntrack: dump %s %s entries: %w", family, p, err)
		}
	}
	if unfiltered && len(protocols) > 0 {
		if err := dump(0, false); err != nil {
			return res, fmt.Errorf("conntrack: dump %s table: %w", family, err)
		}
	}
	if parseErr != nil {
		errs = append(errs, fmt.Errorf("conntrack: skipped unparsable %s entries: %w", family, parseErr))
	}

	failed := 0
	var firstErr error
	for _, v := range victims {
		del := t.request(family, nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK, sock)
		del.AddRawData(v)
		_, err := del.Execute(unix.NETLINK_NETFILTER, 0)
		switch {
		case err == nil:
			res.Deleted++
		case errors.Is(err, fs.ErrNotExist):
			// Gone already (expired, or replaced: the id no longer matches).
		default:
			failed++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if failed > 0 {
		errs = append(errs, fmt.Errorf("conntrack: %d of %d %s deletes failed: %w", failed, len(victims), family, firstErr))
	}
	return res, errors.Join(errs...)
}
