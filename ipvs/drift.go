package ipvs

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
)

// Drift kinds, the labels of switchyard_sync_drift_repairs_total.
const (
	driftAddress       = "address"
	driftIPSet         = "ipset"
	driftIPSetEntries  = "ipset-entries"
	driftVirtualServer = "virtual-server"
	driftRealServers   = "real-servers"
	driftChain         = "chain"
	driftJump          = "jump"
)

// written fingerprints the kernel state a sync wrote (or a dump of it)
// compactly: what the next sync compares a dump with to tell drift (someone
// else changed it) from the changes it makes itself.
type written struct {
	addrs   map[netip.Addr]bool
	servers map[Key]serverPrint
	sets    map[string]setPrint
}

type serverPrint struct {
	attrs uint64 // scheduler, persistence
	dests uint64 // real servers with weight > 0 (weight-0 ones are ours, terminating)
}

type setPrint struct {
	typ     string
	members uint64
}

var printSeed = maphash.MakeSeed()

// fingerprint summarises servers, addresses and sets.
func fingerprint(servers []*VirtualServer, addrs []netip.Addr, sets []*IPSet) *written {
	w := &written{addrs: make(map[netip.Addr]bool, len(addrs)), servers: make(map[Key]serverPrint, len(servers)),
		sets: make(map[string]setPrint, len(sets))}
	for _, a := range addrs {
		w.addrs[a] = true
	}
	var h maphash.Hash
	h.SetSeed(printSeed)
	var buf []byte
	for _, v := range servers {
		h.Reset()
		h.WriteString(v.Scheduler)
		buf = buf[:0]
		if v.Persistent { // the timeout only counts then (as in sameService)
			buf = binary.LittleEndian.AppendUint32(append(buf, 1), v.Timeout)
		}
		h.Write(buf)
		attrs := h.Sum64()
		dests := slices.Clone(v.Dests)
		slices.SortFunc(dests, func(a, b RealServer) int { return a.Addr.Compare(b.Addr) })
		h.Reset()
		for _, d := range dests {
			if d.Weight <= 0 {
				continue
			}
			buf = d.Addr.AppendTo(buf[:0])
			buf = binary.LittleEndian.AppendUint32(buf, uint32(d.Weight))
			h.Write(buf)
		}
		w.servers[v.Key] = serverPrint{attrs: attrs, dests: h.Sum64()}
	}
	for _, s := range sets {
		h.Reset()
		for _, m := range s.Members {
			h.WriteString(m)
			h.WriteByte('\n')
		}
		w.sets[s.Name] = setPrint{typ: s.Type, members: h.Sum64()}
	}
	return w
}

// driftReport counts what differs between what was written and the
// kernel, by kind, with a few examples for the log.
type driftReport struct {
	counts   map[string]int
	examples []string
}

func (r *driftReport) add(kind, what string) {
	if r.counts == nil {
		r.counts = map[string]int{}
	}
	r.counts[kind]++
	if len(r.examples) < 10 {
		r.examples = append(r.examples, kind+" "+what)
	}
}

func (r *driftReport) merge(o *driftReport) {
	for k, n := range o.counts {
		if r.counts == nil {
			r.counts = map[string]int{}
		}
		r.counts[k] += n
	}
	for _, e := range o.examples {
		if len(r.examples) < 10 {
			r.examples = append(r.examples, e)
		}
	}
}

func (r *driftReport) empty() bool { return len(r.counts) == 0 }

func (r *driftReport) log(l *slog.Logger) {
	args := []any{}
	kinds := make([]string, 0, len(r.counts))
	for k := range r.counts {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		args = append(args, k, r.counts[k])
	}
	args = append(args, "examples", strings.Join(r.examples, "; "))
	l.Warn("kernel state changed behind our back; repaired", args...)
}

// stateDrift compares the fingerprint of what the last sync wrote with a
// dump. owned says which extra virtual servers are ours (see Diff).
func stateDrift(last, now *written, owned func(Key) bool) *driftReport {
	r := &driftReport{}
	if last == nil {
		return r
	}
	for a := range last.addrs {
		if !now.addrs[a] {
			r.add(driftAddress, "missing "+a.String())
		}
	}
	for a := range now.addrs {
		if !last.addrs[a] {
			r.add(driftAddress, "unexpected "+a.String())
		}
	}
	for name, s := range last.sets {
		got, ok := now.sets[name]
		switch {
		case !ok:
			r.add(driftIPSet, "missing "+name)
		case got.typ != s.typ:
			r.add(driftIPSet, "retyped "+name)
		case got.members != s.members:
			r.add(driftIPSetEntries, "changed "+name)
		}
	}
	for name := range now.sets {
		if _, ok := last.sets[name]; !ok {
			r.add(driftIPSet, "unexpected "+name)
		}
	}
	for k, v := range last.servers {
		got, ok := now.servers[k]
		switch {
		case !ok:
			r.add(driftVirtualServer, "missing "+k.String())
		case got.attrs != v.attrs:
			r.add(driftVirtualServer, "changed "+k.String())
		case got.dests != v.dests:
			r.add(driftRealServers, "changed on "+k.String())
		}
	}
	for k := range now.servers {
		if _, ok := last.servers[k]; !ok && owned(k) {
			r.add(driftVirtualServer, "unexpected "+k.String())
		}
	}
	return r
}

// tableSections splits restore text into its tables' parts.
func tableSections(text string) map[string]string {
	out := map[string]string{}
	for _, part := range strings.SplitAfter(text, "COMMIT\n") {
		if t := tableOf(part); t != "" {
			out[t] = part
		}
	}
	return out
}

// rulesDrift compares one family's iptables rules with one iptables-save:
// the fingerprint of each SWY-IPVS- chain, other SWY- chains (deleted by
// the rewrite) and the hooks.
func rulesDrift(ctx context.Context, ex iptexec.Executor, t iptexec.Tools, fr FamilyRules) (*driftReport, error) {
	saved, err := iptexec.SaveAllSums(ctx, ex, t, "SWY-")
	if err != nil {
		return nil, fmt.Errorf("drift check: %w", err)
	}
	r := &driftReport{}
	for table, text := range tableSections(fr.Text) {
		want := iptexec.SumRules(text)
		tbl := saved[table]
		if tbl == nil {
			tbl = &iptexec.Table{}
		}
		for _, c := range fr.Chains[table] {
			got, ok := tbl.Sums[c]
			switch {
			case !ok:
				r.add(driftChain, "missing "+table+"/"+c)
			case got != want[c]:
				r.add(driftChain, "changed "+table+"/"+c)
			}
		}
		for _, c := range tbl.Own {
			if !slices.Contains(fr.Chains[table], c) && !strings.HasPrefix(c, hostPortPrefix) {
				r.add(driftChain, "unexpected "+table+"/"+c)
			}
		}
		for _, h := range hooks {
			if h.Table == table && !h.In(tbl) {
				r.add(driftJump, "missing "+table+"/"+h.Chain+" -> "+h.Target())
			}
		}
	}
	return r, nil
}
