// Package iptables is switchyard's iptables proxy mode: it renders a
// proxier.Snapshot into iptables-restore input (Render, pure and
// deterministic) and applies it with one iptables-restore --noflush per IP
// family per sync, rewriting only the chains that changed. README.md
// documents the rule layout as a contract.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// partialListAllChains is the number of chains a partial restore may name
// in one table before it asks iptables-nft to load its whole chain cache
// (restoreWriter.listAll): above it, one dump is cheaper than one request
// per chain.
const partialListAllChains = 2000

// DefaultFullSyncInterval is how often a full sync rewrites every chain
// even when nothing forces it.
const DefaultFullSyncInterval = time.Hour

// Config configures a Backend.
type Config struct {
	// Mode selects iptables-nft or iptables-legacy; "" means ModeAuto.
	Mode Mode
	// Executor runs the iptables tools; nil runs them on this machine.
	Executor Executor
	// Logger receives sync and cleanup logs; nil means slog.Default().
	Logger *slog.Logger
	// FullSyncInterval forces a full sync when the last one is older;
	// 0 means DefaultFullSyncInterval.
	FullSyncInterval time.Duration
	// Now returns the current time (tests); nil means time.Now.
	Now func() time.Time
}

// Backend is the iptables proxy mode. It implements proxier.Backend and
// proxier.Renderer. Its methods are safe for concurrent use (calls are
// serialised).
type Backend struct {
	cfg  Config
	log  *slog.Logger
	seed maphash.Seed

	mu    sync.Mutex
	mode  Mode // resolved flavour; "" until first needed
	state map[proxier.IPFamily]*familyState
	// routeLocalnetSet records that route_localnet is 1 (see localnet.go).
	routeLocalnetSet bool
}

var (
	_ proxier.Backend  = (*Backend)(nil)
	_ proxier.Renderer = (*Backend)(nil)
)

// chainID names one chain in one table.
type chainID struct{ table, name string }

// familyState is what the backend believes the kernel holds for one family.
type familyState struct {
	// valid is false before the first successful full sync and after any
	// failure: the next sync is then full.
	valid    bool
	lastFull time.Time
	globals  string
	// chains maps every chain we wrote to fingerprints of its rules.
	chains map[chainID]chainRec
	// verifyRound counts iptables-nft drift checks (see listForDrift).
	verifyRound int
	// services holds each service port's last rendering, with chain bodies
	// dropped (only names and dispatch fragments are kept).
	services map[proxier.ServicePortName]*serviceRules
}

// chainRec fingerprints one chain as written.
type chainRec struct {
	// hash is a hash of the rendered text: a partial sync rewrites the
	// chain when it changes.
	hash uint64
	// sum is what iptables-save must print back (see checkDrift).
	sum iptexec.Sum
}

// New returns an iptables Backend. It does not touch the kernel: the
// flavour is resolved on the first Sync or Cleanup.
func New(cfg Config) (*Backend, error) {
	switch cfg.Mode {
	case "":
		cfg.Mode = ModeAuto
	case ModeAuto, ModeNFT, ModeLegacy:
	default:
		return nil, fmt.Errorf("iptables: unknown mode %q (want auto, nft or legacy)", cfg.Mode)
	}
	if cfg.Executor == nil {
		cfg.Executor = &iptexec.CommandExecutor{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.FullSyncInterval <= 0 {
		cfg.FullSyncInterval = DefaultFullSyncInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := &Backend{
		cfg:   cfg,
		log:   cfg.Logger.With("backend", "iptables"),
		seed:  maphash.MakeSeed(),
		state: map[proxier.IPFamily]*familyState{},
	}
	if cfg.Mode != ModeAuto {
		b.mode = cfg.Mode
	}
	return b, nil
}

// Name implements proxier.Backend.
func (b *Backend) Name() string { return "iptables" }

// Render implements proxier.Renderer: the restore input a full sync of
// snaps writes, when no stale chain needs deleting.
func (b *Backend) Render(snaps []*proxier.Snapshot) (string, error) { return Render(snaps) }

// Mode returns the iptables flavour in use, resolving ModeAuto if needed.
func (b *Backend) Mode(ctx context.Context) (Mode, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.resolveMode(ctx)
}

func (b *Backend) resolveMode(ctx context.Context) (Mode, error) {
	if b.mode != "" {
		return b.mode, nil
	}
	m, err := iptexec.Detect(ctx, b.cfg.Executor)
	if err != nil {
		return "", fmt.Errorf("iptables: detect flavour: %w", err)
	}
	b.log.Info("picked iptables flavour", "mode", m)
	b.mode = m
	return m, nil
}

// Sync implements proxier.Backend. Each snapshot is applied with at most
// one iptables-restore (a partial sync whose restore finds the canary chain
// gone runs a second one, full). A full sync also inserts the jumps from
// the built-in chains that iptables-save does not show.
func (b *Backend) Sync(ctx context.Context, snaps []*proxier.Snapshot) (proxier.SyncResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var res proxier.SyncResult
	mode, err := b.resolveMode(ctx)
	if err != nil {
		return res, err
	}
	b.ensureRouteLocalnet(ctx, snaps)
	var errs []error
	for _, s := range snaps {
		t := toolsFor(mode, s.Family)
		r, err := b.syncFamily(ctx, t, s)
		if err == nil {
			res.IPTables = append(res.IPTables, b.tableTotals(s.Family, r.IPTables)...)
		}
		res.Full = res.Full || r.Full
		res.Wrote = res.Wrote || r.Wrote
		res.Bytes += r.Bytes
		res.Rules += r.Rules
		for kind, n := range r.Repaired {
			if res.Repaired == nil {
				res.Repaired = map[string]int{}
			}
			res.Repaired[kind] += n
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("iptables %v: %w", s.Family, err))
		}
	}
	return res, errors.Join(errs...)
}

func (b *Backend) hash(s string) uint64 { return maphash.String(b.seed, s) }

// writtenPerTable counts what a restore input writes, per table.
func writtenPerTable(w *restoreWriter, fam proxier.IPFamily) []proxier.TableRules {
	out := make([]proxier.TableRules, 0, len(tableOrder))
	for _, t := range tableOrder {
		out = append(out, proxier.TableRules{Family: fam, Table: t, Written: w.tableRules(t)})
	}
	return out
}

// tableTotals completes a family's per-table counts (written, from the
// sync; nothing when it wrote nothing) with the rules the mode owns now,
// from the chains it keeps track of.
func (b *Backend) tableTotals(fam proxier.IPFamily, written []proxier.TableRules) []proxier.TableRules {
	total := map[string]int{}
	if st := b.state[fam]; st != nil {
		for id, rec := range st.chains {
			total[id.table] += rec.sum.Rules
		}
	}
	out := make([]proxier.TableRules, 0, len(tableOrder))
	for _, t := range tableOrder {
		tr := proxier.TableRules{Family: fam, Table: t, Total: total[t]}
		for _, w := range written {
			if w.Table == t {
				tr.Written = w.Written
			}
		}
		out = append(out, tr)
	}
	return out
}

func (b *Backend) record(c *chain) chainRec {
	return chainRec{hash: b.hash(c.body), sum: iptexec.SumBody(c.body)}
}

func (b *Backend) syncFamily(ctx context.Context, t tools, snap *proxier.Snapshot) (proxier.SyncResult, error) {
	st := b.state[snap.Family]
	if st == nil {
		st = &familyState{}
		b.state[snap.Family] = st
	}
	r, err := newRenderer(snap)
	if err != nil {
		return proxier.SyncResult{}, err
	}
	now := b.cfg.Now()
	reason := ""
	switch {
	case !st.valid:
		reason = "no trusted previous state"
	case snap.FullSync:
		reason = "requested"
	case now.Sub(st.lastFull) >= b.cfg.FullSyncInterval:
		reason = "periodic"
	case st.globals != globalsKey(snap):
		reason = "node-wide settings changed"
	}
	if reason != "" {
		return b.fullSync(ctx, t, r, st, reason)
	}
	var d *drift
	if snap.Verify {
		var err error
		if d, err = b.checkDrift(ctx, t, st); err != nil {
			st.valid = false
			return proxier.SyncResult{}, err
		}
		if d.canaryMissing {
			b.log.Warn("canary chain missing: our chains were flushed or deleted behind our back; full sync", "family", snap.Family)
			return b.fullSync(ctx, t, r, st, "canary chain missing")
		}
	}
	return b.partialSync(ctx, t, r, st, d)
}

// canaryPresent reports whether our canary chain still exists in both
// tables (someone flushing the tables removes it).
func (b *Backend) canaryPresent(ctx context.Context, t tools) (bool, error) {
	for _, table := range tableOrder {
		_, stderr, err := b.cfg.Executor.Run(ctx, nil, t.IPTables, "-w", "-t", table, "-S", chainCanary)
		if err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			b.log.Info("canary chain missing", "table", table, "stderr", iptexec.Trim(stderr))
			return false, nil
		}
	}
	return true, nil
}

func (b *Backend) fullSync(ctx context.Context, t tools, r *renderer, st *familyState, reason string) (proxier.SyncResult, error) {
	res := proxier.SyncResult{Full: true}
	start := b.cfg.Now()
	svcs := r.renderAll()
	fixed := r.fixedChains(svcs)
	w := fullWriter(fixed, svcs)

	saved, err := saveTables(ctx, b.cfg.Executor, t)
	if err != nil {
		st.valid = false
		return res, err
	}
	for _, table := range tableOrder {
		want := map[string]bool{}
		for _, c := range w.write[table] {
			want[c.name] = true
		}
		for _, name := range saved[table].Own {
			if !want[name] {
				w.delete[table] = append(w.delete[table], name)
			}
		}
	}
	w.jumps = missingJumps(saved)
	w.listAll = t.NFT
	text, rules := w.bytes(familyHeader(r.snap.Family))
	if err := b.restore(ctx, t, text); err != nil {
		st.valid = false
		return res, err
	}
	res.Wrote, res.Bytes, res.Rules = true, len(text), rules
	res.IPTables = writtenPerTable(w, r.snap.Family)

	st.chains = make(map[chainID]chainRec, len(fixed)+len(svcs)*4)
	for _, table := range tableOrder {
		for _, c := range w.write[table] {
			st.chains[chainID{c.table, c.name}] = b.record(c)
		}
	}
	st.services = make(map[proxier.ServicePortName]*serviceRules, len(svcs))
	for _, s := range svcs {
		st.services[s.name] = stripBodies(s)
	}
	st.globals = globalsKey(r.snap)
	st.lastFull = b.cfg.Now()
	st.valid = true
	b.log.Info("full sync", "family", r.snap.Family, "reason", reason, "services", len(svcs),
		"bytes", len(text), "rules", rules, "deleted", len(w.delete[tableNAT])+len(w.delete[tableFilter]),
		"took", b.cfg.Now().Sub(start))
	return res, nil
}

// stripBodies returns s without its chains' rule text (the state keeps
// only hashes of bodies).
func stripBodies(s *serviceRules) *serviceRules {
	c := *s
	c.chains = make([]chain, len(s.chains))
	for i, ch := range s.chains {
		c.chains[i] = chain{table: ch.table, name: ch.name}
	}
	return &c
}

// partialSync writes what changed since the last sync. d, when not nil,
// is what a drift check found (see checkDrift): its chains are rewritten,
// its missing jumps inserted and its unexpected chains deleted in the same
// restore.
func (b *Backend) partialSync(ctx context.Context, t tools, r *renderer, st *familyState, d *drift) (proxier.SyncResult, error) {
	var res proxier.SyncResult
	snap := r.snap

	// Which service ports to re-render: the ones the planner says changed,
	// plus any whose presence disagrees with our state.
	changed := map[proxier.ServicePortName]bool{}
	for n, c := range snap.Changed {
		if c {
			changed[n] = true
		}
	}
	present := make(map[proxier.ServicePortName]bool, len(snap.Services))
	for _, sp := range snap.Services {
		present[sp.Name] = true
		if st.services[sp.Name] == nil {
			changed[sp.Name] = true
		}
	}
	for n := range st.services {
		if !present[n] {
			changed[n] = true
		}
	}
	// Service ports owning a chain that drifted are re-rendered.
	if !d.empty() {
		for n, s := range st.services {
			for _, c := range s.chains {
				if d.forced(chainID{c.table, c.name}) {
					changed[n] = true
					break
				}
			}
		}
	}
	names := make([]proxier.ServicePortName, 0, len(changed))
	for n := range changed {
		names = append(names, n)
	}
	slices.SortFunc(names, proxier.ServicePortName.Compare)

	fresh := map[proxier.ServicePortName]*serviceRules{}
	for _, n := range names {
		if sp := snap.Lookup(n); sp != nil {
			fresh[n] = r.service(sp)
		}
	}
	all := make([]*serviceRules, 0, len(snap.Services))
	for _, sp := range snap.Services {
		if s := fresh[sp.Name]; s != nil {
			all = append(all, s)
		} else {
			all = append(all, st.services[sp.Name])
		}
	}

	w := newRestoreWriter()
	newHashes := map[chainID]chainRec{}
	var deleted []chainID
	consider := func(c *chain) {
		id := chainID{c.table, c.name}
		h := b.hash(c.body)
		if old, ok := st.chains[id]; ok && old.hash == h && !d.forced(id) {
			return
		}
		w.write[c.table] = append(w.write[c.table], c)
		newHashes[id] = chainRec{hash: h, sum: iptexec.SumBody(c.body)}
	}
	fixed := r.fixedChains(all)
	for i := range fixed {
		consider(&fixed[i])
	}
	for _, n := range names {
		keep := map[chainID]bool{}
		if s := fresh[n]; s != nil {
			for i := range s.chains {
				c := &s.chains[i]
				keep[chainID{c.table, c.name}] = true
				consider(c)
			}
		}
		if old := st.services[n]; old != nil {
			for _, c := range old.chains {
				id := chainID{c.table, c.name}
				if !keep[id] {
					w.delete[c.table] = append(w.delete[c.table], c.name)
					deleted = append(deleted, id)
				}
			}
		}
	}
	// Fixed chains that exist no more (e.g. SWY-MASQ-OFFCLUSTER) only go
	// away at a full sync, which a change of node-wide settings forces.

	commit := func() {
		for id, h := range newHashes {
			st.chains[id] = h
		}
		for _, id := range deleted {
			delete(st.chains, id)
		}
		for _, n := range names {
			if s := fresh[n]; s != nil {
				st.services[n] = stripBodies(s)
			} else {
				delete(st.services, n)
			}
		}
	}
	d.addTo(w)
	if w.empty() {
		if d == nil {
			// Without a drift check (which saw the canary), list it.
			ok, err := b.canaryPresent(ctx, t)
			if err != nil {
				return res, err
			}
			if !ok {
				return b.fullSync(ctx, t, r, st, "canary chain missing")
			}
		}
		commit()
		b.log.Debug("sync: nothing to write", "family", snap.Family, "changed", len(names))
		return res, nil
	}
	w.canary = true
	for _, table := range tableOrder {
		slices.Sort(w.delete[table])
		if t.NFT && w.chainsNamed(table) > partialListAllChains {
			w.listAll = true
		}
	}
	text, rules := w.bytes(familyHeader(snap.Family))
	if err := b.restore(ctx, t, text); err != nil {
		st.valid = false
		var re *RestoreError
		if errors.As(err, &re) && re.Text == canaryCheck {
			return b.fullSync(ctx, t, r, st, "canary chain missing")
		}
		return res, err
	}
	commit()
	res.Wrote, res.Bytes, res.Rules = true, len(text), rules
	res.IPTables = writtenPerTable(w, snap.Family)
	if !d.empty() {
		res.Repaired = d.repaired()
		d.log(b.log, snap.Family)
	}
	b.log.Debug("partial sync", "family", snap.Family, "changed", len(names), "bytes", len(text), "rules", rules,
		"deleted", len(deleted))
	return res, nil
}
