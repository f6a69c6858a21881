package runner

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// fakeClock is a manual clock: timers fire only when Advance passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*fakeTimer]bool
}

type fakeTimer struct {
	c  *fakeClock
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), timers: map[*fakeTimer]bool{}}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) TimerAt(deadline time.Time) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: deadline, ch: make(chan time.Time, 1)}
	if !deadline.After(c.now) {
		t.ch <- c.now
		return t
	}
	c.timers[t] = true
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	active := t.c.timers[t]
	delete(t.c.timers, t)
	return active
}

// Advance moves time forward and fires every timer that is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.at.After(c.now) {
			delete(c.timers, t)
			t.ch <- c.now
		}
	}
}

// waitingUntil reports whether some timer is set for exactly at.
func (c *fakeClock) waitingUntil(at time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for t := range c.timers {
		if t.at.Equal(at) {
			return true
		}
	}
	return false
}

var errBoom = errors.New("boom")

// recorder is a SyncFunc that records its calls and fails on demand.
type recorder struct {
	mu    sync.Mutex
	calls []bool // the full flag of each call
	verif []bool // Verify(ctx) of each call
	fail  int    // fail this many upcoming calls
	clock *fakeClock
	times []time.Time
}

func (r *recorder) sync(ctx context.Context, full bool) (proxier.SyncResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, full)
	r.verif = append(r.verif, Verify(ctx))
	if r.clock != nil {
		r.times = append(r.times, r.clock.Now())
	}
	if r.fail > 0 {
		r.fail--
		return proxier.SyncResult{}, errBoom
	}
	return proxier.SyncResult{Full: full, Wrote: true, Bytes: 10, Rules: 2}, nil
}

func (r *recorder) snapshot() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bool(nil), r.calls...)
}

func (r *recorder) setFail(n int) {
	r.mu.Lock()
	r.fail = n
	r.mu.Unlock()
}

// fakeHealth counts calls.
type fakeHealth struct {
	mu              sync.Mutex
	queued, updated int
}

func (h *fakeHealth) QueuedUpdate() { h.mu.Lock(); h.queued++; h.mu.Unlock() }
func (h *fakeHealth) Updated()      { h.mu.Lock(); h.updated++; h.mu.Unlock() }
func (h *fakeHealth) counts() (int, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.queued, h.updated
}

// fakeMetrics records what the runner reports.
type fakeMetrics struct {
	mu                        sync.Mutex
	queued                    int
	succeededFull, succeededP int
	failed                    int
	lastRes                   proxier.SyncResult
}

func (m *fakeMetrics) SyncQueued(time.Time) { m.mu.Lock(); m.queued++; m.mu.Unlock() }
func (m *fakeMetrics) SyncSucceeded(full bool, _ time.Duration, res proxier.SyncResult, _ time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if full {
		m.succeededFull++
	} else {
		m.succeededP++
	}
	m.lastRes = res
}
func (m *fakeMetrics) SyncFailed(bool, time.Duration) { m.mu.Lock(); m.failed++; m.mu.Unlock() }

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type harness struct {
	t     *testing.T
	clock *fakeClock
	rec   *recorder
	r     *Runner
	done  chan error
}

func start(t *testing.T, cfg Config, opts ...Option) *harness {
	t.Helper()
	clock := newFakeClock()
	rec := &recorder{clock: clock}
	r := New(cfg, rec.sync, append([]Option{WithClock(clock)}, opts...)...)
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, clock: clock, rec: rec, r: r, done: make(chan error, 1)}
	go func() { h.done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return h
}

func (h *harness) waitCalls(n int) []bool {
	h.t.Helper()
	eventually(h.t, "sync calls", func() bool { return len(h.rec.snapshot()) >= n })
	calls := h.rec.snapshot()
	if len(calls) != n {
		h.t.Fatalf("got %d sync calls, want %d: %v", len(calls), n, calls)
	}
	return calls
}

// waitParked waits until the loop sleeps until exactly at.
func (h *harness) waitParked(at time.Time) {
	h.t.Helper()
	eventually(h.t, "runner to wait until "+at.String(), func() bool { return h.clock.waitingUntil(at) })
}

var testCfg = Config{MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second, MaxBackoff: 8 * time.Second}

func TestFirstSyncWaitsForReadyAndIsFull(t *testing.T) {
	h := start(t, testCfg)
	t0 := h.clock.Now()
	for range 5 {
		h.r.Trigger()
	}
	// Time passes, triggers arrive: still no sync before Ready.
	h.clock.Advance(time.Hour)
	if n := len(h.rec.snapshot()); n != 0 {
		t.Fatalf("synced %d times before Ready", n)
	}
	h.r.Ready()
	calls := h.waitCalls(1)
	if !calls[0] {
		t.Fatal("first sync was not full")
	}
	// Idle afterwards: parked until the periodic sync.
	h.waitParked(t0.Add(time.Hour + testCfg.SyncPeriod))
	if n := len(h.rec.snapshot()); n != 1 {
		t.Fatalf("got %d syncs, want 1", n)
	}
}

func TestBurstOfTriggersIsCoalesced(t *testing.T) {
	h := start(t, testCfg)
	t0 := h.clock.Now()
	h.r.Ready()
	h.waitCalls(1)
	for range 100 {
		h.r.Trigger()
	}
	// The loop waits for the min sync period to pass since the first sync.
	h.waitParked(t0.Add(testCfg.MinSyncPeriod))
	if n := len(h.rec.snapshot()); n != 1 {
		t.Fatalf("synced %d times inside the min sync period", n)
	}
	h.clock.Advance(testCfg.MinSyncPeriod)
	calls := h.waitCalls(2)
	if calls[1] {
		t.Fatal("triggered sync was full, want partial")
	}
	// All 100 triggers were served by that one sync: next is periodic.
	h.waitParked(t0.Add(testCfg.MinSyncPeriod + testCfg.SyncPeriod))
	if n := len(h.rec.snapshot()); n != 2 {
		t.Fatalf("got %d syncs for a burst, want 2 in total", n)
	}
}

func TestMinSyncPeriodRespected(t *testing.T) {
	h := start(t, testCfg)
	t0 := h.clock.Now()
	h.r.Ready()
	h.waitCalls(1)
	// Triggers spread over the window: none syncs before it ends.
	for i := range 4 {
		h.r.Trigger()
		h.waitParked(t0.Add(testCfg.MinSyncPeriod))
		h.clock.Advance(testCfg.MinSyncPeriod / 5)
		if n := len(h.rec.snapshot()); n != 1 {
			t.Fatalf("after trigger %d: %d syncs inside the min sync period", i, n)
		}
	}
	h.clock.Advance(testCfg.MinSyncPeriod / 5)
	h.waitCalls(2)
	h.rec.mu.Lock()
	got := h.rec.times[1]
	h.rec.mu.Unlock()
	if !got.Equal(t0.Add(testCfg.MinSyncPeriod)) {
		t.Fatalf("second sync at %v, want %v", got, t0.Add(testCfg.MinSyncPeriod))
	}
	// A trigger long after the window syncs at once.
	h.clock.Advance(10 * time.Second)
	h.r.Trigger()
	h.waitCalls(3)
}

func TestPeriodicSyncAndFullSyncPeriod(t *testing.T) {
	cfg := testCfg
	cfg.FullSyncPeriod = 3 * cfg.SyncPeriod
	h := start(t, cfg)
	t0 := h.clock.Now()
	h.r.Ready()
	h.waitCalls(1)
	for i := 1; i <= 3; i++ {
		h.waitParked(t0.Add(time.Duration(i) * cfg.SyncPeriod))
		h.clock.Advance(cfg.SyncPeriod)
		calls := h.waitCalls(i + 1)
		wantFull := i == 3
		if calls[i] != wantFull {
			t.Fatalf("periodic sync %d: full=%v, want %v", i, calls[i], wantFull)
		}
	}
}

func (r *recorder) verifies() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bool(nil), r.verif...)
}

// Every periodic sync verifies, triggered ones in between do not, and a
// steady stream of changes cannot postpone verification past SyncPeriod.
func TestVerifyOncePerSyncPeriod(t *testing.T) {
	h := start(t, testCfg)
	t0 := h.clock.Now()
	h.r.Ready()
	h.waitCalls(1)
	if v := h.rec.verifies(); !v[0] {
		t.Fatal("first (full) sync does not verify")
	}
	h.r.Trigger()
	h.waitParked(t0.Add(testCfg.MinSyncPeriod))
	h.clock.Advance(testCfg.MinSyncPeriod)
	h.waitCalls(2)
	if v := h.rec.verifies(); v[1] {
		t.Fatal("a triggered sync right after the first verified")
	}
	// Idle: the periodic sync verifies.
	next := t0.Add(testCfg.MinSyncPeriod + testCfg.SyncPeriod)
	h.waitParked(next)
	h.clock.Advance(testCfg.SyncPeriod)
	h.waitCalls(3)
	if v := h.rec.verifies(); !v[2] {
		t.Fatal("periodic sync does not verify")
	}
	// Changes every MinSyncPeriod: exactly one sync per SyncPeriod verifies.
	n := 3
	verified := 0
	for i := 0; i < int(testCfg.SyncPeriod/testCfg.MinSyncPeriod); i++ {
		h.r.Trigger()
		h.clock.Advance(testCfg.MinSyncPeriod)
		n++
		h.waitCalls(n)
		if v := h.rec.verifies(); v[n-1] {
			verified++
		}
	}
	if verified != 1 {
		t.Fatalf("%d of the triggered syncs in one sync period verified, want 1", verified)
	}
}

func TestFailureBacksOffAndForcesFullSync(t *testing.T) {
	health := &fakeHealth{}
	mets := &fakeMetrics{}
	h := start(t, testCfg, WithHealth(health), WithMetrics(mets))
	h.r.Ready()
	h.waitCalls(1)
	h.clock.Advance(5 * time.Second)

	h.rec.setFail(5)
	h.r.Trigger()
	if calls := h.waitCalls(2); calls[1] {
		t.Fatal("triggered sync before failure was full")
	}
	// Retries at 1s, 2s, 4s, 8s, 8s (capped) after each failure, all full.
	at := h.clock.Now()
	for i, wait := range []time.Duration{1, 2, 4, 8, 8} {
		at = at.Add(wait * time.Second)
		h.waitParked(at)
		h.r.Trigger() // triggers do not shorten the backoff
		h.waitParked(at)
		h.clock.Advance(wait * time.Second)
		calls := h.waitCalls(3 + i)
		if !calls[2+i] {
			t.Fatalf("retry %d was not full", i+1)
		}
	}
	// The 6th attempt (5th retry) succeeded; the next trigger is partial.
	h.clock.Advance(time.Minute)
	h.r.Trigger()
	if calls := h.waitCalls(8); calls[7] {
		t.Fatal("sync after a successful retry was full")
	}
	mets.mu.Lock()
	failed, full, partial := mets.failed, mets.succeededFull, mets.succeededP
	mets.mu.Unlock()
	if failed != 5 || full != 2 || partial != 1 {
		t.Fatalf("metrics: failed=%d full=%d partial=%d, want 5, 2, 1", failed, full, partial)
	}
	if _, updated := health.counts(); updated != 3 {
		t.Fatalf("health Updated called %d times, want 3 (successes only)", updated)
	}
}

func TestHealthQueuedOnlyAfterReady(t *testing.T) {
	health := &fakeHealth{}
	h := start(t, testCfg, WithHealth(health))
	h.r.Trigger()
	if q, _ := health.counts(); q != 0 {
		t.Fatalf("QueuedUpdate called %d times before Ready", q)
	}
	if _, ok := h.r.OldestPending(); !ok {
		t.Fatal("trigger before Ready not recorded as pending")
	}
	h.r.Ready()
	h.waitCalls(1)
	eventually(t, "Updated", func() bool { _, u := health.counts(); return u == 1 })
	if _, ok := h.r.OldestPending(); ok {
		t.Fatal("still pending after a sync")
	}
	h.r.Trigger()
	if q, _ := health.counts(); q != 2 {
		t.Fatalf("QueuedUpdate called %d times, want 2 (Ready, Trigger)", q)
	}
}

func TestSyncOnceReturnsError(t *testing.T) {
	rec := &recorder{fail: 1}
	mets := &fakeMetrics{}
	r := New(Config{}, rec.sync, WithMetrics(mets))
	r.Ready()
	err := r.SyncOnce(context.Background())
	if !errors.Is(err, errBoom) {
		t.Fatalf("SyncOnce error = %v, want the sync's error", err)
	}
	if err := r.SyncOnce(context.Background()); err != nil {
		t.Fatalf("second SyncOnce: %v", err)
	}
	if calls := rec.snapshot(); len(calls) != 2 || !calls[0] || !calls[1] {
		t.Fatalf("calls = %v, want two full syncs", calls)
	}
	if mets.failed != 1 || mets.succeededFull != 1 || mets.lastRes.Bytes != 10 {
		t.Fatalf("metrics = %+v", mets)
	}
}

func TestSyncOnceWaitsForReady(t *testing.T) {
	rec := &recorder{}
	r := New(Config{}, rec.sync)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.SyncOnce(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("SyncOnce before Ready = %v, want context.Canceled", err)
	}
	if n := len(rec.snapshot()); n != 0 {
		t.Fatalf("synced %d times before Ready", n)
	}
}

// TestRealClock runs the loop on the wall clock with short periods: every
// trigger is eventually served, and cancel stops Run while it waits and
// while a sync is in flight.
func TestRealClock(t *testing.T) {
	var mu sync.Mutex
	seen, want := 0, 0
	inSync := make(chan struct{}, 1)
	block := make(chan struct{})
	syncFn := func(ctx context.Context, full bool) (proxier.SyncResult, error) {
		mu.Lock()
		seen = want
		blocking := seen == -1
		mu.Unlock()
		if blocking {
			inSync <- struct{}{}
			select {
			case <-ctx.Done():
				return proxier.SyncResult{}, ctx.Err()
			case <-block:
			}
		}
		return proxier.SyncResult{}, nil
	}
	r := New(Config{MinSyncPeriod: 5 * time.Millisecond, SyncPeriod: time.Hour}, syncFn)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	r.Ready()
	for i := 1; i <= 100; i++ {
		mu.Lock()
		want = i
		mu.Unlock()
		r.Trigger()
	}
	eventually(t, "last trigger to be synced", func() bool { mu.Lock(); defer mu.Unlock(); return seen == 100 })

	if err := r.Run(ctx); err == nil {
		t.Fatal("second concurrent Run did not fail")
	}

	// Block inside a sync, then cancel: Run returns once the sync honours ctx.
	mu.Lock()
	want = -1
	mu.Unlock()
	r.Trigger()
	select {
	case <-inSync:
	case <-time.After(10 * time.Second):
		t.Fatal("blocking sync never started")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestBackoffSequence(t *testing.T) {
	r := New(Config{MinSyncPeriod: 500 * time.Millisecond, MaxBackoff: 3 * time.Second}, nil)
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second}
	for i, w := range want {
		if got := r.backoff(i + 1); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	if got := r.backoff(1000); got != 3*time.Second {
		t.Errorf("backoff(1000) = %v, want cap", got)
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.MinSyncPeriod != time.Second || c.SyncPeriod != 30*time.Second ||
		c.InitialBackoff != time.Second || c.MaxBackoff != 30*time.Second || c.FullSyncPeriod != time.Hour {
		t.Fatalf("defaults = %+v", c)
	}
	c = Config{MinSyncPeriod: -1, FullSyncPeriod: -1}.withDefaults()
	if c.MinSyncPeriod != 0 || c.InitialBackoff != time.Second || c.FullSyncPeriod != -1 {
		t.Fatalf("negative knobs = %+v", c)
	}
}
