// Package healthz is switchyard's proxier health server, with kube-proxy's
// semantics: /healthz and /livez answer 200 unless an update was queued
// more than the health timeout ago (kube-proxy uses 2 × sync-period) and no
// sync has succeeded since. /healthz also answers 503 while this node is
// being deleted or carries the cluster autoscaler's ToBeDeletedByClusterAutoscaler
// taint, so load balancers drain it; /livez ignores the node.
//
// The body is kube-proxy v1.37's JSON: {"lastUpdated", "currentTime",
// "nodeEligible" (/healthz only), "healthy", "status": {"IPv4": {"lastUpdated",
// "healthy"}, ...}}, times in RFC 3339 with nanoseconds. "healthy" is the
// proxier's health (the node's eligibility only changes the status code);
// "status" lists the families given with WithFamilies once a sync has
// succeeded (switchyard syncs all families together, so they share one
// state). As in kube-proxy, the top-level lastUpdated equals currentTime
// while the answer is 200.
package healthz

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/internal/httpserve"
)

// ToBeDeletedTaint is the taint key the cluster autoscaler puts on a node
// it is about to delete.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// ProbeRecorder counts the answers of the two endpoints
// (metrics.Metrics implements it).
type ProbeRecorder interface {
	// HealthzProbe records the status code /healthz answered.
	HealthzProbe(code int)
	// LivezProbe records the status code /livez answered.
	LivezProbe(code int)
}

// Option customises a Server.
type Option func(*Server)

// WithClock makes the server read the time from now.
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// WithFamilies names the IP families the node proxies ("IPv4", "IPv6"),
// reported under "status" in the body.
func WithFamilies(families ...string) Option {
	return func(s *Server) { s.families = append([]string(nil), families...) }
}

// WithProbeRecorder makes the server report every answer to r.
func WithProbeRecorder(r ProbeRecorder) Option { return func(s *Server) { s.probes = r } }

// Server tracks the proxier's health and serves it over HTTP. Its methods
// are safe for concurrent use.
type Server struct {
	timeout  time.Duration
	now      func() time.Time
	probes   ProbeRecorder
	families []string

	mu           sync.Mutex
	lastUpdated  time.Time
	oldestQueued time.Time // zero: nothing queued
	nodeEligible bool
}

// New returns a server that turns unhealthy when a queued update waits
// longer than healthTimeout.
func New(healthTimeout time.Duration, opts ...Option) *Server {
	s := &Server{timeout: healthTimeout, now: time.Now, nodeEligible: true}
	for _, o := range opts {
		o(s)
	}
	return s
}

// QueuedUpdate records that a change is waiting to be synced. Only the
// oldest waiting change counts.
func (s *Server) QueuedUpdate() {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.oldestQueued.IsZero() {
		s.oldestQueued = now
	}
}

// Updated records a successful sync: nothing is waiting any more.
func (s *Server) Updated() {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.oldestQueued = time.Time{}
	s.lastUpdated = now
}

// SetNode records this node's state: it is ineligible (and /healthz
// answers 503) while it has a deletion timestamp or the ToBeDeletedTaint.
// A nil node (deleted) is ineligible too. Until SetNode is first called the
// node counts as eligible.
func (s *Server) SetNode(node *corev1.Node) {
	eligible := node != nil && node.DeletionTimestamp.IsZero()
	if eligible {
		for _, t := range node.Spec.Taints {
			if t.Key == ToBeDeletedTaint {
				eligible = false
				break
			}
		}
	}
	s.mu.Lock()
	s.nodeEligible = eligible
	s.mu.Unlock()
}

// Healthy reports the proxier's health alone, ignoring the node: the
// answer /livez gives. Health-check node-port servers use it.
func (s *Server) Healthy() bool {
	healthy, _, _, _ := s.state()
	return healthy
}

func (s *Server) state() (healthy bool, lastUpdated, now time.Time, eligible bool) {
	now = s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	healthy = s.oldestQueued.IsZero() || now.Sub(s.oldestQueued) < s.timeout
	return healthy, s.lastUpdated, now, s.nodeEligible
}

// Handler returns the HTTP handler serving /healthz and /livez.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { s.serve(w, true) })
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { s.serve(w, false) })
	return mux
}

// familyHealth is one family's entry under "status".
type familyHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

type body struct {
	LastUpdated  time.Time               `json:"lastUpdated"`
	CurrentTime  time.Time               `json:"currentTime"`
	NodeEligible *bool                   `json:"nodeEligible,omitempty"`
	Healthy      bool                    `json:"healthy"`
	Status       map[string]familyHealth `json:"status,omitempty"`
}

func (s *Server) serve(w http.ResponseWriter, withNode bool) {
	healthy, lastUpdated, now, eligible := s.state()
	b := body{CurrentTime: now, LastUpdated: lastUpdated, Healthy: healthy}
	if !lastUpdated.IsZero() && len(s.families) > 0 {
		b.Status = map[string]familyHealth{}
		for _, f := range s.families {
			b.Status[f] = familyHealth{LastUpdated: lastUpdated, Healthy: healthy}
		}
	}
	if withNode {
		healthy = healthy && eligible
		b.NodeEligible = &eligible
	}
	code := http.StatusServiceUnavailable
	if healthy {
		code = http.StatusOK
		// kube-proxy reports "now" while healthy, for compatibility with
		// releases where lastUpdated meant "last time the loop ran".
		b.LastUpdated = now
	}
	if s.probes != nil {
		if withNode {
			s.probes.HealthzProbe(code)
		} else {
			s.probes.LivezProbe(code)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(b)
}

// ListenAndServe serves Handler on addr until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	return httpserve.ListenAndServe(ctx, "healthz", addr, s.Handler())
}

// Serve serves Handler on ln until ctx ends, then shuts down gracefully.
// It closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return httpserve.Serve(ctx, "healthz", ln, s.Handler())
}
