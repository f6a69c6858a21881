package app

import (
	"context"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// A reported conflict becomes one events.k8s.io Event regarding the pod;
// before start (no API server) reporting records nothing and does not block.
func TestPodEventsRecordsOnThePod(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "newer", UID: "u-1"}}
	ev := &podEvents{}
	ev.report(pod, "HostPortConflict", "before start")

	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev.start(ctx, client, slog.New(slog.DiscardHandler))
	ev.report(pod, "HostPortConflict", "hostPort 8080/TCP is already used by pod ns/older; mapping skipped")

	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := client.EventsV1().Events("ns").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Items) > 0 {
			e := l.Items[0]
			if len(l.Items) != 1 || e.Reason != "HostPortConflict" || e.Type != corev1.EventTypeWarning ||
				e.Regarding.Name != "newer" || e.Regarding.UID != "u-1" || e.Regarding.Kind != "Pod" ||
				e.Note != "hostPort 8080/TCP is already used by pod ns/older; mapping skipped" || e.ReportingController != "switchyard" {
				t.Fatalf("events %+v", l.Items)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no event recorded")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
