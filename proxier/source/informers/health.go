package informers

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"
)

// DefaultProbeInterval is how often, while watches fail, the API server is
// probed to notice that it is back.
const DefaultProbeInterval = 2 * time.Second

// health turns the informers' watch errors into operator-facing logs: the
// first failure at WARN, later ones at DEBUG while the failure lasts, and
// the recovery at INFO. client-go logs them only through klog (and the
// usual ones, a closed or expired watch, at high verbosity). While
// failing, probe is called every interval; its first success is the
// recovery.
type health struct {
	log      *slog.Logger
	probe    func(context.Context) error
	interval time.Duration

	mu      sync.Mutex
	failing bool
	since   time.Time
	kick    chan struct{}
}

func newHealth(log *slog.Logger, probe func(context.Context) error, interval time.Duration) *health {
	if interval <= 0 {
		interval = DefaultProbeInterval
	}
	return &health{log: log, probe: probe, interval: interval, kick: make(chan struct{}, 1)}
}

// benign reports the errors that end a watch in normal operation: the
// reflector resumes or relists without the API server being away.
func benign(err error) bool {
	return errors.Is(err, io.EOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
}

// onError is the informers' WatchErrorHandlerWithContext.
func (h *health) onError(_ context.Context, r *cache.Reflector, err error) {
	typ := ""
	if r != nil {
		typ = r.TypeDescription()
	}
	h.report(typ, err)
}

// report records one list or watch failure of the informer for typ.
func (h *health) report(typ string, err error) {
	if benign(err) {
		h.log.Debug("watch closed; resuming", "type", typ, "err", err)
		return
	}
	h.mu.Lock()
	first := !h.failing
	if first {
		h.failing, h.since = true, time.Now()
	}
	h.mu.Unlock()
	if !first {
		h.log.Debug("API server list/watch still failing", "type", typ, "err", err)
		return
	}
	h.log.Warn("API server list/watch failed; the rules keep their last state while informers retry with backoff (logged again when it recovers)",
		"type", typ, "err", err)
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// Failing reports whether a failure is being reported.
func (h *health) Failing() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failing
}

// run probes the API server after each reported failure until a probe
// succeeds, then logs the recovery. It returns when ctx ends.
func (h *health) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.kick:
		}
		h.waitRecovery(ctx)
	}
}

func (h *health) waitRecovery(ctx context.Context) {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := h.probe(ctx)
		if err != nil {
			h.log.Debug("API server probe failed", "err", err)
			continue
		}
		h.mu.Lock()
		since := h.since
		h.failing = false
		h.mu.Unlock()
		h.log.Info("API server list/watch works again", "failingFor", time.Since(since).Round(time.Millisecond))
		return
	}
}
