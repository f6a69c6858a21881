// Package runner is switchyard's sync loop: it decides when the backend is
// synced and whether a sync is full or partial.
//
// Rules, in order of precedence:
//
//   - Nothing is synced before Ready is called (the sources delivered their
//     initial state), so a restart never programs a partial view. The first
//     sync is full.
//   - A failed sync is retried with exponential backoff (InitialBackoff,
//     doubling up to MaxBackoff); triggers do not shorten the backoff. Every
//     attempt after a failure is full, until one succeeds.
//   - A Trigger (something changed) causes a sync no sooner than
//     MinSyncPeriod after the previous attempt started; a burst of triggers
//     inside that window is coalesced into one sync.
//   - Without triggers, a sync still runs SyncPeriod after the previous one
//     (a partial sync: the backend repairs or confirms its state).
//   - A sync verifies (Verify(ctx) is true: the backend checks the kernel
//     against what it wrote and repairs drift) when the last successful
//     verifying sync started SyncPeriod or longer ago, and always when it
//     is full. The periodic sync is therefore always a verifying one, and
//     a steady stream of changes cannot postpone verification.
//   - A sync is full when the last successful full sync is older than
//     FullSyncPeriod (default one hour). This knob lives here rather than in
//     every backend so all modes share it; backends may still decide to
//     rewrite everything on their own and say so in SyncResult.Full.
//
// The runner reports to a HealthReporter (proxier health server) and a
// MetricsRecorder (Prometheus metrics) through small interfaces.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Defaults applied to zero fields of Config.
const (
	DefaultMinSyncPeriod  = time.Second
	DefaultSyncPeriod     = 30 * time.Second
	DefaultMaxBackoff     = 30 * time.Second
	DefaultFullSyncPeriod = time.Hour
)

// SyncFunc programs the backend once. full asks for a complete rewrite
// (first sync, after a failure, periodic full sync); the function should
// pass it on as Snapshot.FullSync, and Verify(ctx) as Snapshot.Verify. It
// must honour ctx.
type SyncFunc func(ctx context.Context, full bool) (proxier.SyncResult, error)

type verifyKey struct{}

// Verify reports whether the sync running with ctx is a verifying one: the
// backend should check the kernel against what it wrote and repair what
// drifted (Snapshot.Verify).
func Verify(ctx context.Context) bool {
	v, _ := ctx.Value(verifyKey{}).(bool)
	return v
}

// Config sets the runner's periods. Zero fields take the defaults.
type Config struct {
	// MinSyncPeriod is the least time between the starts of two syncs
	// triggered by changes (default 1s; negative means no minimum).
	MinSyncPeriod time.Duration
	// SyncPeriod is the most time between two syncs (default 30s).
	SyncPeriod time.Duration
	// InitialBackoff is the wait before the first retry of a failed sync
	// (default MinSyncPeriod, or 1s when MinSyncPeriod is not positive).
	InitialBackoff time.Duration
	// MaxBackoff caps the retry wait (default 30s).
	MaxBackoff time.Duration
	// FullSyncPeriod forces a full sync when the last full sync is older
	// (default 1h; negative disables).
	FullSyncPeriod time.Duration
}

func (c Config) withDefaults() Config {
	if c.MinSyncPeriod == 0 {
		c.MinSyncPeriod = DefaultMinSyncPeriod
	}
	if c.MinSyncPeriod < 0 {
		c.MinSyncPeriod = 0
	}
	if c.SyncPeriod <= 0 {
		c.SyncPeriod = DefaultSyncPeriod
	}
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = c.MinSyncPeriod
		if c.InitialBackoff <= 0 {
			c.InitialBackoff = time.Second
		}
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MaxBackoff < c.InitialBackoff {
		c.MaxBackoff = c.InitialBackoff
	}
	if c.FullSyncPeriod == 0 {
		c.FullSyncPeriod = DefaultFullSyncPeriod
	}
	return c
}

// HealthReporter is told when a sync becomes due and when one succeeded
// (healthz.Server implements it).
type HealthReporter interface {
	// QueuedUpdate records that a sync is due.
	QueuedUpdate()
	// Updated records a successful sync.
	Updated()
}

// MetricsRecorder records the runner's activity (metrics.Metrics
// implements it).
type MetricsRecorder interface {
	// SyncQueued records that a sync was requested at the given time.
	SyncQueued(at time.Time)
	// SyncSucceeded records a successful sync that took the given time and
	// finished at the given time.
	SyncSucceeded(full bool, took time.Duration, res proxier.SyncResult, at time.Time)
	// SyncFailed records a failed sync.
	SyncFailed(full bool, took time.Duration)
}

// Option customises a Runner.
type Option func(*Runner)

// WithClock makes the runner use c instead of the wall clock.
func WithClock(c Clock) Option { return func(r *Runner) { r.clock = c } }

// WithHealth makes the runner report to h.
func WithHealth(h HealthReporter) Option { return func(r *Runner) { r.health = h } }

// WithMetrics makes the runner record into m.
func WithMetrics(m MetricsRecorder) Option { return func(r *Runner) { r.metrics = m } }

// WithLogger makes the runner log to l instead of slog.Default().
func WithLogger(l *slog.Logger) Option { return func(r *Runner) { r.log = l } }

// Runner calls a SyncFunc according to the rules in the package doc.
// Trigger and Ready may be called from any goroutine.
type Runner struct {
	cfg     Config
	sync    SyncFunc
	clock   Clock
	health  HealthReporter
	metrics MetricsRecorder
	log     *slog.Logger

	wake      chan struct{}
	ready     chan struct{}
	readyOnce sync.Once
	running   chan struct{} // holds a token while Run runs
	syncMu    sync.Mutex    // serialises calls to sync

	mu           sync.Mutex
	pending      bool      // a change arrived since the last attempt started
	pendingSince time.Time // when the oldest such change arrived
	lastAttempt  time.Time // start of the last attempt (zero: none yet)
	lastFull     time.Time // start of the last successful full sync
	lastVerify   time.Time // start of the last successful verifying sync
	failures     int       // consecutive failed attempts
	retryAt      time.Time // when to retry after a failure
}

// New returns a runner that calls sync under cfg. It does nothing until Run
// or SyncOnce is called.
func New(cfg Config, sync SyncFunc, opts ...Option) *Runner {
	r := &Runner{
		cfg:     cfg.withDefaults(),
		sync:    sync,
		clock:   RealClock{},
		log:     slog.Default(),
		wake:    make(chan struct{}, 1),
		ready:   make(chan struct{}),
		running: make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Config returns the effective configuration (defaults applied).
func (r *Runner) Config() Config { return r.cfg }

// Ready signals that the sources delivered their initial state; the first
// sync runs after it. Calling it again has no effect.
func (r *Runner) Ready() {
	r.readyOnce.Do(func() {
		r.queued(r.clock.Now())
		close(r.ready)
	})
}

// Trigger records that something changed and wakes the loop. It is cheap
// and never blocks.
func (r *Runner) Trigger() {
	now := r.clock.Now()
	r.mu.Lock()
	if !r.pending {
		r.pending = true
		r.pendingSince = now
	}
	r.mu.Unlock()
	select {
	case <-r.ready:
		r.queued(now)
	default:
		// Before the first sync nothing is reported as queued: the first
		// sync is queued by Ready, as kube-proxy does once initialised.
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// OldestPending returns when the oldest change not yet picked up by a sync
// arrived, and false when nothing is pending.
func (r *Runner) OldestPending() (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pendingSince, r.pending
}

func (r *Runner) queued(at time.Time) {
	if r.health != nil {
		r.health.QueuedUpdate()
	}
	if r.metrics != nil {
		r.metrics.SyncQueued(at)
	}
}

// Run waits for Ready, then syncs according to the rules in the package
// doc until ctx ends. It returns nil when ctx ends, and an error only if
// Run is already running.
func (r *Runner) Run(ctx context.Context) error {
	select {
	case r.running <- struct{}{}:
		defer func() { <-r.running }()
	default:
		return errors.New("runner: Run is already running")
	}
	select {
	case <-ctx.Done():
		return nil
	case <-r.ready:
	}
	for ctx.Err() == nil {
		next := r.nextAttempt()
		if !next.After(r.clock.Now()) {
			_ = r.attempt(ctx, false)
			continue
		}
		t := r.clock.TimerAt(next)
		select {
		case <-ctx.Done():
		case <-r.wake:
		case <-t.C():
		}
		t.Stop()
	}
	return nil
}

// SyncOnce waits for Ready (or ctx), runs one full sync and returns its
// error. It is what --once uses; it may also be called while Run runs (the
// two never sync at the same time).
func (r *Runner) SyncOnce(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return fmt.Errorf("waiting for sources to sync: %w", ctx.Err())
	case <-r.ready:
	}
	return r.attempt(ctx, true)
}

// nextAttempt returns when the next attempt is due (zero: now).
func (r *Runner) nextAttempt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.lastAttempt.IsZero():
		return time.Time{}
	case r.failures > 0:
		return r.retryAt
	case r.pending:
		return r.lastAttempt.Add(r.cfg.MinSyncPeriod)
	}
	next := r.lastAttempt.Add(r.cfg.SyncPeriod)
	if r.cfg.FullSyncPeriod > 0 {
		if due := r.lastFull.Add(r.cfg.FullSyncPeriod); due.Before(next) {
			next = due
		}
	}
	return next
}

// attempt runs the sync function once and updates the schedule.
func (r *Runner) attempt(ctx context.Context, forceFull bool) error {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()

	start := r.clock.Now()
	r.mu.Lock()
	full := forceFull || r.failures > 0 || r.lastFull.IsZero() ||
		(r.cfg.FullSyncPeriod > 0 && start.Sub(r.lastFull) >= r.cfg.FullSyncPeriod)
	verify := full || r.lastVerify.IsZero() || start.Sub(r.lastVerify) >= r.cfg.SyncPeriod
	waited := time.Duration(0)
	if r.pending {
		waited = start.Sub(r.pendingSince)
	}
	r.pending = false
	r.lastAttempt = start
	r.mu.Unlock()

	res, err := r.sync(context.WithValue(ctx, verifyKey{}, verify), full)
	end := r.clock.Now()
	took := end.Sub(start)

	r.mu.Lock()
	var backoff time.Duration
	if err != nil {
		r.failures++
		backoff = r.backoff(r.failures)
		r.retryAt = end.Add(backoff)
	} else {
		r.failures = 0
		if full || res.Full {
			r.lastFull = start
		}
		if verify {
			r.lastVerify = start
		}
	}
	stillPending := r.pending
	failures := r.failures
	r.mu.Unlock()

	if err != nil {
		kind := "partial sync"
		if full {
			kind = "full sync"
		}
		err = fmt.Errorf("%s: %w", kind, err)
		if ctx.Err() != nil {
			// Shutting down: not a backend failure worth counting.
			return err
		}
		if r.metrics != nil {
			r.metrics.SyncFailed(full, took)
		}
		r.log.Error("sync failed, will retry with a full sync", "err", err,
			"attempt", failures, "retryIn", backoff)
		return err
	}
	if r.metrics != nil {
		r.metrics.SyncSucceeded(full || res.Full, took, res, end)
	}
	if r.health != nil {
		r.health.Updated()
		if stillPending {
			// A change arrived while syncing: it is still due.
			r.health.QueuedUpdate()
		}
	}
	r.log.Debug("synced", "full", full || res.Full, "wrote", res.Wrote,
		"bytes", res.Bytes, "rules", res.Rules, "took", took, "oldestChangeWaited", waited)
	return nil
}

// backoff returns the wait after the n-th consecutive failure (n >= 1).
func (r *Runner) backoff(n int) time.Duration {
	d := r.cfg.InitialBackoff
	for i := 1; i < n && d < r.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, r.cfg.MaxBackoff)
}
