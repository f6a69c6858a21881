package app

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDaemonPicksUpChangesAndReports runs the proxy as a long-running
// process over a manifest folder with a fake backend: a file change leads to
// a partial sync naming the changed service, and /healthz and /metrics
// answer over real HTTP.
func TestDaemonPicksUpChangesAndReports(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "objects.yaml", demoObjects)
	fb := &fakeBackend{}
	useBackend(t, fb)
	healthz, metricsAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"--manifests", dir, "--hostname-override", "node-a", "--min-sync-period", "50ms",
			"--healthz-bind-address", healthz, "--metrics-bind-address", metricsAddr}, io.Discard, logs)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Main did not return after cancel")
		}
	})
	syncs := func() int {
		fb.mu.Lock()
		defer fb.mu.Unlock()
		return len(fb.syncs)
	}
	eventually(t, "first sync", func() bool { return syncs() >= 1 })
	eventually(t, "healthz 200", func() bool { code, _ := get("http://" + healthz + "/healthz"); return code == 200 })
	code, body := get("http://" + healthz + "/livez")
	if code != 200 || !strings.Contains(body, "lastUpdated") {
		t.Errorf("/livez: %d %s", code, body)
	}

	// Add an endpoint to the slice and a new service.
	before := syncs()
	writeFile(t, dir, "objects.yaml", strings.Replace(demoObjects, "- addresses: [10.244.0.12]", "- addresses: [10.244.0.13]\n  nodeName: node-a\n- addresses: [10.244.0.12]", 1))
	writeFile(t, dir, "more.yaml", `apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec:
  clusterIP: 10.96.0.81
  ports: [{name: grpc, port: 9000}]
`)
	// The changes may arrive in one sync or two; every later sync must be
	// partial and together they must name exactly the two service ports.
	changed := map[string]bool{}
	eventually(t, "partial syncs with both changes", func() bool {
		fb.mu.Lock()
		defer fb.mu.Unlock()
		for _, snaps := range fb.syncs[before:] {
			if snaps[0].FullSync {
				t.Fatalf("a file change caused a full sync")
			}
			for n := range snaps[0].Changed {
				changed[n.String()] = true
			}
		}
		return len(changed) >= 2
	})
	if len(changed) != 2 || !changed["demo/web:http"] || !changed["demo/api:grpc"] {
		t.Errorf("changed = %v", changed)
	}
	fb.mu.Lock()
	snap := fb.syncs[len(fb.syncs)-1][0]
	fb.mu.Unlock()
	if web := snap.Services[1]; web.Name.Name != "web" || len(web.ClusterEndpoints) != 2 {
		t.Errorf("web after change: %+v", web)
	}

	code, body = get("http://" + metricsAddr + "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		"kubeproxy_sync_proxy_rules_duration_seconds_count",
		"kubeproxy_sync_full_proxy_rules_duration_seconds_count",
		"kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
		"kubeproxy_sync_proxy_rules_service_changes_total",
		"kubeproxy_sync_proxy_rules_endpoint_changes_total",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(body, `kubernetes_build_info{`) || !strings.Contains(body, "# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] ") {
		t.Errorf("/metrics lacks kubernetes_build_info or kube-proxy's HELP markers")
	}
	if code, body := get("http://" + metricsAddr + "/configz"); code != 200 || !strings.Contains(body, `{"kubeproxy.config.k8s.io":{`) || !strings.Contains(body, `"hostnameOverride":"node-a"`) {
		t.Errorf("/configz: %d %s", code, body)
	}
	if code, body := get("http://" + healthz + "/healthz"); code != 200 || !strings.Contains(body, `"healthy":true`) || !strings.Contains(body, `"status":{"IPv4":`) {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := get("http://" + metricsAddr + "/proxyMode"); code != 200 || strings.TrimSpace(body) != "iptables" {
		t.Errorf("/proxyMode: %d %q", code, body)
	}
	if !strings.Contains(logs.String(), "demo/broken") {
		t.Errorf("log does not name the broken service")
	}
}
