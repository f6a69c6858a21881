package conntrack

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Recorder receives the reconciler's metrics (proxier/metrics implements
// it with kube-proxy's kubeproxy_conntrack_reconciler_* names).
type Recorder interface {
	// ConntrackReconciled records one reconcile of one family: how long it
	// took and how many entries it deleted.
	ConntrackReconciled(family proxier.IPFamily, took time.Duration, deleted int)
}

// Config configures a Reconciler.
type Config struct {
	// Table is the conntrack table; nil means NewNetlinkTable().
	Table Table
	// Logger receives logs; nil means slog.Default().
	Logger *slog.Logger
	// Recorder receives metrics; nil records nothing (see SetRecorder).
	Recorder Recorder
}

// Reconciler is a proxier.Backend that runs another backend's Sync and
// then deletes the conntrack entries the new snapshots made stale.
type Reconciler struct {
	backend proxier.Backend
	table   Table
	log     *slog.Logger

	mu      sync.Mutex
	rec     Recorder
	last    map[proxier.IPFamily]*proxier.Snapshot // last synced snapshot
	pending map[proxier.IPFamily]bool              // last reconcile failed
}

var (
	_ proxier.Backend  = (*Reconciler)(nil)
	_ proxier.Renderer = (*Reconciler)(nil)
)

// Wrap returns backend decorated with conntrack cleanup.
func Wrap(backend proxier.Backend, cfg Config) *Reconciler {
	if cfg.Table == nil {
		cfg.Table = NewNetlinkTable()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Reconciler{
		backend: backend, table: cfg.Table, log: cfg.Logger.With("component", "conntrack"), rec: cfg.Recorder,
		last: map[proxier.IPFamily]*proxier.Snapshot{}, pending: map[proxier.IPFamily]bool{},
	}
}

// SetRecorder sets where metrics go (the metrics exist after the backend).
func (r *Reconciler) SetRecorder(rec Recorder) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rec = rec
}

// Unwrap returns the decorated backend.
func (r *Reconciler) Unwrap() proxier.Backend { return r.backend }

// Name returns the decorated backend's mode name.
func (r *Reconciler) Name() string { return r.backend.Name() }

// Cleanup runs the decorated backend's Cleanup; conntrack entries are the
// kernel's, not switchyard's, and are left alone.
func (r *Reconciler) Cleanup(ctx context.Context) error { return r.backend.Cleanup(ctx) }

// Render forwards to the decorated backend if it is a proxier.Renderer.
func (r *Reconciler) Render(snaps []*proxier.Snapshot) (string, error) {
	if rr, ok := r.backend.(proxier.Renderer); ok {
		return rr.Render(snaps)
	}
	return "", fmt.Errorf("proxy mode %s cannot render its rules", r.backend.Name())
}

// Sync runs the decorated backend's Sync; if it succeeds, it reconciles
// conntrack against each snapshot. Reconcile failures are logged and
// retried at the next sync; they do not fail the Sync.
func (r *Reconciler) Sync(ctx context.Context, snaps []*proxier.Snapshot) (proxier.SyncResult, error) {
	res, err := r.backend.Sync(ctx, snaps)
	if err != nil {
		return res, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range snaps {
		switch {
		case s == nil:
		case ctx.Err() != nil:
			r.pending[s.Family] = true // shutting down or timed out: next time
		default:
			r.reconcile(s)
		}
	}
	return res, nil
}

// reconcile cleans one family if a UDP/SCTP service port changed. The
// snapshot becomes the reference for the next one only once it has been
// reconciled (or needed nothing), so a failure loses no removed service.
func (r *Reconciler) reconcile(snap *proxier.Snapshot) {
	fam := snap.Family
	removed, relevant := changes(r.last[fam], snap, r.pending[fam])
	x := newIndex(snap, removed)
	if !relevant || x.empty() {
		r.last[fam] = snap
		delete(r.pending, fam)
		return
	}
	start := time.Now()
	res, err := r.table.Delete(fam, x.protocols(), x.stale)
	took := time.Since(start)
	if r.rec != nil {
		r.rec.ConntrackReconciled(fam, took, res.Deleted)
	}
	switch {
	case err != nil:
		r.pending[fam] = true
		r.log.Warn("conntrack cleanup failed or incomplete; retrying at the next sync", "family", fam, "deleted", res.Deleted, "err", err)
	default:
		r.last[fam] = snap
		delete(r.pending, fam)
		if res.Deleted > 0 {
			r.log.Info("deleted stale conntrack entries", "family", fam, "deleted", res.Deleted, "scanned", res.Scanned, "took", took.Round(time.Microsecond))
		} else {
			r.log.Debug("conntrack reconciled", "family", fam, "scanned", res.Scanned, "took", took.Round(time.Microsecond))
		}
	}
}

// changes returns the UDP/SCTP service ports of prev that snap no longer
// has, and whether anything that matters to conntrack changed (a full
// sync, a retry, or a change to a UDP/SCTP service port).
func changes(prev, snap *proxier.Snapshot, retry bool) (removed []*proxier.ServicePort, relevant bool) {
	gone := func(sp *proxier.ServicePort) {
		if handled(sp.Protocol) && snap.Lookup(sp.Name) == nil {
			removed = append(removed, sp)
		}
	}
	if snap.FullSync || prev == nil || retry {
		relevant = true
		if prev != nil {
			for _, sp := range prev.Services {
				gone(sp)
			}
		}
		return removed, relevant
	}
	for name := range snap.Changed {
		if !handled(name.Protocol) {
			continue
		}
		relevant = true
		if sp := prev.Lookup(name); sp != nil {
			gone(sp)
		}
	}
	return removed, relevant
}
