// Package sourcetest provides a proxier.Sink that records what a source
// delivers, for tests of the sources and of anything fed by them.
package sourcetest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Event is one call a source made.
type Event struct {
	// Kind is "Service", "EndpointSlice", "Node" or "Pod".
	Kind string
	// Name is "namespace/name" ("name" for a Node).
	Name string
	// Deleted is the deleted argument of the call.
	Deleted bool
	// Obj is the object passed.
	Obj runtime.Object
}

// String returns "+Kind name" for an upsert and "-Kind name" for a deletion.
func (e Event) String() string {
	sign := "+"
	if e.Deleted {
		sign = "-"
	}
	return sign + e.Kind + " " + e.Name
}

// Recorder is a proxier.Sink that records every call; safe for concurrent use.
type Recorder struct {
	mu     sync.Mutex
	events []Event
	synced int
	// changed is closed and replaced on every call, to wake waiters.
	changed chan struct{}
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{changed: make(chan struct{})} }

func (r *Recorder) record(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	r.wake()
}

func (r *Recorder) wake() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// OnService records a Service event.
func (r *Recorder) OnService(svc *corev1.Service, deleted bool) {
	r.record(Event{Kind: "Service", Name: svc.Namespace + "/" + svc.Name, Deleted: deleted, Obj: svc})
}

// OnEndpointSlice records an EndpointSlice event.
func (r *Recorder) OnEndpointSlice(s *discoveryv1.EndpointSlice, deleted bool) {
	r.record(Event{Kind: "EndpointSlice", Name: s.Namespace + "/" + s.Name, Deleted: deleted, Obj: s})
}

// OnNode records a Node event.
func (r *Recorder) OnNode(n *corev1.Node, deleted bool) {
	r.record(Event{Kind: "Node", Name: n.Name, Deleted: deleted, Obj: n})
}

// OnPod records a Pod event.
func (r *Recorder) OnPod(p *corev1.Pod, deleted bool) {
	r.record(Event{Kind: "Pod", Name: p.Namespace + "/" + p.Name, Deleted: deleted, Obj: p})
}

// OnSynced counts the call.
func (r *Recorder) OnSynced() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.synced++
	r.wake()
}

// Synced returns how many times OnSynced was called.
func (r *Recorder) Synced() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.synced
}

// Events returns a copy of the events recorded so far.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// Take returns the events recorded so far and forgets them.
func (r *Recorder) Take() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

// Strings formats events with Event.String.
func Strings(events []Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.String()
	}
	return out
}

// WaitFor blocks until cond holds for the recorded events and synced
// count, failing the test if it does not within timeout. It wakes on
// every delivery; it never sleeps a fixed time.
func (r *Recorder) WaitFor(t testing.TB, timeout time.Duration, what string, cond func(events []Event, synced int) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond(r.events, r.synced)
		ch := r.changed
		desc := fmt.Sprintf("synced=%d events=[%s]", r.synced, strings.Join(Strings(r.events), ", "))
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; have %s", timeout, what, desc)
		}
	}
}

// WaitSynced waits until OnSynced has been called at least once.
func (r *Recorder) WaitSynced(t testing.TB, timeout time.Duration) {
	t.Helper()
	r.WaitFor(t, timeout, "OnSynced", func(_ []Event, synced int) bool { return synced > 0 })
}

// WaitEvent waits until an event with the given String() form (for
// example "+Service default/web") has been recorded.
func (r *Recorder) WaitEvent(t testing.TB, timeout time.Duration, want string) {
	t.Helper()
	r.WaitFor(t, timeout, want, func(events []Event, _ int) bool {
		for _, e := range events {
			if e.String() == want {
				return true
			}
		}
		return false
	})
}
