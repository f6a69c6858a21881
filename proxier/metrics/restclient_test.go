package metrics

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// /metrics carries client-go's rest_client_* series for the requests a
// real clientset made (to a fake API server on loopback), with upstream's
// labels and [ALPHA] marker, next to the Go runtime and process metrics.
func TestRestClientAndRuntimeMetrics(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/api/v1/nodes":
			_, _ = w.Write([]byte(`{"kind":"NodeList","apiVersion":"v1","metadata":{},"items":[]}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`))
		}
	}))
	defer api.Close()
	host := strings.TrimPrefix(api.URL, "http://")
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.CoreV1().Services("default").Get(ctx, "nope", metav1.GetOptions{}); err == nil {
		t.Fatal("want a 404")
	}

	base := serve(t, New("iptables", proxier.IPv4))
	fams := scrape(t, base)
	_, _, body := fetch(t, base+"/metrics")
	counter := func(name string, labels map[string]string) float64 {
		for _, m := range fams[name].GetMetric() {
			match := true
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				match = match && found
			}
			if match {
				return m.GetCounter().GetValue()
			}
		}
		return -1
	}
	if got := counter("rest_client_requests_total", map[string]string{"code": "200", "method": "GET", "host": host}); got < 3 {
		t.Errorf("rest_client_requests_total{code=200,method=GET,host=%s} = %v, want >= 3", host, got)
	}
	if got := counter("rest_client_requests_total", map[string]string{"code": "404", "method": "GET", "host": host}); got < 1 {
		t.Errorf("rest_client_requests_total{code=404} = %v, want >= 1", got)
	}
	lat := fams["rest_client_request_duration_seconds"]
	if lat == nil || !strings.HasPrefix(lat.GetHelp(), "[ALPHA] ") {
		t.Fatalf("rest_client_request_duration_seconds: %v", lat)
	}
	var n uint64
	for _, m := range lat.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "host" && lp.GetValue() == host {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	if n < 4 {
		t.Errorf("rest_client_request_duration_seconds for %s: %d samples, want >= 4", host, n)
	}
	for _, name := range []string{"rest_client_response_size_bytes", "rest_client_rate_limiter_duration_seconds",
		"go_goroutines", "go_memstats_alloc_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"} {
		if fams[name] == nil {
			t.Errorf("/metrics has no %s", name)
		}
	}
	// Each family once (no duplicate Go/process collectors from the
	// legacy registry).
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "# TYPE go_goroutines ") && strings.Count(body, line) != 1 {
			t.Errorf("go_goroutines declared %d times", strings.Count(body, line))
		}
	}
}
