package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/switchyard-proxy/switchyard/test/lab"
)

// The side-by-side benchmark (make bench) runs upstream kube-proxy and
// switchyard, one after the other, with the same command line, in the same
// lab, against the same real API server holding the same objects, and
// measures what their users measure. It only runs when SWY_BENCH_N is set:
//
//	SWY_BENCH_N=1000,10000    services per run (10 endpoints each: SWY_BENCH_EPS)
//	SWY_BENCH_MODE=iptables   proxy mode (iptables or nftables), both proxies
//	SWY_BENCH_PROXIES=kube-proxy,switchyard
//	SWY_BENCH_CHANGES=20      one-endpoint changes timed per run
//	SWY_BENCH_OUT=dir         where the markdown table and SVG plot go
//	SWY_BENCH_PHASE_TIMEOUT=20m  bound of each wait (a proxy that does not
//	                          converge in time is reported as "> bound")
//
// Per proxy and N, on a fresh lab and API server:
//   - converge: the proxy runs on an empty cluster; N Services and their
//     EndpointSlices are created as fast as the API server takes them; the
//     time from the last object created to the end of the first sync that
//     has seen every change (the proxy's own metrics: changes totals,
//     pending gauges and last sync timestamp);
//   - change p50/p90/p99: one endpoint of one slice changes, stamped with
//     a last-change-trigger-time, and the proxy's
//     network_programming_duration_seconds grows by exactly that change's
//     latency (changes are spaced, so each is its own sync);
//   - bytes: the proxy's ruleset as its tool saves it; kernel: a plain
//     restore of that text into a fresh namespace (what the kernel alone
//     costs to load it);
//   - cold start and full sync: the proxy is killed, its rules removed with
//     its own --cleanup, and started again with all objects in place: the
//     time from exec to its first sync's end, and that sync's duration;
//   - RSS and peak RSS after that, CPU seconds of the second process.
func TestBenchSideBySide(t *testing.T) {
	spec := os.Getenv("SWY_BENCH_N")
	if spec == "" {
		t.Skip("the side-by-side benchmark runs with SWY_BENCH_N set (make bench)")
	}
	lab.RequireRoot(t)
	cfg := benchConfig{
		mode:    envOr("SWY_BENCH_MODE", "iptables"),
		eps:     envInt(t, "SWY_BENCH_EPS", 10),
		changes: envInt(t, "SWY_BENCH_CHANGES", 20),
		out:     os.Getenv("SWY_BENCH_OUT"),
		bound:   20 * time.Minute,
	}
	if s := os.Getenv("SWY_BENCH_PHASE_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("SWY_BENCH_PHASE_TIMEOUT: %v", err)
		}
		cfg.bound = d
	}
	if cfg.mode != "iptables" && cfg.mode != "nftables" {
		t.Fatalf("SWY_BENCH_MODE %q: want iptables or nftables", cfg.mode)
	}
	var counts []int
	for _, s := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			t.Fatalf("SWY_BENCH_N: bad count %q", s)
		}
		counts = append(counts, n)
	}
	proxies := strings.Split(envOr("SWY_BENCH_PROXIES", "kube-proxy,switchyard"), ",")
	bins := map[string]string{}
	for _, p := range proxies {
		switch p {
		case "kube-proxy":
			bins[p] = kubeProxyBinary(t)
		case "switchyard":
			bins[p] = switchyardBinary(t)
		default:
			t.Fatalf("SWY_BENCH_PROXIES: unknown proxy %q", p)
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	progress("side-by-side benchmark, %s mode, N=%v, %d endpoints each; load average %s", cfg.mode, counts, cfg.eps, strings.TrimSpace(string(load)))
	var results []benchResult
	for _, n := range counts {
		for _, p := range proxies {
			t.Run(fmt.Sprintf("%s/N=%d", p, n), func(t *testing.T) {
				r := runBench(t, cfg, p, bins[p], n)
				results = append(results, r)
				progress("%s N=%d done: %s", p, n, r.summary())
			})
		}
	}
	table := benchTable(cfg, counts, proxies, results)
	fmt.Println(table)
	if cfg.out != "" {
		if err := os.MkdirAll(cfg.out, 0o755); err != nil {
			t.Fatal(err)
		}
		stamp := time.Now().UTC().Format("2006-01-02T1504Z")
		base := filepath.Join(cfg.out, fmt.Sprintf("%s-%s", cfg.mode, stamp))
		if err := os.WriteFile(base+".md", []byte(table), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(base+".svg", []byte(benchPlot(cfg, counts, proxies, results)), 0o644); err != nil {
			t.Fatal(err)
		}
		progress("wrote %s.md and %s.svg", base, base)
	}
}

type benchConfig struct {
	mode    string
	eps     int
	changes int
	out     string
	bound   time.Duration
}

// benchResult is one proxy's numbers at one N; a negative duration means
// the phase did not finish within the bound.
type benchResult struct {
	proxy        string
	n            int
	converge     time.Duration
	changes      []time.Duration
	changeSyncs  []time.Duration
	bytes        int
	kernel       time.Duration
	cold, full   time.Duration
	rss, peakRSS int64
	cpu          time.Duration
	failed       string
	// skipped: the proxy did not converge within the bound; only
	// converge (as "> bound") was measured.
	skipped bool
}

func (r benchResult) summary() string {
	if r.failed != "" {
		return "failed: " + r.failed
	}
	if r.skipped {
		return "converge " + fmtDur(r.converge) + "; nothing else measured"
	}
	return fmt.Sprintf("converge %s, change p50 %s, full sync %s, cold start %s, RSS %d MiB, ruleset %.1f MB",
		fmtDur(r.converge), fmtDur(quantile(r.changes, 0.5)), fmtDur(r.full), fmtDur(r.cold), r.rss>>20, float64(r.bytes)/1e6)
}

func progress(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envInt(t *testing.T, k string, def int) int {
	v := os.Getenv(k)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s: bad number %q", k, v)
	}
	return n
}

// Addresses of the fake endpoints: never dialled, only programmed.
func benchEndpointIP(svc, ep, gen int) string {
	x := svc*16 + ep
	return fmt.Sprintf("10.%d.%d.%d", 100+gen%100, (x>>8)&0xff, x&0xff)
}

const (
	benchNamespace = "bench"
	benchMetrics   = "127.0.0.1:10349"
	benchHealthz   = "127.0.0.1:10356"
)

// proxyArgs is the one command line both proxies get: kube-proxy's own
// flags (switchyard is a drop-in).
func proxyArgs(bin, mode, kubeconfig string) []string {
	return []string{bin, "--proxy-mode=" + mode, "--hostname-override=" + nodeName,
		"--kubeconfig=" + kubeconfig, "--cluster-cidr=" + clusterCIDR,
		"--metrics-bind-address=" + benchMetrics, "--healthz-bind-address=" + benchHealthz,
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--oom-score-adj=0", "--v=1", "--profiling"}
}

func runBench(t *testing.T, cfg benchConfig, proxy, bin string, n int) (r benchResult) {
	r = benchResult{proxy: proxy, n: n}
	e := newEnv(t)
	ctx := t.Context()
	if err := ensureNode(ctx, e.client, nodeName, e.lab.NodeIP.String()); err != nil {
		t.Fatal(err)
	}
	fast := rest.CopyConfig(e.cluster.Config)
	fast.QPS, fast.Burst = -1, 0
	client, err := kubernetes.NewForConfig(fast)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := func() *lab.Process {
		return e.lab.Start(e.lab.Node, proxyArgs(bin, cfg.mode, e.cluster.Kubeconfig)...)
	}
	m := &metricsReader{e: e}

	// converge: running on an empty cluster, then a bulk create.
	proc := start()
	if err := waitSynced(proc, m, cfg.bound, 0); err != nil {
		r.failed = "first sync on an empty cluster: " + err.Error()
		t.Error(r.failed)
		return r
	}
	base, _ := m.read()
	progress("%s N=%d: creating %d services and slices", proxy, n, n)
	createStart := time.Now()
	lastCreated, err := bulkCreate(ctx, client, n, cfg.eps)
	if err != nil {
		t.Fatal(err)
	}
	progress("%s N=%d: created in %s; waiting for the proxy to converge", proxy, n, time.Since(createStart).Round(time.Millisecond))
	synced, err := waitConverged(proc, m, cfg.bound, base, n, lastCreated)
	switch {
	case errors.Is(err, errBound):
		// Slower than the bound is the result; the later phases would
		// wait on the same proxy.
		r.converge = -cfg.bound
		r.skipped = true
		progress("%s N=%d: not converged within %s; its other measures are skipped", proxy, n, cfg.bound)
		return r
	case err != nil:
		r.failed = "converge: " + err.Error()
		t.Error(r.failed)
		return r
	default:
		r.converge = max(synced.Sub(lastCreated), 0)
	}
	if err := checkProgrammed(e, cfg.mode, n); err != nil {
		s, _ := m.read()
		r.failed = fmt.Sprintf("%v (after convergence by the metrics: %+v)", err, s)
		t.Error(r.failed)
		return r
	}

	// One-endpoint changes, each its own sync.
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	for i := 0; i < cfg.changes; i++ {
		time.Sleep(1500 * time.Millisecond) // past both proxies' min-sync-period (1s)
		before, err := m.read()
		if err != nil {
			t.Fatal(err)
		}
		if err := changeOneEndpoint(ctx, client, rng.IntN(n), cfg.eps, i+1); err != nil {
			t.Fatal(err)
		}
		after, err := waitMetric(proc, m, cfg.bound, func(s metricSample) bool { return s.progCount > before.progCount })
		if err != nil {
			r.failed = fmt.Sprintf("change %d: %v", i, err)
			t.Error(r.failed)
			return r
		}
		lat := secs(after.progSum - before.progSum)
		if after.progCount-before.progCount > 1 {
			lat /= time.Duration(after.progCount - before.progCount)
		}
		r.changes = append(r.changes, lat)
		if after.syncCount > before.syncCount {
			r.changeSyncs = append(r.changeSyncs, secs((after.syncSum-before.syncSum)/(after.syncCount-before.syncCount)))
		}
	}

	// Ruleset bytes and the kernel alone.
	text, err := saveRules(e, cfg.mode)
	if err != nil {
		t.Fatal(err)
	}
	r.bytes = len(text)
	if r.kernel, err = kernelAlone(t, cfg.mode, text); err != nil {
		t.Fatal(err)
	}

	// Cold start: killed, cleaned up with its own --cleanup, started again.
	proc.Stop()
	if out, err := exec.Command("ip", "netns", "exec", e.lab.Node, bin, "--cleanup", "--proxy-mode="+cfg.mode, "--v=0").CombinedOutput(); err != nil {
		t.Logf("%s --cleanup: %v\n%s", proxy, err, tail(string(out), 10))
	}
	if err := checkProgrammed(e, cfg.mode, n); err == nil {
		t.Fatalf("%s --cleanup left its rules: the cold start would not be one", proxy)
	}
	execAt := time.Now()
	proc = start()
	t.Cleanup(proc.Stop)
	var profiled chan struct{}
	if dir := os.Getenv("SWY_BENCH_PROFILE"); dir != "" {
		profiled = make(chan struct{})
		go func() {
			defer close(profiled)
			cpuProfile(e, filepath.Join(dir, fmt.Sprintf("%s-%d-coldstart.pprof", proxy, n)))
		}()
	}
	if err := waitSynced(proc, m, cfg.bound, n); err != nil {
		if errors.Is(err, errBound) {
			r.cold, r.full = -cfg.bound, -cfg.bound
		} else {
			r.failed = "cold start: " + err.Error()
			t.Error(r.failed)
			return r
		}
	} else {
		s, _ := m.read()
		r.cold = max(time.Unix(0, int64(s.lastSync*1e9)).Sub(execAt), 0)
		r.full = secs(s.fullSum / max(s.fullCount, 1))
	}
	time.Sleep(2 * time.Second)
	r.rss, r.peakRSS, r.cpu = procStats(proc.PID())
	if profiled != nil {
		<-profiled
		heap := filepath.Join(os.Getenv("SWY_BENCH_PROFILE"), fmt.Sprintf("%s-%d-heap.pprof", proxy, n))
		if code, body, err := e.getTimeout(benchMetrics, "/debug/pprof/heap", 20*time.Second); err == nil && code == 200 {
			if err := os.WriteFile(heap, []byte(body), 0o644); err == nil {
				progress("heap profile after the cold start: %s", heap)
			}
		}
	}
	return r
}

// cpuProfile saves a CPU profile of the proxy's first seconds
// (SWY_BENCH_PROFILE=dir, which also gets a heap profile after the cold
// start; both proxies run with --profiling).
func cpuProfile(e *env, path string) {
	for i := 0; i < 50; i++ {
		code, body, err := e.getTimeout(benchMetrics, "/debug/pprof/profile?seconds=10", 20*time.Second)
		if err == nil && code == 200 {
			if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
				progress("profile: %v", err)
			}
			progress("CPU profile of the cold start: %s", path)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	progress("no CPU profile: the metrics address did not answer")
}

var errBound = errors.New("not reached within the bound")

// metricSample is what the benchmark reads off a proxy's /metrics.
type metricSample struct {
	svcChanges, epChanges float64
	svcPending, epPending float64
	lastSync, lastQueued  float64
	syncSum, syncCount    float64
	fullSum, fullCount    float64
	progSum, progCount    float64
}

// settled tells whether the proxy has written every change it has seen:
// none pending, and its last sync ended after the last one was queued
// (pending drops to 0 when a sync starts, not when it ends).
func (s metricSample) settled() bool {
	return s.svcPending == 0 && s.epPending == 0 && s.syncCount >= 1 && s.lastSync > 0 && s.lastSync >= s.lastQueued
}

type metricsReader struct{ e *env }

func (m *metricsReader) read() (metricSample, error) {
	code, body, err := m.e.get(benchMetrics, "/metrics")
	if err != nil {
		return metricSample{}, err
	}
	if code != 200 {
		return metricSample{}, fmt.Errorf("/metrics: HTTP %d", code)
	}
	v := func(name string) float64 { return ipv4Sample(body, "kubeproxy_"+name) }
	s := metricSample{
		svcChanges: v("sync_proxy_rules_service_changes_total"),
		epChanges:  v("sync_proxy_rules_endpoint_changes_total"),
		svcPending: v("sync_proxy_rules_service_changes_pending"),
		epPending:  v("sync_proxy_rules_endpoint_changes_pending"),
		lastSync:   v("sync_proxy_rules_last_timestamp_seconds"),
		lastQueued: v("sync_proxy_rules_last_queued_timestamp_seconds"),
		syncSum:    v("sync_proxy_rules_duration_seconds_sum"),
		syncCount:  v("sync_proxy_rules_duration_seconds_count"),
		progSum:    v("network_programming_duration_seconds_sum"),
		progCount:  v("network_programming_duration_seconds_count"),
		fullSum:    v("sync_full_proxy_rules_duration_seconds_sum"),
		fullCount:  v("sync_full_proxy_rules_duration_seconds_count"),
	}
	return s, nil
}

// ipv4Sample sums the samples of the metric named name that are either
// unlabelled by family or labelled ip_family="IPv4": both proxies run one
// proxier per family here, and the benchmark's objects are IPv4.
func ipv4Sample(text, name string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		if rest[0] == '{' {
			i := strings.IndexByte(rest, '}')
			if i < 0 {
				continue
			}
			labels := rest[:i]
			if strings.Contains(labels, "ip_family=") && !strings.Contains(labels, `ip_family="IPv4"`) {
				continue
			}
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if x, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += x
		}
	}
	return sum
}

// waitMetric polls the proxy's metrics until ok holds.
func waitMetric(proc *lab.Process, m *metricsReader, bound time.Duration, ok func(metricSample) bool) (metricSample, error) {
	deadline := time.Now().Add(bound)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-proc.Done():
			return metricSample{}, fmt.Errorf("proxy exited:\n%s", tail(proc.Output(), 20))
		default:
		}
		s, err := m.read()
		if err == nil && ok(s) {
			return s, nil
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	if lastErr != nil {
		return metricSample{}, fmt.Errorf("%w (last error: %v)", errBound, lastErr)
	}
	return metricSample{}, errBound
}

// waitSynced waits for the first sync after a start; minChanges is how many
// service changes it must have seen (all of them on a cold start).
func waitSynced(proc *lab.Process, m *metricsReader, bound time.Duration, minChanges int) error {
	_, err := waitMetric(proc, m, bound, func(s metricSample) bool {
		return s.svcChanges >= float64(minChanges) && s.settled()
	})
	return err
}

// waitConverged waits for a sync that ended after every one of the n new
// services and slices had been seen by the proxy, and returns its end.
func waitConverged(proc *lab.Process, m *metricsReader, bound time.Duration, base metricSample, n int, lastCreated time.Time) (time.Time, error) {
	s, err := waitMetric(proc, m, bound, func(s metricSample) bool {
		if s.svcChanges < base.svcChanges+float64(n) || s.epChanges < base.epChanges+float64(n) {
			return false
		}
		return s.settled()
	})
	if err != nil {
		return time.Time{}, err
	}
	end := time.Unix(0, int64(s.lastSync*1e9))
	if end.Before(lastCreated) {
		end = lastCreated
	}
	return end, nil
}

func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// bulkCreate creates n Services and one EndpointSlice each with eps ready
// endpoints on another node, 16 requests at a time, and returns when the
// last one was acknowledged.
func bulkCreate(ctx context.Context, c kubernetes.Interface, n, eps int) (time.Time, error) {
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := createBenchService(ctx, c, i, eps); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Now(), firstErr
}

func benchSvcName(i int) string { return fmt.Sprintf("svc-%05d", i) }

func createBenchService(ctx context.Context, c kubernetes.Interface, i, eps int) error {
	name := benchSvcName(i)
	_, err := c.CoreV1().Services(benchNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchNamespace},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{
				Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080),
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service %s: %w", name, err)
	}
	_, err = c.DiscoveryV1().EndpointSlices(benchNamespace).Create(ctx, benchSlice(i, eps, 0), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create slice of %s: %w", name, err)
	}
	return nil
}

// benchSlice is service i's EndpointSlice; gen changes endpoint 0's address.
func benchSlice(i, eps, gen int) *discoveryv1.EndpointSlice {
	tcp := corev1.ProtocolTCP
	portName, port := "http", int32(8080)
	yes := true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: benchSvcName(i) + "-bench", Namespace: benchNamespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: benchSvcName(i),
				discoveryv1.LabelManagedBy:   "switchyard-bench",
			},
			Annotations: map[string]string{
				"endpoints.kubernetes.io/last-change-trigger-time": time.Now().UTC().Format(time.RFC3339Nano),
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &tcp, Port: &port}},
	}
	for j := 0; j < eps; j++ {
		g := 0
		if j == 0 {
			g = gen
		}
		node := otherNode
		// What the EndpointSlice controller writes: a reference to the pod.
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{benchEndpointIP(i, j, g)},
			Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes},
			NodeName:   &node,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: benchNamespace,
				Name: fmt.Sprintf("%s-%d-%d", benchSvcName(i), j, g), UID: types.UID(fmt.Sprintf("00000000-0000-4000-8000-%012d", i*100+j))},
		})
	}
	return slice
}

// changeOneEndpoint moves endpoint 0 of service i to a new address, stamped
// with a trigger time of now (as the EndpointSlice controller does).
func changeOneEndpoint(ctx context.Context, c kubernetes.Interface, i, eps, gen int) error {
	slices := c.DiscoveryV1().EndpointSlices(benchNamespace)
	old, err := slices.Get(ctx, benchSvcName(i)+"-bench", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get slice of %s: %w", benchSvcName(i), err)
	}
	s := benchSlice(i, eps, gen)
	s.ResourceVersion = old.ResourceVersion
	if _, err := slices.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update slice of %s: %w", benchSvcName(i), err)
	}
	return nil
}

// saveRules dumps the proxy's ruleset as its users would look at it.
func saveRules(e *env, mode string) (string, error) {
	if mode == "nftables" {
		return e.lab.Exec(e.lab.Node, "nft", "list", "ruleset")
	}
	return e.lab.Exec(e.lab.Node, "iptables-nft-save")
}

// checkProgrammed tells whether the last bench service's cluster IP is in
// the node's rules (one dump).
func checkProgrammed(e *env, mode string, n int) error {
	svc, err := e.client.CoreV1().Services(benchNamespace).Get(context.Background(), benchSvcName(n-1), metav1.GetOptions{})
	if err != nil {
		return err
	}
	text, err := saveRules(e, mode)
	if err != nil {
		return err
	}
	ip := netip.MustParseAddr(svc.Spec.ClusterIP).String()
	if !strings.Contains(text, ip+"/32") && !strings.Contains(text, ip+" ") && !strings.Contains(text, ip+" .") {
		return fmt.Errorf("cluster IP %s of %s is not in the rules", ip, benchSvcName(n-1))
	}
	return nil
}

// kernelAlone loads text into a fresh namespace with the plain tool and
// returns how long the kernel took.
func kernelAlone(t *testing.T, mode, text string) (time.Duration, error) {
	ns := fmt.Sprintf("swyb-k-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("ip netns add %s: %v: %s", ns, err, out)
	}
	defer func() { _ = exec.Command("ip", "netns", "del", ns).Run() }()
	tool := []string{"iptables-nft-restore"}
	if mode == "nftables" {
		tool = []string{"nft", "-f", "-"}
	}
	if mode == "iptables" {
		// kube-proxy counts invalid packets in an nfacct object it creates
		// over netlink; a fresh namespace has none, so the match goes.
		text = nfacctMatch.ReplaceAllString(text, "")
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, tool...)...)
	cmd.Stdin = strings.NewReader(text)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		_ = os.WriteFile("/tmp/swy-bench-failed-ruleset.txt", []byte(text), 0o644)
		return 0, fmt.Errorf("%s of the proxy's ruleset: %v: %s", tool[0], err, tail(string(out), 5))
	}
	return d, nil
}

var nfacctMatch = regexp.MustCompile(` -m nfacct --nfacct-name +\S+`)

// procStats reads resident and peak resident memory and CPU time.
func procStats(pid int) (rss, peak int64, cpu time.Duration) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				if f[0] == "VmRSS:" {
					rss = kb << 10
				} else {
					peak = kb << 10
				}
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 13 {
				ut, _ := strconv.ParseInt(f[11], 10, 64)
				st, _ := strconv.ParseInt(f[12], 10, 64)
				cpu = time.Duration(ut+st) * time.Second / 100 // USER_HZ
			}
		}
	}
	return rss, peak, cpu
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s)-1) + 0.5)
	return s[i]
}

func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return "> " + (-d).String()
	case d < time.Second:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

// getTimeout fetches http://addr/path inside the node namespace, within
// timeout (a CPU profile takes seconds).
func (e *env) getTimeout(addr, path string, timeout time.Duration) (int, string, error) {
	c := &http.Client{Transport: e.http.Transport, Timeout: timeout}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s%s: %w", addr, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("read %s%s: %w", addr, path, err)
	}
	return resp.StatusCode, string(b), nil
}
