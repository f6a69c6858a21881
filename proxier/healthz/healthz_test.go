package healthz

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type probes struct {
	mu             sync.Mutex
	healthz, livez map[int]int
}

func (p *probes) HealthzProbe(code int) { p.mu.Lock(); p.healthz[code]++; p.mu.Unlock() }
func (p *probes) LivezProbe(code int)   { p.mu.Lock(); p.livez[code]++; p.mu.Unlock() }

type reply struct {
	code         int
	contentType  string
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible"`
	Healthy      *bool     `json:"healthy"`
	Status       map[string]struct {
		LastUpdated time.Time `json:"lastUpdated"`
		Healthy     bool      `json:"healthy"`
	} `json:"status"`
	raw string
}

// serve starts s on a loopback port and returns its base URL.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
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

func get(t *testing.T, url string) reply {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{code: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), raw: string(data)}
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("%s: body %q is not JSON: %v", url, data, err)
	}
	return r
}

func expect(t *testing.T, base string, healthz, livez int, eligible bool) (reply, reply) {
	t.Helper()
	h := get(t, base+"/healthz")
	l := get(t, base+"/livez")
	if h.code != healthz || l.code != livez {
		t.Fatalf("/healthz = %d, /livez = %d; want %d, %d", h.code, l.code, healthz, livez)
	}
	if h.NodeEligible == nil || *h.NodeEligible != eligible {
		t.Fatalf("/healthz nodeEligible = %v, want %v", h.NodeEligible, eligible)
	}
	if l.NodeEligible != nil {
		t.Fatal("/livez reports nodeEligible")
	}
	if h.contentType != "application/json" {
		t.Fatalf("Content-Type = %q", h.contentType)
	}
	return h, l
}

func TestHealthTimeline(t *testing.T) {
	c := &clock{now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	p := &probes{healthz: map[int]int{}, livez: map[int]int{}}
	s := New(time.Minute, WithClock(c.Now), WithProbeRecorder(p), WithFamilies("IPv4", "IPv6"))
	base := serve(t, s)

	// Starting up: healthy, lastUpdated reported as now.
	h, _ := expect(t, base, 200, 200, true)
	if !h.LastUpdated.Equal(h.CurrentTime) || !h.CurrentTime.Equal(c.Now()) || h.Healthy == nil || !*h.Healthy || h.Status != nil {
		t.Fatalf("healthy body = %+v, want lastUpdated = currentTime = %v, healthy, no status before a sync", h, c.Now())
	}

	// An update queued: healthy until it is a full timeout old.
	s.QueuedUpdate()
	c.Advance(59 * time.Second)
	s.QueuedUpdate() // a later change does not reset the oldest one
	expect(t, base, 200, 200, true)
	c.Advance(time.Second)
	h, _ = expect(t, base, 503, 503, true)
	if s.Healthy() {
		t.Fatal("Healthy() = true with a stale queued update")
	}
	if !h.LastUpdated.IsZero() || *h.Healthy {
		t.Fatalf("unhealthy body %+v, want the zero lastUpdated (never synced) and healthy false", h)
	}

	// A sync clears it.
	s.Updated()
	synced := c.Now()
	expect(t, base, 200, 200, true)
	if !s.Healthy() {
		t.Fatal("Healthy() = false after Updated")
	}

	// Queued again and stale: lastUpdated is the last sync.
	s.QueuedUpdate()
	c.Advance(2 * time.Minute)
	h, _ = expect(t, base, 503, 503, true)
	if !h.LastUpdated.Equal(synced) || !h.CurrentTime.Equal(c.Now()) {
		t.Fatalf("body = %+v, want lastUpdated %v", h, synced)
	}
	if st := h.Status["IPv4"]; !st.LastUpdated.Equal(synced) || st.Healthy || len(h.Status) != 2 {
		t.Fatalf("status = %+v, want both families unhealthy since %v", h.Status, synced)
	}
	// kube-proxy's format: RFC 3339 with nanoseconds.
	if !strings.Contains(h.raw, `"currentTime":"2025-03-01T12:03:00Z"`) {
		t.Fatalf("raw body %s", h.raw)
	}

	s.Updated()
	expect(t, base, 200, 200, true)

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.healthz[200] != 4 || p.healthz[503] != 2 || p.livez[200] != 4 || p.livez[503] != 2 {
		t.Fatalf("probe counts healthz=%v livez=%v", p.healthz, p.livez)
	}
}

func TestNodeEligibility(t *testing.T) {
	s := New(time.Minute)
	base := serve(t, s)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}

	s.SetNode(node)
	expect(t, base, 200, 200, true)

	tainted := node.DeepCopy()
	tainted.Spec.Taints = []corev1.Taint{{Key: "other", Effect: corev1.TaintEffectNoSchedule},
		{Key: ToBeDeletedTaint, Effect: corev1.TaintEffectNoSchedule}}
	s.SetNode(tainted)
	expect(t, base, 503, 200, false)
	if !s.Healthy() {
		t.Fatal("Healthy() must ignore the node")
	}

	s.SetNode(node)
	expect(t, base, 200, 200, true)

	deleting := node.DeepCopy()
	now := metav1.Now()
	deleting.DeletionTimestamp = &now
	s.SetNode(deleting)
	expect(t, base, 503, 200, false)

	s.SetNode(node)
	s.SetNode(nil)
	expect(t, base, 503, 200, false)
}

func TestListenAndServeBadAddress(t *testing.T) {
	err := New(time.Minute).ListenAndServe(context.Background(), "127.0.0.1:notaport")
	if err == nil {
		t.Fatal("ListenAndServe on a bad address succeeded")
	}
}
