package informers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/switchyard-proxy/switchyard/proxier/source/sourcetest"
)

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func waitLog(t *testing.T, logs *logBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", want, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A watch that keeps failing (the API server away) is one WARN, however
// often the informers retry, and its end one INFO.
func TestRunLogsWatchFailureOnceAndRecovery(t *testing.T) {
	old := probeInterval
	probeInterval = 20 * time.Millisecond
	t.Cleanup(func() { probeInterval = old })

	client := fake.NewClientset(svc("plain", nil), node("n1"))
	var failing atomic.Bool
	var failures atomic.Int32
	failing.Store(true)
	client.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		if failing.Load() {
			failures.Add(1)
			return true, nil, errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
		}
		return false, nil, nil
	})
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	rec := sourcetest.NewRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, client, "n1", "", rec, log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	rec.WaitSynced(t, wait)
	waitLog(t, logs, "level=WARN msg=\"API server list/watch failed")
	// Let the informers and the probe fail several more times.
	deadline := time.Now().Add(wait)
	for failures.Load() < 12 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d watch failures", failures.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	failing.Store(false)
	waitLog(t, logs, "level=INFO msg=\"API server list/watch works again\"")
	l := logs.String()
	if n := strings.Count(l, "level=WARN"); n != 1 {
		t.Errorf("%d WARN lines, want 1:\n%s", n, l)
	}
	if !strings.Contains(l, "connection refused") {
		t.Errorf("the WARN does not give the error:\n%s", l)
	}
}

func TestHealthIgnoresNormalWatchEnds(t *testing.T) {
	logs := &logBuffer{}
	h := newHealth(slog.New(slog.NewTextHandler(logs, nil)), func(context.Context) error { return nil }, time.Millisecond)
	h.report("*v1.Service", io.EOF)
	h.report("*v1.Service", apierrors.NewResourceExpired("too old resource version"))
	if h.Failing() || logs.String() != "" {
		t.Fatalf("normal watch ends reported as failures: %s", logs)
	}
	h.report("*v1.Service", apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "", errors.New("rbac")))
	if !h.Failing() || !strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("a forbidden watch is not reported: %s", logs)
	}
}
