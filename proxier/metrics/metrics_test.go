package metrics

import (
	"context"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/healthz"
	"github.com/switchyard-proxy/switchyard/proxier/runner"
)

var (
	_ runner.MetricsRecorder = (*Metrics)(nil)
	_ healthz.ProbeRecorder  = (*Metrics)(nil)
)

// serve starts m on a loopback port and returns its base URL.
func serve(t *testing.T, m *Metrics) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return "http://" + ln.Addr().String()
}

func fetch(t *testing.T, url string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// scrape fetches /metrics and parses the text exposition.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, _, body := fetch(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// find returns the metric of family name whose labels equal labels.
func find(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s not exposed", name)
	}
	for _, m := range fam.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		match := true
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				match = false
			}
		}
		if match {
			return m
		}
	}
	t.Fatalf("metric %s%v not exposed", name, labels)
	return nil
}

func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	m := find(t, fams, name, labels)
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	}
	t.Fatalf("%s is neither gauge nor counter", name)
	return 0
}

func histCount(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) (uint64, float64) {
	t.Helper()
	h := find(t, fams, name, labels).GetHistogram()
	if h == nil {
		t.Fatalf("%s is not a histogram", name)
	}
	return h.GetSampleCount(), h.GetSampleSum()
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

var (
	v4   = map[string]string{"ip_family": "IPv4"}
	v6   = map[string]string{"ip_family": "IPv6"}
	none = map[string]string{}
)

func TestSyncMetricsOverHTTP(t *testing.T) {
	m := New("iptables", proxier.IPv4, proxier.IPv6)
	base := serve(t, m)

	// Fresh: per-family series exist at zero.
	fams := scrape(t, base)
	if n, _ := histCount(t, fams, "kubeproxy_sync_proxy_rules_duration_seconds", v4); n != 0 {
		t.Fatalf("fresh histogram has %d samples", n)
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Fatal("Go runtime metrics missing")
	}

	queued := time.Unix(1700000000, 500_000_000)
	m.SyncQueued(queued)
	m.SyncSucceeded(true, 1500*time.Millisecond, proxier.SyncResult{Full: true, Wrote: true, Bytes: 4096, Rules: 77}, time.Unix(1700000001, 0))
	m.SyncSucceeded(false, 20*time.Millisecond, proxier.SyncResult{Wrote: true, Bytes: 100, Rules: 3}, time.Unix(1700000002, 0))
	m.SyncFailed(false, 10*time.Millisecond)
	m.SyncFailed(true, 10*time.Millisecond)
	m.SyncSucceeded(false, 5*time.Millisecond, proxier.SyncResult{Wrote: false, Bytes: 0}, time.Unix(1700000003, 0))

	fams = scrape(t, base)
	for _, fam := range []map[string]string{v4, v6} {
		if n, sum := histCount(t, fams, "kubeproxy_sync_proxy_rules_duration_seconds", fam); n != 5 || !near(sum, 1.545) {
			t.Errorf("%v all syncs: count=%d sum=%v, want 5, 1.545", fam, n, sum)
		}
		if n, sum := histCount(t, fams, "kubeproxy_sync_full_proxy_rules_duration_seconds", fam); n != 2 || !near(sum, 1.51) {
			t.Errorf("%v full syncs: count=%d sum=%v, want 2, 1.51", fam, n, sum)
		}
		if n, sum := histCount(t, fams, "kubeproxy_sync_partial_proxy_rules_duration_seconds", fam); n != 3 || !near(sum, 0.035) {
			t.Errorf("%v partial syncs: count=%d sum=%v, want 3, 0.035", fam, n, sum)
		}
		if v := value(t, fams, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", fam); v != 1700000003 {
			t.Errorf("%v last timestamp = %v", fam, v)
		}
		if v := value(t, fams, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", fam); v != 1700000000.5 {
			t.Errorf("%v last queued = %v", fam, v)
		}
		if v := value(t, fams, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total", fam); v != 2 {
			t.Errorf("%v restore failures = %v, want 2", fam, v)
		}
	}
	if v := value(t, fams, "switchyard_sync_proxy_rules_failures_total", map[string]string{"sync_type": "partial"}); v != 1 {
		t.Errorf("partial failures = %v, want 1", v)
	}
	if v := value(t, fams, "switchyard_syncs_total", map[string]string{"sync_type": "partial", "result": "success"}); v != 2 {
		t.Errorf("partial successes = %v, want 2", v)
	}
	// The last sync wrote nothing.
	if v := value(t, fams, "switchyard_sync_proxy_rules_last_written_bytes", none); v != 0 {
		t.Errorf("last written bytes = %v, want 0", v)
	}

	m.SyncSucceeded(true, time.Millisecond, proxier.SyncResult{Full: true, Wrote: true, Bytes: 4096, Rules: 77}, time.Unix(1700000004, 0))
	fams = scrape(t, base)
	if v := value(t, fams, "switchyard_sync_proxy_rules_last_written_bytes", none); v != 4096 {
		t.Errorf("last written bytes = %v, want 4096", v)
	}
	if v := value(t, fams, "switchyard_sync_proxy_rules_last_written_rules", none); v != 77 {
		t.Errorf("last written rules = %v, want 77", v)
	}

	// Drift repairs are counted by kind.
	m.SyncSucceeded(false, time.Millisecond, proxier.SyncResult{Wrote: true, Repaired: map[string]int{"chain": 2, "jump": 1}}, time.Unix(1700000005, 0))
	m.SyncSucceeded(false, time.Millisecond, proxier.SyncResult{Wrote: true, Repaired: map[string]int{"chain": 1}}, time.Unix(1700000006, 0))
	fams = scrape(t, base)
	if v := value(t, fams, "switchyard_sync_drift_repairs_total", map[string]string{"kind": "chain"}); v != 3 {
		t.Errorf("chain drift repairs = %v, want 3", v)
	}
	if v := value(t, fams, "switchyard_sync_drift_repairs_total", map[string]string{"kind": "jump"}); v != 1 {
		t.Errorf("jump drift repairs = %v, want 1", v)
	}

	// Bucket layout is upstream's: 15 exponential buckets from 1ms (the
	// text format adds +Inf).
	h := find(t, fams, "kubeproxy_sync_proxy_rules_duration_seconds", v4).GetHistogram()
	if b := h.GetBucket(); len(b) != 16 || b[0].GetUpperBound() != 0.001 || b[14].GetUpperBound() != 16.384 || !math.IsInf(b[15].GetUpperBound(), 1) {
		t.Errorf("sync buckets = %v", b)
	}
}

func TestChangeCountersAndProbes(t *testing.T) {
	m := New("ipvs", proxier.IPv4)
	base := serve(t, m)
	m.ServiceChanged(1)
	m.ServiceChanged(2)
	m.EndpointsChanged(1)
	m.EndpointsChanged(2)
	m.EndpointsChanged(3)
	fams := scrape(t, base)
	for name, want := range map[string]float64{
		"kubeproxy_sync_proxy_rules_service_changes_total":    2,
		"kubeproxy_sync_proxy_rules_service_changes_pending":  2,
		"kubeproxy_sync_proxy_rules_endpoint_changes_total":   3,
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending": 3,
	} {
		if v := value(t, fams, name, none); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	m.SetPending(0, 0)

	// Probes are counted by code through the health server itself.
	hs := healthz.New(time.Minute, healthz.WithProbeRecorder(m))
	for _, path := range []string{"/healthz", "/healthz", "/livez"} {
		rec := &discard{header: http.Header{}}
		req, _ := http.NewRequest(http.MethodGet, path, nil)
		hs.Handler().ServeHTTP(rec, req)
	}
	fams = scrape(t, base)
	if v := value(t, fams, "kubeproxy_sync_proxy_rules_endpoint_changes_pending", none); v != 0 {
		t.Errorf("pending endpoints after SetPending = %v", v)
	}
	if v := value(t, fams, "kubeproxy_proxy_healthz_total", map[string]string{"code": "200"}); v != 2 {
		t.Errorf("healthz 200 = %v, want 2", v)
	}
	if v := value(t, fams, "kubeproxy_proxy_livez_total", map[string]string{"code": "200"}); v != 1 {
		t.Errorf("livez 200 = %v, want 1", v)
	}
	if _, ok := fams["kubeproxy_sync_proxy_rules_iptables_restore_failures_total"]; !ok {
		t.Error("ipvs mode lacks the iptables restore failure counter (kube-proxy has it)")
	}
}

type discard struct {
	header http.Header
}

func (d *discard) Header() http.Header         { return d.header }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

func TestNetworkProgrammingLatency(t *testing.T) {
	m := New("nftables", proxier.IPv4, proxier.IPv6)
	base := serve(t, m)
	now := time.Now().Add(time.Hour)
	m.NetworkProgrammed(proxier.IPv6, []time.Time{
		now.Add(-2 * time.Second),
		now.Add(-30 * time.Second),
		{},                             // no annotation: skipped
		m.start.Add(-time.Millisecond), // before start: skipped
	}, now)
	fams := scrape(t, base)
	n, sum := histCount(t, fams, "kubeproxy_network_programming_duration_seconds", v6)
	if n != 2 || !near(sum, 32) {
		t.Fatalf("IPv6 latency count=%d sum=%v, want 2, 32", n, sum)
	}
	if n, _ := histCount(t, fams, "kubeproxy_network_programming_duration_seconds", v4); n != 0 {
		t.Fatalf("IPv4 latency count=%d, want 0", n)
	}
	h := find(t, fams, "kubeproxy_network_programming_duration_seconds", v6).GetHistogram()
	b := h.GetBucket()
	if len(b) != len(NetworkProgrammingBuckets)+1 || len(b) != 82 || b[0].GetUpperBound() != 0 || b[1].GetUpperBound() != 0.25 ||
		b[len(b)-2].GetUpperBound() != 300 {
		t.Fatalf("network programming buckets: %d, first %v, last finite %v", len(b), b[0].GetUpperBound(), b[len(b)-2].GetUpperBound())
	}
	// 2s falls in the le=2 bucket, 30s first in le=30.
	for _, bk := range b {
		want := uint64(0)
		if bk.GetUpperBound() >= 2 {
			want = 1
		}
		if bk.GetUpperBound() >= 30 {
			want = 2
		}
		if bk.GetCumulativeCount() != want {
			t.Fatalf("bucket le=%v has %d, want %d", bk.GetUpperBound(), bk.GetCumulativeCount(), want)
		}
	}
	if _, ok := fams["kubeproxy_sync_proxy_rules_nftables_sync_failures_total"]; !ok {
		t.Error("nftables mode lacks its failure counter")
	}
	if _, ok := fams["kubeproxy_sync_proxy_rules_iptables_restore_failures_total"]; ok {
		t.Error("nftables mode exposes the iptables restore failure counter")
	}
}

func TestNoLocalEndpoints(t *testing.T) {
	m := New("iptables", proxier.IPv4)
	base := serve(t, m)
	local := []proxier.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:80"), Ready: true, Local: true}}
	// The planner's decisions, as ResolveEndpoints writes them: endpoints
	// exist elsewhere (HasAnyEndpoints) but none serves the Local policy.
	m.ObserveSnapshots([]*proxier.Snapshot{{Family: proxier.IPv4, Services: []*proxier.ServicePort{
		{NodePort: 30001, ExternalPolicyLocal: true, HasAnyEndpoints: true, Internal: proxier.ClusterPolicy},
		{NodePort: 30002, ExternalPolicyLocal: true, InternalPolicyLocal: true, HasAnyEndpoints: true},
		{NodePort: 30003, ExternalPolicyLocal: true, LocalEndpoints: local, HasAnyEndpoints: true, External: proxier.LocalPolicy, Internal: proxier.ClusterPolicy},
		{InternalPolicyLocal: true, LocalEndpoints: local, HasAnyEndpoints: true, Internal: proxier.LocalPolicy},
		{InternalPolicyLocal: true},         // no endpoint anywhere: rejected, not counted
		{NodePortConflict: "default/older"}, // counted in the conflict gauge
		{},
	}}})
	fams := scrape(t, base)
	if v := value(t, fams, "kubeproxy_sync_proxy_rules_no_local_endpoints_total", map[string]string{"ip_family": "IPv4", "traffic_policy": "external"}); v != 2 {
		t.Errorf("external = %v, want 2", v)
	}
	if v := value(t, fams, "kubeproxy_sync_proxy_rules_no_local_endpoints_total", map[string]string{"ip_family": "IPv4", "traffic_policy": "internal"}); v != 1 {
		t.Errorf("internal = %v, want 1", v)
	}
	if v := value(t, fams, "switchyard_service_node_port_conflicts", map[string]string{"ip_family": "IPv4"}); v != 1 {
		t.Errorf("node-port conflicts = %v, want 1", v)
	}
}

func TestNoFamiliesMeansIPv4(t *testing.T) {
	m := New("iptables")
	base := serve(t, m)
	m.SyncSucceeded(false, time.Millisecond, proxier.SyncResult{}, time.Unix(1700000000, 0))
	fams := scrape(t, base)
	if n, _ := histCount(t, fams, "kubeproxy_sync_proxy_rules_duration_seconds", v4); n != 1 {
		t.Fatalf("IPv4 sync observations = %d, want 1", n)
	}
}

func TestProxyModeAndHealthz(t *testing.T) {
	base := serve(t, New("ipvs", proxier.IPv4))
	code, ct, body := fetch(t, base+"/proxyMode")
	if code != 200 || body != "ipvs" || !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("/proxyMode = %d %q %q", code, ct, body)
	}
	if code, _, body := fetch(t, base+"/healthz"); code != 200 || body != "ok" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if code, _, _ := fetch(t, base+"/nope"); code != 404 {
		t.Fatalf("/nope = %d, want 404", code)
	}
}

// TestRunnerRecordsIntoMetrics wires a real runner, health server and
// metrics together and checks a failed then a successful sync show up.
func TestRunnerRecordsIntoMetrics(t *testing.T) {
	m := New("iptables", proxier.IPv4)
	base := serve(t, m)
	hs := healthz.New(time.Minute, healthz.WithProbeRecorder(m))
	calls := 0
	r := runner.New(runner.Config{}, func(context.Context, bool) (proxier.SyncResult, error) {
		calls++
		if calls == 1 {
			return proxier.SyncResult{}, io.ErrUnexpectedEOF
		}
		return proxier.SyncResult{Full: true, Wrote: true, Bytes: 123, Rules: 4}, nil
	}, runner.WithMetrics(m), runner.WithHealth(hs), runner.WithLogger(slog.New(slog.DiscardHandler)))
	r.Ready()
	if err := r.SyncOnce(context.Background()); err == nil {
		t.Fatal("first SyncOnce succeeded")
	}
	if err := r.SyncOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, base)
	if n, _ := histCount(t, fams, "kubeproxy_sync_full_proxy_rules_duration_seconds", v4); n != 2 {
		t.Errorf("full sync observations = %d, want 2", n)
	}
	if v := value(t, fams, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total", v4); v != 1 {
		t.Errorf("restore failures = %v, want 1", v)
	}
	if v := value(t, fams, "switchyard_sync_proxy_rules_last_written_bytes", none); v != 123 {
		t.Errorf("last written bytes = %v, want 123", v)
	}
	if v := value(t, fams, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", v4); v == 0 {
		t.Error("last sync timestamp not set")
	}
	if v := value(t, fams, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", v4); v == 0 {
		t.Error("last queued timestamp not set (Ready queues the first sync)")
	}
	if !hs.Healthy() {
		t.Error("health server unhealthy after a successful sync")
	}
}

func TestBuildInfoConfigzAndStability(t *testing.T) {
	m := New("iptables", proxier.IPv4)
	base := serve(t, m)
	if code, _, _ := fetch(t, base+"/configz"); code != http.StatusNotFound {
		t.Errorf("/configz before SetConfigz: %d", code)
	}
	m.SetBuildInfo("v0.1.0-dev")
	m.SetConfigz("kubeproxy.config.k8s.io", map[string]string{"mode": "iptables"})
	code, ctype, body := fetch(t, base+"/configz")
	if code != 200 || ctype != "application/json" || body != `{"kubeproxy.config.k8s.io":{"mode":"iptables"}}` {
		t.Errorf("/configz: %d %q %s", code, ctype, body)
	}
	fams := scrape(t, base)
	bi := fams["kubernetes_build_info"]
	if bi == nil || len(bi.Metric) != 1 || bi.Metric[0].GetGauge().GetValue() != 1 {
		t.Fatalf("kubernetes_build_info: %v", bi)
	}
	labels := map[string]string{}
	for _, l := range bi.Metric[0].Label {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["major"] != "0" || labels["minor"] != "1" || labels["git_version"] != "v0.1.0-dev" || labels["go_version"] == "" || labels["platform"] == "" {
		t.Errorf("build info labels %v", labels)
	}
	if !strings.HasPrefix(bi.GetHelp(), "[BETA] ") {
		t.Errorf("build info HELP %q", bi.GetHelp())
	}
	for name, f := range fams {
		if strings.HasPrefix(name, "kubeproxy_") && !strings.HasPrefix(f.GetHelp(), "[ALPHA] ") {
			t.Errorf("%s HELP %q lacks kube-proxy's [ALPHA] marker", name, f.GetHelp())
		}
	}
	for _, want := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if fams[want] == nil {
			t.Errorf("no %s", want)
		}
	}
}

func TestConntrackReconciled(t *testing.T) {
	m := New("iptables", proxier.IPv4, proxier.IPv6)
	base := serve(t, m)
	m.ConntrackReconciled(proxier.IPv4, 3*time.Millisecond, 2)
	m.ConntrackReconciled(proxier.IPv4, time.Millisecond, 1)
	fams := scrape(t, base)
	if n, sum := histCount(t, fams, "kubeproxy_conntrack_reconciler_sync_duration_seconds", v4); n != 2 || !near(sum, 0.004) {
		t.Errorf("IPv4 reconcile duration: %d observations, sum %v; want 2, 0.004", n, sum)
	}
	if v := value(t, fams, "kubeproxy_conntrack_reconciler_deleted_entries_total", v4); v != 3 {
		t.Errorf("IPv4 deleted entries = %v, want 3", v)
	}
	if v := value(t, fams, "kubeproxy_conntrack_reconciler_deleted_entries_total", map[string]string{"ip_family": "IPv6"}); v != 0 {
		t.Errorf("IPv6 deleted entries = %v, want 0 (present from the start)", v)
	}
}

// The iptables mode's per-table rule gauges and partial restore failure
// counter, with upstream's names and labels; other modes lack them.
func TestIPTablesRuleMetrics(t *testing.T) {
	m := New("iptables", proxier.IPv4)
	base := serve(t, m)
	m.SyncSucceeded(true, time.Millisecond, proxier.SyncResult{Wrote: true, IPTables: []proxier.TableRules{
		{Family: proxier.IPv4, Table: "nat", Total: 40, Written: 12},
		{Family: proxier.IPv4, Table: "filter", Total: 7, Written: 0},
	}}, time.Now())
	m.SyncFailed(false, time.Millisecond)
	m.SyncFailed(true, time.Millisecond)
	fams := scrape(t, base)
	for name, want := range map[string]float64{"kubeproxy_sync_proxy_rules_iptables_total": 40, "kubeproxy_sync_proxy_rules_iptables_last": 12} {
		if v := value(t, fams, name, map[string]string{"table": "nat", "ip_family": "IPv4"}); v != want {
			t.Errorf("%s{nat} = %v, want %v", name, v, want)
		}
	}
	if v := value(t, fams, "kubeproxy_sync_proxy_rules_iptables_total", map[string]string{"table": "filter", "ip_family": "IPv4"}); v != 7 {
		t.Errorf("filter total = %v, want 7", v)
	}
	if v := value(t, fams, "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total", map[string]string{"ip_family": "IPv4"}); v != 1 {
		t.Errorf("partial restore failures = %v, want 1 (the full failure does not count)", v)
	}
	ipvsFams := scrape(t, serve(t, New("ipvs", proxier.IPv4)))
	for _, name := range []string{"kubeproxy_sync_proxy_rules_iptables_total", "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total"} {
		if _, ok := ipvsFams[name]; ok {
			t.Errorf("ipvs mode exposes %s", name)
		}
	}
}

func TestProfilingOnlyWhenEnabled(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		m := New("iptables", proxier.IPv4)
		if enabled {
			m.EnableProfiling()
		}
		srv := httptest.NewServer(m.Handler())
		resp, err := http.Get(srv.URL + "/debug/pprof/goroutine?debug=1")
		if err != nil {
			srv.Close()
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		got := resp.StatusCode == http.StatusOK && strings.Contains(string(body), "goroutine profile")
		if got != enabled {
			t.Errorf("profiling enabled=%v: /debug/pprof/goroutine answered %d", enabled, resp.StatusCode)
		}
	}
}
