package conntrack

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Table is the conntrack table of one network namespace: the seam between
// the reconciler and the kernel (tests use a fake).
type Table interface {
	// Delete dumps the family's entries once and deletes every UDP or SCTP
	// entry for which stale returns true. It returns how many it deleted.
	// An interrupted dump (the table changed under it) still deletes what
	// it saw and returns an error wrapping ErrDumpInterrupted.
	Delete(family proxier.IPFamily, stale func(*Flow) bool) (int, error)
}

// ErrDumpInterrupted means the kernel reported that the table changed
// during the dump, so some entries may have been missed.
var ErrDumpInterrupted = errors.New("conntrack dump interrupted")

// NetlinkTable is the kernel's conntrack table, reached over a netfilter
// netlink socket.
type NetlinkTable struct {
	ns netns.NsHandle // closed: the caller's namespace
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

func (t *NetlinkTable) request(family proxier.IPFamily, op, flags int, sock *nl.SocketHandle) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|op, flags)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: inetFamily(family), Version: nl.NFNETLINK_V0})
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: sock}
	return req
}

// Delete implements Table.
func (t *NetlinkTable) Delete(family proxier.IPFamily, stale func(*Flow) bool) (int, error) {
	s, err := nl.GetNetlinkSocketAt(t.ns, netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, fmt.Errorf("conntrack: netlink socket: %w", err)
	}
	defer s.Close()
	if err := s.SetSendTimeout(&nl.SocketTimeoutTv); err != nil {
		return 0, fmt.Errorf("conntrack: socket timeout: %w", err)
	}
	if err := s.SetReceiveTimeout(&nl.SocketTimeoutTv); err != nil {
		return 0, fmt.Errorf("conntrack: socket timeout: %w", err)
	}
	sock := &nl.SocketHandle{Socket: s}

	// One dump; keep only the stale entries' raw attributes (they name the
	// entry's tuple and id, which is what a delete needs).
	var victims [][]byte
	var parseErr error
	dump := t.request(family, nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP, sock)
	err = dump.ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		f, ok, err := parseFlow(msg)
		if err != nil {
			if parseErr == nil {
				parseErr = err
			}
			return true
		}
		if ok && stale(&f) {
			victims = append(victims, append([]byte(nil), msg[nl.SizeofNfgenmsg:]...))
		}
		return true
	})
	var errs []error
	if err != nil {
		if !errors.Is(err, nl.ErrDumpInterrupted) {
			return 0, fmt.Errorf("conntrack: dump %s table: %w", family, err)
		}
		errs = append(errs, fmt.Errorf("%s table: %w", family, ErrDumpInterrupted))
	}
	if parseErr != nil {
		errs = append(errs, fmt.Errorf("conntrack: skipped unparsable %s entries: %w", family, parseErr))
	}

	deleted, failed := 0, 0
	var firstErr error
	for _, v := range victims {
		del := t.request(family, nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK, sock)
		del.AddRawData(v)
		_, err := del.Execute(unix.NETLINK_NETFILTER, 0)
		switch {
		case err == nil:
			deleted++
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
	return deleted, errors.Join(errs...)
}
