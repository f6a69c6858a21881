package iptables

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// drift is what a drift check found: the kernel differs from what the
// backend wrote. A nil *drift is an empty one.
type drift struct {
	// canaryMissing: the canary chain is gone (the tables were flushed);
	// only a full sync repairs that.
	canaryMissing bool
	// changed and missing are our chains whose rules differ from what we
	// wrote, and those that are gone.
	changed, missing []chainID
	// force holds changed and missing: they are rewritten.
	force map[chainID]bool
	// jumps are the restore lines adding the missing jumps from built-in
	// chains, per table.
	jumps map[string][]string
	// unexpected are SWY- chains we did not write, per table; deleted
	// unless a foreign rule jumps to them (then only logged).
	unexpected, kept map[string][]string
}

func (d *drift) empty() bool {
	return d == nil || len(d.force) == 0 && len(d.jumps) == 0 && len(d.unexpected) == 0
}

func (d *drift) forced(id chainID) bool { return d != nil && d.force[id] }

// addTo adds the jumps and deletions to a restore writer.
func (d *drift) addTo(w *restoreWriter) {
	if d == nil {
		return
	}
	for table, lines := range d.jumps {
		w.jumps[table] = append(w.jumps[table], lines...)
	}
	for table, names := range d.unexpected {
		w.delete[table] = append(w.delete[table], names...)
	}
}

// repaired counts the repairs by kind, for SyncResult.Repaired.
func (d *drift) repaired() map[string]int {
	out := map[string]int{}
	if n := len(d.force); n > 0 {
		out["chain"] = n
	}
	for _, l := range d.jumps {
		out["jump"] += len(l)
	}
	for _, l := range d.unexpected {
		out["unexpected-chain"] += len(l)
	}
	return out
}

// log reports a repaired drift at WARN, naming what changed.
func (d *drift) log(l *slog.Logger, f proxier.IPFamily) {
	names := func(ids []chainID) string {
		var s []string
		for i, id := range ids {
			if i == 10 {
				s = append(s, fmt.Sprintf("... (%d more)", len(ids)-10))
				break
			}
			s = append(s, id.table+"/"+id.name)
		}
		return strings.Join(s, " ")
	}
	var jumps, unexpected []string
	for _, table := range tableOrder {
		for _, j := range d.jumps[table] {
			jumps = append(jumps, table+": "+j)
		}
		for _, c := range d.unexpected[table] {
			unexpected = append(unexpected, table+"/"+c)
		}
	}
	l.Warn("rules changed behind our back; repaired", "family", f,
		"changedChains", len(d.changed), "changed", names(d.changed),
		"missingChains", len(d.missing), "missing", names(d.missing),
		"missingJumps", len(jumps), "jumps", strings.Join(jumps, "; "),
		"unexpectedChains", strings.Join(unexpected, " "))
}

// checkDrift compares the kernel with what st says we wrote: one
// iptables-save (all tables: iptables-nft fetches the whole ruleset even
// for one table), the rules of each SWY- chain fingerprinted
// (iptexec.Sum: canonical forms, so what iptables-save prints differently
// from what we wrote still matches) and compared with the fingerprints
// taken when the chain was written, plus the jumps from the built-in
// chains. It writes nothing.
func (b *Backend) checkDrift(ctx context.Context, t tools, st *familyState) (*drift, error) {
	d := &drift{force: map[chainID]bool{}, jumps: map[string][]string{},
		unexpected: map[string][]string{}, kept: map[string][]string{}}
	var saved map[string]*savedTable
	var listed map[chainID]bool // nil: every chain was listed
	if t.NFT {
		saved, listed = b.listForDrift(ctx, t, st)
	}
	if saved == nil {
		all, err := iptexec.SaveAllSums(ctx, b.cfg.Executor, t, ChainPrefix)
		if err != nil {
			return nil, fmt.Errorf("drift check: %w", err)
		}
		saved, listed = map[string]*savedTable{}, nil
		for _, table := range tableOrder {
			saved[table] = thisMode(all[table])
			if saved[table] == nil {
				saved[table] = &savedTable{Rules: map[string]int{}}
			}
		}
	}
	for _, table := range tableOrder {
		if _, ok := saved[table].Sums[chainCanary]; !ok {
			d.canaryMissing = true
			return d, nil
		}
	}
	for id, rec := range st.chains {
		if listed != nil && !listed[id] {
			continue
		}
		got, ok := saved[id.table].Sums[id.name]
		switch {
		case !ok:
			d.missing = append(d.missing, id)
			d.force[id] = true
		case got != rec.sum:
			d.changed = append(d.changed, id)
			d.force[id] = true
		}
	}
	for _, table := range tableOrder {
		if listed != nil {
			break // only a full save shows chains we did not write
		}
		tbl := saved[table]
		for _, name := range tbl.Own {
			if _, ok := st.chains[chainID{table, name}]; ok {
				continue
			}
			if referenced(tbl, name) {
				d.kept[table] = append(d.kept[table], name)
			} else {
				d.unexpected[table] = append(d.unexpected[table], name)
			}
		}
		slices.Sort(d.unexpected[table])
		if len(d.unexpected[table]) == 0 {
			delete(d.unexpected, table)
		}
	}
	if len(d.kept) > 0 {
		b.log.Info("SWY- chains we did not write, referenced from other chains; left alone until cleanup", "chains", d.kept)
	}
	d.jumps = missingJumps(saved)
	sortIDs := func(ids []chainID) {
		slices.SortFunc(ids, func(a, b chainID) int {
			if c := strings.Compare(a.table, b.table); c != 0 {
				return c
			}
			return strings.Compare(a.name, b.name)
		})
	}
	sortIDs(d.changed)
	sortIDs(d.missing)
	return d, nil
}

// verifyWindow is how many per-service chains one iptables-nft drift
// check lists (besides the fixed chains and the built-in chains holding
// our jumps, listed every time).
const verifyWindow = 4 * iptexec.ListBatch

// builtinChains are the built-in chains holding our jumps, per table.
var builtinChains = map[string][]string{
	tableNAT:    {"PREROUTING", "OUTPUT", "POSTROUTING"},
	tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
}

// listForDrift is the iptables-nft drift check's listing: iptables-nft-save
// fetches and translates the whole ruleset (about 0.45 of a full sync at
// any size), while listing named chains fetches only those. Every check
// lists the fixed chains (SWY-SERVICES, SWY-NODEPORTS, ... and the canary)
// and the built-in chains holding our jumps; the per-service chains are
// split into rounds of about verifyWindow chains (by a hash of the name)
// and each check lists the next round, so every chain is checked at least
// once every ceil(chains/verifyWindow) checks. It returns nil when a
// listing fails (e.g. a listed chain is gone): the caller then runs a full
// iptables-save.
func (b *Backend) listForDrift(ctx context.Context, t tools, st *familyState) (map[string]*savedTable, map[chainID]bool) {
	services := 0
	for id := range st.chains {
		if !fixedChain(id.name) {
			services++
		}
	}
	rounds := max(1, (services+verifyWindow-1)/verifyWindow)
	round := st.verifyRound % rounds
	st.verifyRound++
	listed := map[chainID]bool{}
	names := map[string][]string{}
	for id := range st.chains {
		if fixedChain(id.name) || rounds == 1 || int(b.hash(id.name)%uint64(rounds)) == round {
			listed[id] = true
			names[id.table] = append(names[id.table], id.name)
		}
	}
	saved := map[string]*savedTable{}
	for _, table := range tableOrder {
		list := append(slices.Clone(builtinChains[table]), names[table]...)
		slices.Sort(list[len(builtinChains[table]):])
		tbl, err := iptexec.ListChains(ctx, b.cfg.Executor, t, table, list, ChainPrefix)
		if err != nil {
			b.log.Info("drift check: listing chains failed; running iptables-save", "table", table, "err", err)
			return nil, nil
		}
		saved[table] = thisMode(tbl)
	}
	return saved, listed
}

// fixedChain reports whether name is one of the fixed chains (not a
// per-service one).
func fixedChain(name string) bool {
	for _, p := range []string{prefixSVC, prefixSVL, prefixEXT, prefixFW, prefixSEP} {
		if strings.HasPrefix(name, p) {
			return false
		}
	}
	return true
}

// referenced reports whether a rule of a chain we do not own jumps to name.
func referenced(tbl *savedTable, name string) bool {
	for _, j := range tbl.ForeignJumps {
		if strings.HasSuffix(j, " "+name) || strings.Contains(j, " "+name+" ") {
			return true
		}
	}
	return false
}
