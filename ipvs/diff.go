package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Dump is what the kernel holds: every virtual server (with its real
// servers and their connection counts), the addresses on swy-ipvs0 and the
// ipsets whose name starts with SetPrefix.
type Dump struct {
	Servers   []*VirtualServer
	Addresses []netip.Addr
	Sets      []*IPSet
}

// OpKind is the kind of one kernel operation.
type OpKind int

// The operations Diff emits, in the order Apply performs them.
const (
	OpAddAddress OpKind = iota
	OpCreateSet
	OpAddMember
	OpAddService
	OpUpdateService
	OpAddDest
	OpUpdateDest
	OpDelDest
	OpDelService
	OpDelMember
	OpDestroySet
	OpDelAddress
)

var opNames = [...]string{"add-address", "create-set", "add-member", "add-service", "update-service",
	"add-dest", "update-dest", "del-dest", "del-service", "del-member", "destroy-set", "del-address"}

// String returns the operation's name ("add-service", ...).
func (k OpKind) String() string {
	if int(k) < len(opNames) {
		return opNames[k]
	}
	return fmt.Sprintf("OpKind(%d)", int(k))
}

// Op is one kernel operation.
type Op struct {
	Kind OpKind
	// Addr is the address of OpAddAddress and OpDelAddress.
	Addr netip.Addr
	// Server is the virtual server of service and destination operations
	// (the desired one, or the dumped one for OpDelService).
	Server *VirtualServer
	// Dest is the real server of destination operations.
	Dest RealServer
	// Set and Member are the set operations' operands.
	Set    *IPSet
	Member string
}

// String prints the operation for logs and tests, e.g.
// "update-dest TCP  10.96.0.1:80 -> 10.0.0.1:80 weight 0".
func (o Op) String() string {
	switch o.Kind {
	case OpAddAddress, OpDelAddress:
		return fmt.Sprintf("%s %s", o.Kind, o.Addr)
	case OpCreateSet, OpDestroySet:
		return fmt.Sprintf("%s %s %s", o.Kind, o.Set.Name, o.Set.Type)
	case OpAddMember, OpDelMember:
		return fmt.Sprintf("%s %s %s", o.Kind, o.Set.Name, o.Member)
	case OpAddService, OpUpdateService:
		s := fmt.Sprintf("%s %s %s", o.Kind, o.Server.Key, o.Server.Scheduler)
		if o.Server.Persistent {
			s += fmt.Sprintf(" persistent %d", o.Server.Timeout)
		}
		return s
	case OpDelService:
		return fmt.Sprintf("%s %s", o.Kind, o.Server.Key)
	default:
		return fmt.Sprintf("%s %s -> %s weight %d", o.Kind, o.Server.Key, o.Dest.Addr, o.Dest.Weight)
	}
}

// DestKey names one real server of one virtual server.
type DestKey struct {
	Server Key
	Dest   netip.AddrPort
}

// DiffOptions tune Diff.
type DiffOptions struct {
	// Now is the current time.
	Now time.Time
	// GracePeriod is how long a removed TCP/SCTP real server may keep
	// weight 0 while it still has connections.
	GracePeriod time.Duration
	// Terminating holds when each real server in graceful termination was
	// quiesced (or first seen at weight 0 after a restart).
	Terminating map[DestKey]time.Time
	// Owned reports whether an undesired dumped virtual server belongs to
	// switchyard (e.g. a node port it created earlier). Servers on an
	// address of swy-ipvs0, on a desired address, or with a switchyard
	// fwmark are always owned.
	Owned func(Key) bool
	// Exclude lists CIDRs (--ipvs-exclude-cidrs) whose undesired virtual
	// servers are never deleted, whatever else would make them owned.
	Exclude []netip.Prefix
}

// Diff returns the operations that turn dump into desired and the new
// graceful-termination table. A dump equal to desired gives no operations.
// Undesired virtual servers that switchyard does not own are left alone.
func Diff(desired *State, dump *Dump, opts DiffOptions) ([]Op, map[DestKey]time.Time) {
	var buckets [OpDelAddress + 1][]Op
	emit := func(o Op) { buckets[o.Kind] = append(buckets[o.Kind], o) }
	terminating := map[DestKey]time.Time{}

	// Addresses.
	have := map[netip.Addr]bool{}
	for _, a := range dump.Addresses {
		have[a] = true
	}
	want := map[netip.Addr]bool{}
	for _, a := range desired.Addresses {
		want[a] = true
		if !have[a] {
			emit(Op{Kind: OpAddAddress, Addr: a})
		}
	}
	for _, a := range dump.Addresses {
		if !want[a] {
			emit(Op{Kind: OpDelAddress, Addr: a})
		}
	}

	// Sets.
	dumpedSets := map[string]*IPSet{}
	for _, s := range dump.Sets {
		dumpedSets[s.Name] = s
	}
	wantSets := map[string]bool{}
	for _, s := range desired.Sets {
		wantSets[s.Name] = true
		old := dumpedSets[s.Name]
		if old != nil && old.Type != s.Type {
			emit(Op{Kind: OpDestroySet, Set: old})
			old = nil
		}
		if old == nil {
			emit(Op{Kind: OpCreateSet, Set: s})
			for _, m := range s.Members {
				emit(Op{Kind: OpAddMember, Set: s, Member: m})
			}
			continue
		}
		hasM := map[string]bool{}
		for _, m := range old.Members {
			hasM[m] = true
		}
		wantM := map[string]bool{}
		for _, m := range s.Members {
			wantM[m] = true
			if !hasM[m] {
				emit(Op{Kind: OpAddMember, Set: s, Member: m})
			}
		}
		for _, m := range old.Members {
			if !wantM[m] {
				emit(Op{Kind: OpDelMember, Set: s, Member: m})
			}
		}
	}
	for _, s := range dump.Sets {
		if !wantSets[s.Name] {
			emit(Op{Kind: OpDestroySet, Set: s})
		}
	}

	// Virtual servers.
	dumped := map[Key]*VirtualServer{}
	for _, v := range dump.Servers {
		dumped[v.Key] = v
	}
	for _, v := range desired.Servers {
		old := dumped[v.Key]
		if old == nil {
			emit(Op{Kind: OpAddService, Server: v})
			for _, d := range v.Dests {
				emit(Op{Kind: OpAddDest, Server: v, Dest: d})
			}
			continue
		}
		if !v.sameService(old) {
			emit(Op{Kind: OpUpdateService, Server: v})
		}
		diffDests(v, old, opts, emit, terminating)
	}
	for _, v := range dump.Servers {
		if desired.Server(v.Key) != nil || !owned(v.Key, desired, have, opts) {
			continue
		}
		emit(Op{Kind: OpDelService, Server: v})
	}
	var ops []Op
	for _, b := range buckets {
		ops = append(ops, b...)
	}
	return ops, terminating
}

// owned reports whether switchyard may delete the dumped virtual server k.
func owned(k Key, desired *State, onDummy map[netip.Addr]bool, opts DiffOptions) bool {
	if k.FWMark != 0 {
		return k.FWMark&^fwMarkSlots == FWMarkBit
	}
	if excluded(k.Addr, opts.Exclude) {
		return false
	}
	if onDummy[k.Addr] {
		return true
	}
	if _, ok := slices.BinarySearchFunc(desired.Addresses, k.Addr, netip.Addr.Compare); ok {
		return true
	}
	return opts.Owned != nil && opts.Owned(k)
}

// diffDests compares the real servers of a desired virtual server with the
// dumped ones, applying graceful termination to removed ones.
func diffDests(v, old *VirtualServer, opts DiffOptions, emit func(Op), terminating map[DestKey]time.Time) {
	have := map[netip.AddrPort]RealServer{}
	for _, d := range old.Dests {
		have[d.Addr] = d
	}
	want := map[netip.AddrPort]bool{}
	for _, d := range v.Dests {
		want[d.Addr] = true
		cur, ok := have[d.Addr]
		switch {
		case !ok:
			emit(Op{Kind: OpAddDest, Server: v, Dest: d})
		case cur.Weight != d.Weight:
			// Also restores weight-0 servers that are back in the desired
			// state, after a restart too (kubernetes#92019).
			emit(Op{Kind: OpUpdateDest, Server: v, Dest: d})
		}
	}
	udp := v.ServiceProtocol == proxier.UDP || (v.FWMark == 0 && v.Protocol == proxier.UDP)
	for _, d := range old.Dests {
		if want[d.Addr] {
			continue
		}
		k := DestKey{Server: v.Key, Dest: d.Addr}
		switch {
		case udp:
			emit(Op{Kind: OpDelDest, Server: v, Dest: d})
		case d.ActiveConns+d.InactiveConns == 0:
			emit(Op{Kind: OpDelDest, Server: v, Dest: d})
		case d.Weight != 0:
			q := d
			q.Weight = 0
			emit(Op{Kind: OpUpdateDest, Server: v, Dest: q})
			terminating[k] = opts.Now
		default:
			since, ok := opts.Terminating[k]
			if !ok {
				since = opts.Now // first seen at weight 0 (e.g. after a restart)
			}
			if opts.Now.Sub(since) >= opts.GracePeriod {
				emit(Op{Kind: OpDelDest, Server: v, Dest: d})
			} else {
				terminating[k] = since
			}
		}
	}
}
