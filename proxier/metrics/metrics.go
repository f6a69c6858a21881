// Package metrics holds switchyard's Prometheus metrics, named and labelled
// as kube-proxy's so existing dashboards and alerts keep working, plus a few
// switchyard_ ones. Everything lives in the Metrics' own registry (never the
// global one), served by Handler on --metrics-bind-address with /metrics,
// /proxyMode and /healthz, as kube-proxy does.
//
// switchyard syncs every IP family in one Backend.Sync call, while kube-proxy
// runs one proxier per family. Metrics labelled ip_family therefore record
// the same sync once per family the node runs (the families given to New),
// except kubeproxy_network_programming_duration_seconds, which the caller
// reports per family.
//
// Who calls what: the runner calls SyncQueued, SyncSucceeded and SyncFailed
// (runner.MetricsRecorder); the health server calls HealthzProbe and
// LivezProbe (healthz.ProbeRecorder); the change tracker calls
// ServiceChanged, EndpointsChanged and SetPending; the runner's SyncFunc
// calls NetworkProgrammed (with the LastChangeTriggerTime of the slices the
// sync picked up) and ObserveSnapshots once Backend.Sync has succeeded;
// the conntrack reconciler calls ConntrackReconciled (conntrack.Recorder).
//
// /metrics also serves the Go runtime and process collectors and
// client-go's rest_client_* series (restclient.go), as kube-proxy does.
package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/switchyard-proxy/switchyard/internal/httpserve"
	"github.com/switchyard-proxy/switchyard/proxier"
)

const ns = "kubeproxy"

// SyncBuckets are kube-proxy's sync duration buckets: 1ms doubling 15 times.
var SyncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// NetworkProgrammingBuckets are kube-proxy's network programming latency
// buckets: 0, 0.25s, 0.5s, 1s…59s, 60s…115s by 5s, 2min…5min by 30s.
var NetworkProgrammingBuckets = mergeBuckets(
	prometheus.LinearBuckets(0.25, 0.25, 2),
	prometheus.LinearBuckets(1, 1, 59),
	prometheus.LinearBuckets(60, 5, 12),
	prometheus.LinearBuckets(120, 30, 7),
)

func mergeBuckets(parts ...[]float64) []float64 {
	out := []float64{0}
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// Metrics records what the proxy does. Its methods are safe for concurrent
// use. It implements runner.MetricsRecorder and healthz.ProbeRecorder.
type Metrics struct {
	reg      *prometheus.Registry
	mode     string
	families []string
	start    time.Time

	syncDuration        *prometheus.HistogramVec
	syncFullDuration    *prometheus.HistogramVec
	syncPartialDuration *prometheus.HistogramVec
	networkProgramming  *prometheus.HistogramVec
	lastSync            *prometheus.GaugeVec
	lastQueued          *prometheus.GaugeVec
	endpointPending     prometheus.Gauge
	endpointTotal       prometheus.Counter
	servicePending      prometheus.Gauge
	serviceTotal        prometheus.Counter
	modeFailures        *prometheus.CounterVec // nil when the mode has none
	// The iptables mode's: partial restore failures and rules per table
	// (nil in other modes, as upstream registers them for iptables only).
	partialFailures   *prometheus.CounterVec
	iptablesTotal     *prometheus.GaugeVec
	iptablesLast      *prometheus.GaugeVec
	noLocalEndpoints  *prometheus.GaugeVec
	nodePortConflicts *prometheus.GaugeVec
	healthzTotal      *prometheus.CounterVec
	livezTotal        *prometheus.CounterVec
	conntrackDuration *prometheus.HistogramVec
	conntrackDeleted  *prometheus.CounterVec

	syncFailures *prometheus.CounterVec
	syncs        *prometheus.CounterVec
	lastBytes    prometheus.Gauge
	lastRules    prometheus.Gauge
	driftRepairs *prometheus.CounterVec

	configzMu sync.Mutex
	configz   map[string]any
	profiling bool
}

// New returns metrics for the given proxy mode ("iptables", "ipvs",
// "nftables") on a node running the given IP families (IPv4 when none is
// given), in a fresh registry that also holds the Go runtime and process
// collectors.
func New(mode string, families ...proxier.IPFamily) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), mode: mode, start: time.Now()}
	if len(families) == 0 {
		families = []proxier.IPFamily{proxier.IPv4}
	}
	for _, f := range families {
		m.families = append(m.families, f.String())
	}
	fam := []string{"ip_family"}
	hist := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: name, Help: alpha(help), Buckets: buckets}, fam)
	}
	m.syncDuration = hist("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", SyncBuckets)
	m.syncFullDuration = hist("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", SyncBuckets)
	m.syncPartialDuration = hist("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", SyncBuckets)
	m.networkProgramming = hist("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", NetworkProgrammingBuckets)
	m.lastSync = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_last_timestamp_seconds",
		Help: alpha("The last time proxy rules were successfully synced")}, fam)
	m.lastQueued = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_last_queued_timestamp_seconds",
		Help: alpha("The last time a sync of proxy rules was queued")}, fam)
	m.endpointPending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_endpoint_changes_pending",
		Help: alpha("Pending proxy rules Endpoint changes")})
	m.endpointTotal = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "sync_proxy_rules_endpoint_changes_total",
		Help: alpha("Cumulative proxy rules Endpoint changes")})
	m.servicePending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_service_changes_pending",
		Help: alpha("Pending proxy rules Service changes")})
	m.serviceTotal = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "sync_proxy_rules_service_changes_total",
		Help: alpha("Cumulative proxy rules Service changes")})
	m.noLocalEndpoints = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_no_local_endpoints_total",
		Help: alpha("Number of services with a Local traffic policy and no endpoints")}, []string{"ip_family", "traffic_policy"})
	m.nodePortConflicts = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "service_node_port_conflicts",
		Help: "Service ports whose node port is held by an older service and is therefore not served (their other addresses are)."}, fam)
	m.healthzTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "proxy_healthz_total",
		Help: alpha("Cumulative proxy healthz HTTP status")}, []string{"code"})
	m.livezTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "proxy_livez_total",
		Help: alpha("Cumulative proxy livez HTTP status")}, []string{"code"})
	m.conntrackDuration = hist("conntrack_reconciler_sync_duration_seconds", "ReconcileConntrackFlowsLatency latency in seconds", SyncBuckets)
	m.conntrackDeleted = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "conntrack_reconciler_deleted_entries_total",
		Help: alpha("Cumulative conntrack flows deleted by conntrack reconciler")}, fam)
	if mode == "iptables" {
		m.partialFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sync_proxy_rules_iptables_partial_restore_failures_total",
			Help: alpha("Cumulative proxy iptables partial restore failures")}, fam)
		tf := []string{"table", "ip_family"}
		m.iptablesTotal = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_iptables_total",
			Help: alpha("Total number of iptables rules owned by kube-proxy")}, tf)
		m.iptablesLast = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "sync_proxy_rules_iptables_last",
			Help: alpha("Number of iptables rules written by kube-proxy in last sync")}, tf)
	}
	switch mode {
	case "iptables", "ipvs":
		m.modeFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sync_proxy_rules_iptables_restore_failures_total",
			Help: alpha("Cumulative proxy iptables restore failures")}, fam)
	case "nftables":
		m.modeFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sync_proxy_rules_nftables_sync_failures_total",
			Help: alpha("Cumulative proxy nftables sync failures")}, fam)
	}

	m.syncFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "sync_proxy_rules_failures_total",
		Help: "Cumulative failed syncs of proxy rules, in any mode"}, []string{"sync_type"})
	m.syncs = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "syncs_total",
		Help: "Cumulative syncs of proxy rules by type (full, partial) and result (success, failure)"}, []string{"sync_type", "result"})
	m.lastBytes = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "switchyard", Name: "sync_proxy_rules_last_written_bytes",
		Help: "Bytes written to the kernel by the last successful sync (0 when it wrote nothing)"})
	m.lastRules = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "switchyard", Name: "sync_proxy_rules_last_written_rules",
		Help: "Rules, virtual servers or elements written by the last successful sync (0 when it wrote nothing)"})

	m.driftRepairs = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "sync_drift_repairs_total",
		Help: "Cumulative objects (chains, jump rules, ipsets, virtual servers, real servers, addresses) found changed behind switchyard's back and repaired, by kind"}, []string{"kind"})

	m.reg.MustRegister(
		m.driftRepairs,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.syncDuration, m.syncFullDuration, m.syncPartialDuration, m.networkProgramming,
		m.lastSync, m.lastQueued, m.endpointPending, m.endpointTotal, m.servicePending, m.serviceTotal,
		m.noLocalEndpoints, m.nodePortConflicts, m.healthzTotal, m.livezTotal, m.conntrackDuration, m.conntrackDeleted,
		m.syncFailures, m.syncs, m.lastBytes, m.lastRules,
	)
	if m.partialFailures != nil {
		m.reg.MustRegister(m.partialFailures, m.iptablesTotal, m.iptablesLast)
	}
	if m.modeFailures != nil {
		m.reg.MustRegister(m.modeFailures)
	}
	// Make the per-family series exist from the start, as kube-proxy's do.
	for _, f := range m.families {
		for _, v := range []*prometheus.HistogramVec{m.syncDuration, m.syncFullDuration, m.syncPartialDuration, m.networkProgramming} {
			v.WithLabelValues(f)
		}
		m.lastSync.WithLabelValues(f)
		m.lastQueued.WithLabelValues(f)
		m.conntrackDuration.WithLabelValues(f)
		m.conntrackDeleted.WithLabelValues(f)
		if m.partialFailures != nil {
			m.partialFailures.WithLabelValues(f)
		}
		if m.modeFailures != nil {
			m.modeFailures.WithLabelValues(f)
		}
	}
	for _, t := range []string{"full", "partial"} {
		m.syncFailures.WithLabelValues(t)
	}
	return m
}

// Registry returns the registry holding every metric.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Gatherer returns what /metrics serves: the registry plus client-go's
// rest_client_* series (restclient.go).
func (m *Metrics) Gatherer() prometheus.Gatherer {
	return prometheus.Gatherers{m.reg, defaultRestClientGatherer}
}

// Mode returns the proxy mode name given to New.
func (m *Metrics) Mode() string { return m.mode }

func syncType(full bool) string {
	if full {
		return "full"
	}
	return "partial"
}

// SyncQueued records that a sync was requested at the given time.
func (m *Metrics) SyncQueued(at time.Time) {
	for _, f := range m.families {
		m.lastQueued.WithLabelValues(f).Set(seconds(at))
	}
}

// SyncSucceeded records a successful sync: its duration (overall and as
// full or partial), the time it finished and what it wrote.
func (m *Metrics) SyncSucceeded(full bool, took time.Duration, res proxier.SyncResult, at time.Time) {
	m.observeDuration(full, took)
	for _, f := range m.families {
		m.lastSync.WithLabelValues(f).Set(seconds(at))
	}
	m.syncs.WithLabelValues(syncType(full), "success").Inc()
	bytes, rules := 0, 0
	if res.Wrote {
		bytes, rules = res.Bytes, res.Rules
	}
	m.lastBytes.Set(float64(bytes))
	m.lastRules.Set(float64(rules))
	for kind, n := range res.Repaired {
		m.driftRepairs.WithLabelValues(kind).Add(float64(n))
	}
	if m.iptablesTotal != nil {
		for _, tr := range res.IPTables {
			m.iptablesTotal.WithLabelValues(tr.Table, tr.Family.String()).Set(float64(tr.Total))
			m.iptablesLast.WithLabelValues(tr.Table, tr.Family.String()).Set(float64(tr.Written))
		}
	}
}

// SyncFailed records a failed sync. As in kube-proxy, its duration is
// observed too. The mode's kube-proxy failure counter
// (…_iptables_restore_failures_total in iptables and ipvs modes,
// …_nftables_sync_failures_total in nftables mode) counts every failed sync.
func (m *Metrics) SyncFailed(full bool, took time.Duration) {
	m.observeDuration(full, took)
	m.syncs.WithLabelValues(syncType(full), "failure").Inc()
	m.syncFailures.WithLabelValues(syncType(full)).Inc()
	if !full && m.partialFailures != nil {
		// A failed partial sync: the next one is full (upstream counts its
		// partial restore failures the same way).
		for _, f := range m.families {
			m.partialFailures.WithLabelValues(f).Inc()
		}
	}
	if m.modeFailures != nil {
		for _, f := range m.families {
			m.modeFailures.WithLabelValues(f).Inc()
		}
	}
}

func (m *Metrics) observeDuration(full bool, took time.Duration) {
	s := took.Seconds()
	byType := m.syncPartialDuration
	if full {
		byType = m.syncFullDuration
	}
	for _, f := range m.families {
		m.syncDuration.WithLabelValues(f).Observe(s)
		byType.WithLabelValues(f).Observe(s)
	}
}

// ServiceChanged counts one Service change and sets how many service
// changes are pending.
func (m *Metrics) ServiceChanged(pending int) {
	m.serviceTotal.Inc()
	m.servicePending.Set(float64(pending))
}

// EndpointsChanged counts one EndpointSlice change and sets how many
// endpoint changes are pending.
func (m *Metrics) EndpointsChanged(pending int) {
	m.endpointTotal.Inc()
	m.endpointPending.Set(float64(pending))
}

// SetPending sets the pending service and endpoint changes (0, 0 after a
// sync picked them up).
func (m *Metrics) SetPending(services, endpoints int) {
	m.servicePending.Set(float64(services))
	m.endpointPending.Set(float64(endpoints))
}

// NetworkProgrammed observes, for a sync of family that succeeded at now,
// the latency from each EndpointSlice change (its last-change-trigger-time)
// to now. Like kube-proxy, it skips changes older than New, which a restart
// would otherwise report as huge latencies.
func (m *Metrics) NetworkProgrammed(family proxier.IPFamily, triggers []time.Time, now time.Time) {
	h := m.networkProgramming.WithLabelValues(family.String())
	for _, t := range triggers {
		if t.IsZero() || t.Before(m.start) {
			continue
		}
		h.Observe(now.Sub(t).Seconds())
	}
}

// ObserveSnapshots sets kubeproxy_sync_proxy_rules_no_local_endpoints_total
// from the snapshots just synced: the service ports whose external or
// internal traffic policy is Local but which have no local endpoint.
func (m *Metrics) ObserveSnapshots(snaps []*proxier.Snapshot) {
	for _, s := range snaps {
		internal, external, conflicts := 0, 0, 0
		for _, p := range s.Services {
			if p.NodePortConflict != "" {
				conflicts++
			}
			// As upstream: ports with usable endpoints somewhere whose
			// Local policy leaves a kind of traffic without any.
			if !p.HasAnyEndpoints {
				continue
			}
			if p.InternalPolicyLocal && p.Internal == proxier.NoEndpoints {
				internal++
			}
			if p.ExternalPolicyLocal && p.ExternallyAccessible() && p.External == proxier.NoEndpoints {
				external++
			}
		}
		m.noLocalEndpoints.WithLabelValues(s.Family.String(), "internal").Set(float64(internal))
		m.noLocalEndpoints.WithLabelValues(s.Family.String(), "external").Set(float64(external))
		m.nodePortConflicts.WithLabelValues(s.Family.String()).Set(float64(conflicts))
	}
}

// ConntrackReconciled records one conntrack reconcile of family (package
// conntrack's Recorder): kubeproxy_conntrack_reconciler_sync_duration_seconds
// and kubeproxy_conntrack_reconciler_deleted_entries_total.
func (m *Metrics) ConntrackReconciled(family proxier.IPFamily, took time.Duration, deleted int) {
	m.conntrackDuration.WithLabelValues(family.String()).Observe(took.Seconds())
	m.conntrackDeleted.WithLabelValues(family.String()).Add(float64(deleted))
}

// HealthzProbe counts one /healthz answer.
func (m *Metrics) HealthzProbe(code int) { m.healthzTotal.WithLabelValues(strconv.Itoa(code)).Inc() }

// LivezProbe counts one /livez answer.
func (m *Metrics) LivezProbe(code int) { m.livezTotal.WithLabelValues(strconv.Itoa(code)).Inc() }

func seconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// alpha marks a HELP string with the stability level kube-proxy's
// component-base metrics print for its ALPHA metrics.
func alpha(help string) string { return "[ALPHA] " + help }

// SetBuildInfo registers kubernetes_build_info (constant 1, BETA as in
// component-base) labelled with switchyard's version (gitVersion, e.g.
// "v0.1.0") and the Go toolchain and platform it runs on, so dashboards
// that read a node proxy's version from it keep working. Call it once.
func (m *Metrics) SetBuildInfo(gitVersion string) {
	major, minor := "", ""
	parts := strings.SplitN(strings.TrimPrefix(gitVersion, "v"), ".", 3)
	if len(parts) >= 2 {
		major, minor = parts[0], parts[1]
	}
	commit, treeState, buildDate := "", "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				treeState = map[string]string{"true": "dirty", "false": "clean"}[s.Value]
			case "vcs.time":
				buildDate = s.Value
			}
		}
	}
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kubernetes_build_info",
		Help: "[BETA] A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running."},
		[]string{"major", "minor", "git_version", "git_commit", "git_tree_state", "build_date", "go_version", "compiler", "platform"})
	m.reg.MustRegister(g)
	g.WithLabelValues(major, minor, gitVersion, commit, treeState, buildDate, runtime.Version(), runtime.Compiler,
		runtime.GOOS+"/"+runtime.GOARCH).Set(1)
}

// SetConfigz makes /configz answer {name: config} as JSON, as kube-proxy's
// configz does with "kubeproxy.config.k8s.io" and its configuration.
func (m *Metrics) SetConfigz(name string, config any) {
	m.configzMu.Lock()
	defer m.configzMu.Unlock()
	m.configz = map[string]any{name: config}
}

// EnableProfiling makes Handler serve Go's profiles under /debug/pprof/,
// as kube-proxy does on its metrics address with --profiling. Call it
// before Handler.
func (m *Metrics) EnableProfiling() { m.profiling = true }

// Handler returns the mux for --metrics-bind-address: /metrics (Prometheus
// text), /proxyMode (the mode name as plain text), /configz (see
// SetConfigz), /healthz ("ok", the process is up) and, with
// EnableProfiling, /debug/pprof/.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	if m.profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("/metrics", promhttp.HandlerFor(m.Gatherer(), promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = fmt.Fprint(w, m.mode)
	})
	mux.HandleFunc("/configz", func(w http.ResponseWriter, _ *http.Request) {
		m.configzMu.Lock()
		b, err := json.Marshal(m.configz)
		m.configzMu.Unlock()
		if err != nil || m.configz == nil {
			http.Error(w, "no configuration", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = fmt.Fprint(w, "ok")
	})
	return mux
}

// ListenAndServe serves Handler on addr until ctx ends.
func (m *Metrics) ListenAndServe(ctx context.Context, addr string) error {
	return httpserve.ListenAndServe(ctx, "metrics", addr, m.Handler())
}

// Serve serves Handler on ln until ctx ends, then shuts down gracefully.
// It closes ln.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener) error {
	return httpserve.Serve(ctx, "metrics", ln, m.Handler())
}
