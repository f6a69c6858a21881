// Package nftables is switchyard's nftables proxy mode: it renders a
// proxier.Snapshot into the content of one nft table per IP family (`ip
// switchyard`, `ip6 switchyard`; Render is pure and deterministic) and
// applies it with knftables, one transaction per family per sync, writing
// only the chains and map elements of the service ports that changed.
// README.md documents the layout as a contract.
package nftables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Config configures a Backend.
type Config struct {
	// Logger receives sync and cleanup logs; nil means slog.Default().
	Logger *slog.Logger
	// NewInterface returns the knftables interface of the family's
	// switchyard table; nil means knftables.New (the nft binary on this
	// machine, names listed over netlink) with the rules of verifying
	// syncs read over netlink. Tests pass knftables fakes.
	NewInterface func(family proxier.IPFamily) (knftables.Interface, error)
}

// Backend is the nftables proxy mode. It implements proxier.Backend and
// proxier.Renderer. Its methods are safe for concurrent use (calls are
// serialised).
type Backend struct {
	cfg  Config
	log  *slog.Logger
	mu   sync.Mutex
	fams map[proxier.IPFamily]*familyState
}

// written is what the backend remembers of one object it wrote.
type written struct {
	fp string
	// chain, set or element: the spec written (one is set).
	chain *chainSpec
	set   *setSpec
	elem  *elemSpec
	// owner is the service port the object belongs to (zero: fixed).
	owner proxier.ServicePortName
	fixed bool
}

// familyState is the memory of one family's table.
type familyState struct {
	nft     knftables.Interface
	objs    map[string]*written
	bySvc   map[proxier.ServicePortName][]string
	globals string
	// needFull is set after a failure and before the first sync.
	needFull bool
}

// New returns the nftables backend.
func New(cfg Config) (*Backend, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.NewInterface == nil {
		cfg.NewInterface = newKernelNFT
	}
	return &Backend{cfg: cfg, log: cfg.Logger, fams: map[proxier.IPFamily]*familyState{}}, nil
}

// Name returns "nftables".
func (b *Backend) Name() string { return "nftables" }

// Render returns the `nft -f` input of a full sync (see Render).
func (b *Backend) Render(snaps []*proxier.Snapshot) (string, error) { return Render(snaps) }

func (b *Backend) family(f proxier.IPFamily) (*familyState, error) {
	if st := b.fams[f]; st != nil {
		return st, nil
	}
	nft, err := b.cfg.NewInterface(f)
	if err != nil {
		return nil, fmt.Errorf("nftables for %v: %w", f, err)
	}
	st := &familyState{nft: nft, needFull: true}
	b.fams[f] = st
	return st, nil
}

// Sync makes each family's table match its snapshot: a full sync rewrites
// the table (first sync, Snapshot.FullSync, after a failure, when
// node-wide settings changed); otherwise only the changed service ports'
// objects are written, and a verifying sync first compares the kernel with
// what was written and repairs what drifted. Everything a family needs is
// one transaction; nothing is written when nothing changed.
func (b *Backend) Sync(ctx context.Context, snaps []*proxier.Snapshot) (proxier.SyncResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var res proxier.SyncResult
	var errs []error
	for _, snap := range snaps {
		st, err := b.family(snap.Family)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r, err := b.syncFamily(ctx, st, snap)
		if err != nil {
			st.needFull = true
			errs = append(errs, fmt.Errorf("nftables %v: %w", snap.Family, err))
			continue
		}
		res.Full = res.Full || r.full
		res.Wrote = res.Wrote || r.ops > 0
		res.Rules += r.ops
		res.Bytes += r.bytes
		for k, v := range r.repaired {
			if res.Repaired == nil {
				res.Repaired = map[string]int{}
			}
			res.Repaired[k] += v
		}
	}
	return res, errors.Join(errs...)
}

// familyResult is what one family's sync did.
type familyResult struct {
	full     bool
	ops      int
	bytes    int
	repaired map[string]int
}

func (b *Backend) syncFamily(ctx context.Context, st *familyState, snap *proxier.Snapshot) (familyResult, error) {
	globals := globalsKey(snap)
	if st.needFull || snap.FullSync || globals != st.globals {
		return b.fullSync(ctx, st, snap)
	}
	r, err := newRenderer(snap)
	if err != nil {
		return familyResult{}, err
	}
	d := newDiff(st)
	var res familyResult
	if snap.Verify {
		drift, err := b.verify(ctx, st, r, d)
		if err != nil {
			return res, err
		}
		if drift.full {
			b.log.Warn("nftables table missing or its maps deleted behind our back: full sync", "family", snap.Family)
			res, err := b.fullSync(ctx, st, snap)
			res.repaired = map[string]int{"table": 1}
			return res, err
		}
		res.repaired = drift.counts
	}
	// The service ports to rewrite: the changed ones, the ones verify
	// found drifted and, on a verifying sync, the ones whose presence
	// disagrees with memory (a safety net for the tracker's change set:
	// it costs O(N), so partial syncs do not scan).
	scope := map[proxier.ServicePortName]bool{}
	for name := range snap.Changed {
		scope[name] = true
	}
	if snap.Verify {
		for _, sp := range snap.Services {
			if _, ok := st.bySvc[sp.Name]; !ok {
				scope[sp.Name] = true
			}
		}
		for name := range st.bySvc {
			if snap.Lookup(name) == nil {
				scope[name] = true
			}
		}
	}
	for name := range d.redo {
		scope[name] = true
	}
	names := make([]proxier.ServicePortName, 0, len(scope))
	for name := range scope {
		names = append(names, name)
	}
	slices.SortFunc(names, proxier.ServicePortName.Compare)
	// A map or set key belongs to one service port: one that keeps it
	// (unchanged and still present), or the first in this sync to want it.
	claimed := map[string]proxier.ServicePortName{}
	for _, name := range names {
		var want *serviceObjects
		if sp := snap.Lookup(name); sp != nil {
			want = r.service(sp, func(id string) bool {
				if o, ok := claimed[id]; ok && o != name {
					return true
				}
				w := st.objs[id]
				return w != nil && !w.fixed && w.owner != name && !scope[w.owner] && snap.Lookup(w.owner) != nil
			})
			for _, e := range want.elems {
				claimed[e.id()] = name
			}
		}
		d.service(name, want)
	}
	if d.redoFixed {
		d.fixedObjects(r.fixed())
	}
	tx := st.nft.NewTransaction()
	d.write(tx)
	res.ops = tx.NumOperations()
	if res.ops == 0 {
		return res, nil
	}
	if err := st.nft.Run(ctx, tx); err != nil {
		return res, fmt.Errorf("partial sync transaction (%d operations): %w", res.ops, err)
	}
	if res.ops < 10000 {
		res.bytes = len(tx.String())
	}
	d.commit()
	return res, nil
}

// fullSync rewrites the whole table in one transaction and deletes what
// the table holds beyond it (found with one listing).
func (b *Backend) fullSync(ctx context.Context, st *familyState, snap *proxier.Snapshot) (familyResult, error) {
	res := familyResult{full: true}
	rs, err := render(snap)
	if err != nil {
		return res, err
	}
	existing, err := listNames(ctx, st.nft)
	if err != nil && !isNotFound(err) {
		return res, fmt.Errorf("listing table %s: %w", TableName, err)
	}
	tx := st.nft.NewTransaction()
	have := map[string]bool{}
	for typ, names := range existing {
		for _, n := range names {
			have[typ+" "+n] = true
		}
	}
	if st.needFull && len(existing["chain"]) > 0 {
		// Base chains are re-created once per process so that a hook or
		// priority changed by an older version (or by hand) is corrected:
		// adding a base chain with other properties would fail.
		for _, c := range rs.fixed.chains {
			if c.base != nil && have["chain "+c.name] {
				tx.Flush(&knftables.Chain{Name: c.name})
				tx.Delete(&knftables.Chain{Name: c.name})
				delete(have, "chain "+c.name)
			}
		}
	}
	rs.fullTransaction(tx, func(kind, name string) bool { return have[kind+" "+name] })
	want := map[string]bool{}
	for _, o := range rs.allObjects() {
		for _, c := range o.chains {
			want["chain "+c.name] = true
		}
		for _, s := range o.sets {
			want["set "+s.name] = true
		}
	}
	var staleChains []string
	for _, c := range existing["chain"] {
		if !want["chain "+c] {
			staleChains = append(staleChains, c)
			tx.Flush(&knftables.Chain{Name: c})
		}
	}
	for _, c := range staleChains {
		tx.Delete(&knftables.Chain{Name: c})
	}
	for _, s := range existing["set"] {
		if !want["set "+s] {
			tx.Delete(&knftables.Set{Name: s})
		}
	}
	for _, m := range existing["map"] {
		if !want["set "+m] {
			tx.Delete(&knftables.Map{Name: m})
		}
	}
	res.ops = tx.NumOperations()
	if err := st.nft.Run(ctx, tx); err != nil {
		return res, fmt.Errorf("full sync transaction (%d operations): %w", res.ops, err)
	}
	st.remember(rs)
	st.globals = globalsKey(snap)
	st.needFull = false
	if len(staleChains) > 0 {
		b.log.Info("deleted stale nftables chains", "family", snap.Family, "count", len(staleChains))
	}
	return res, nil
}

// allObjects returns the fixed objects and every service port's.
func (rs *ruleset) allObjects() []*objects {
	out := make([]*objects, 0, len(rs.services)+1)
	out = append(out, &rs.fixed)
	for _, s := range rs.services {
		out = append(out, &s.objects)
	}
	return out
}

// remember replaces the memory with what a full sync wrote.
func (st *familyState) remember(rs *ruleset) {
	st.objs = make(map[string]*written, len(rs.services)*8+32)
	st.bySvc = make(map[proxier.ServicePortName][]string, len(rs.services))
	st.add(&rs.fixed, proxier.ServicePortName{}, true)
	for _, s := range rs.services {
		st.bySvc[s.name] = st.add(&s.objects, s.name, false)
	}
}

// add records o's objects and returns their ids.
func (st *familyState) add(o *objects, owner proxier.ServicePortName, fixed bool) []string {
	ids := make([]string, 0, len(o.chains)+len(o.sets)+len(o.elems))
	for _, c := range o.chains {
		st.objs[c.id()] = &written{fp: c.fingerprint(), chain: c, owner: owner, fixed: fixed}
		ids = append(ids, c.id())
	}
	for _, s := range o.sets {
		st.objs[s.id()] = &written{fp: s.fingerprint(), set: s, owner: owner, fixed: fixed}
		ids = append(ids, s.id())
	}
	for _, e := range o.elems {
		st.objs[e.id()] = &written{fp: e.fingerprint(), elem: e, owner: owner, fixed: fixed}
		ids = append(ids, e.id())
	}
	return ids
}

// Cleanup deletes switchyard's table in both families (and nothing else).
// A machine without nft or nf_tables has nothing to clean.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
		st, err := b.family(f)
		if err != nil {
			b.log.Info("no nftables to clean", "family", f, "reason", err.Error())
			continue
		}
		tx := st.nft.NewTransaction()
		// Adding first makes the delete succeed when the table is absent.
		tx.Add(&knftables.Table{})
		tx.Delete(&knftables.Table{})
		if err := st.nft.Run(ctx, tx); err != nil {
			errs = append(errs, fmt.Errorf("deleting table %s %s: %w", knftablesFamily(f), TableName, err))
			continue
		}
		st.objs, st.bySvc, st.needFull = nil, nil, true
	}
	return errors.Join(errs...)
}
