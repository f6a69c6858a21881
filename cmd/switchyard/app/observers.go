package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/healthz"
	"github.com/switchyard-proxy/switchyard/proxier/metrics"
	"github.com/switchyard-proxy/switchyard/proxier/runner"
	"github.com/switchyard-proxy/switchyard/proxier/tracker"
)

// observers bundle the health server and the metrics, and the HTTP
// servers that expose them.
type observers struct {
	health  *healthz.Server
	metrics *metrics.Metrics
	log     *slog.Logger
	pendSvc atomic.Int64
	pendEps atomic.Int64
}

// newObservers starts the healthz and metrics servers (an empty address
// disables one). They stop when ctx ends.
func newObservers(ctx context.Context, o *Options, log *slog.Logger) (*observers, error) {
	obs := &observers{
		metrics: metrics.New(o.ProxyMode, proxier.IPv4, proxier.IPv6),
		log:     log,
	}
	// Like kube-proxy: unhealthy when a queued update waits longer than
	// twice the sync period.
	obs.health = healthz.New(2*o.SyncPeriod, healthz.WithProbeRecorder(obs.metrics))
	for _, srv := range []struct {
		addr    string
		handler interface {
			Serve(context.Context, net.Listener) error
		}
	}{{o.HealthzBindAddress, obs.health}, {o.MetricsBindAddress, obs.metrics}} {
		if srv.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", srv.addr)
		if err != nil {
			return nil, err
		}
		go func() {
			if err := srv.handler.Serve(ctx, ln); err != nil && !errors.Is(err, http.ErrServerClosed) && ctx.Err() == nil {
				log.Error("HTTP server stopped", "addr", ln.Addr().String(), "err", err)
			}
		}()
	}
	return obs, nil
}

func (obs *observers) runnerOptions() []runner.Option {
	return []runner.Option{runner.WithHealth(obs.health), runner.WithMetrics(obs.metrics)}
}

func (obs *observers) healthy() bool { return obs.health.Healthy() }

func (obs *observers) serviceChanged() { obs.metrics.ServiceChanged(int(obs.pendSvc.Add(1))) }

func (obs *observers) endpointSliceChanged() { obs.metrics.EndpointsChanged(int(obs.pendEps.Add(1))) }

func (obs *observers) setNode(node *corev1.Node) { obs.health.SetNode(node) }

// planned records that a plan picked up the pending changes.
func (obs *observers) planned(res tracker.Result) {
	obs.pendSvc.Add(-int64(res.ServiceChanges))
	obs.pendEps.Add(-int64(res.EndpointSliceChanges))
	obs.metrics.SetPending(int(obs.pendSvc.Load()), int(obs.pendEps.Load()))
	obs.metrics.ObserveSnapshots(res.Snapshots)
}

// programmed records the network programming latency of the changes a
// successful sync wrote.
func (obs *observers) programmed(res tracker.Result) {
	now := time.Now()
	for _, snap := range res.Snapshots {
		obs.metrics.NetworkProgrammed(snap.Family, res.TriggerTimes, now)
	}
}
