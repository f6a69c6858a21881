package app

import (
	"context"
	"errors"
	"fmt"
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
	// failed receives a server's bind error with --bind-address-hard-fail.
	failed chan error
}

// serverRetryInterval is how long a health or metrics server that cannot
// bind its port waits before trying again (kube-proxy's 5 s).
var serverRetryInterval = 5 * time.Second

// newObservers creates the health server and the metrics and, unless
// serve is false (--once), serves them over HTTP (an empty address
// disables one) until ctx ends. A port that cannot be bound is logged and
// retried; with --bind-address-hard-fail it is reported on obs.failed
// instead. Metrics and health report the families the node proxies (both
// when fams is empty).
func newObservers(ctx context.Context, o *Options, log *slog.Logger, serve bool, fams []proxier.IPFamily) *observers {
	if len(fams) == 0 {
		fams = []proxier.IPFamily{proxier.IPv4, proxier.IPv6}
	}
	famNames := make([]string, 0, len(fams))
	for _, f := range fams {
		famNames = append(famNames, f.String())
	}
	obs := &observers{
		metrics: metrics.New(o.ProxyMode, fams...),
		log:     log,
		failed:  make(chan error, 2),
	}
	// Like kube-proxy: unhealthy when a queued update waits longer than
	// twice the sync period.
	obs.health = healthz.New(2*o.SyncPeriod, healthz.WithProbeRecorder(obs.metrics),
		healthz.WithFamilies(famNames...))
	obs.metrics.SetBuildInfo(Version)
	if o.EnableProfiling {
		obs.metrics.EnableProfiling()
	}
	// /configz: the effective configuration, as kube-proxy's.
	obs.metrics.SetConfigz("kubeproxy.config.k8s.io", o.kubeProxyConfiguration())
	if !serve {
		return obs
	}
	for _, srv := range []struct {
		name, addr string
		handler    interface {
			Serve(context.Context, net.Listener) error
		}
	}{{"healthz", o.HealthzBindAddress, obs.health}, {"metrics", o.MetricsBindAddress, obs.metrics}} {
		if srv.addr == "" {
			continue
		}
		go obs.serve(ctx, srv.name, srv.addr, srv.handler.Serve, o.BindAddressHardFail)
	}
	return obs
}

// serve binds addr and serves on it, retrying a failed bind or a server
// that stopped, until ctx ends.
func (obs *observers) serve(ctx context.Context, name, addr string, serve func(context.Context, net.Listener) error, hardFail bool) {
	for ctx.Err() == nil {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			err = serve(ctx, ln)
			if ctx.Err() != nil || errors.Is(err, http.ErrServerClosed) {
				return
			}
		}
		if err == nil {
			err = errors.New("server returned")
		}
		if hardFail {
			obs.failed <- fmt.Errorf("%s server on %s: %w (--bind-address-hard-fail)", name, addr, err)
			return
		}
		obs.log.Error("HTTP server failed; retrying", "server", name, "addr", addr, "err", err, "retryIn", serverRetryInterval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(serverRetryInterval):
		}
	}
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
