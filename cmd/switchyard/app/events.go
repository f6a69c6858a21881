package app

import (
	"context"
	"log/slog"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
)

// eventAction is the events.k8s.io "action" of switchyard's events.
const eventAction = "MapHostPort"

// podEvents records Kubernetes Events on pods (host-port conflicts)
// through client-go's events.k8s.io broadcaster, once the informer source
// has a client; with the manifest source (no API server) it records
// nothing and the tracker's log line is all there is. The tracker already
// reports each conflict once while it lasts; the broadcaster turns a
// conflict that comes back within minutes into a series (a patch of the
// first event) instead of a new event.
type podEvents struct {
	mu  sync.Mutex
	rec events.EventRecorder
}

// start records events through client until ctx ends.
func (p *podEvents) start(ctx context.Context, client kubernetes.Interface, log *slog.Logger) {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	if err := b.StartRecordingToSinkWithContext(ctx); err != nil {
		log.Warn("pod events not recorded", "err", err)
		return
	}
	p.mu.Lock()
	p.rec = b.NewRecorder(scheme.Scheme, "switchyard")
	p.mu.Unlock()
	go func() {
		<-ctx.Done()
		p.mu.Lock()
		p.rec = nil
		p.mu.Unlock()
		b.Shutdown()
	}()
}

// report records a Warning event with reason and message on pod (a
// no-op without an API server). It does not block.
func (p *podEvents) report(pod *corev1.Pod, reason, message string) {
	p.mu.Lock()
	rec := p.rec
	p.mu.Unlock()
	if rec != nil {
		rec.Eventf(pod, nil, corev1.EventTypeWarning, reason, eventAction, "%s", message)
	}
}
