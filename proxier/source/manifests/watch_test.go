package manifests

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/proxier/source/sourcetest"
)

const wait = 10 * time.Second

// syncBuffer is a bytes.Buffer safe for the logger and the test to share.
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

const sliceWeb = `---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]
ports: [{port: 8080}]
`

// startSource runs a Source on dir and returns its recorder and a function
// that stops it and checks that Run returned nil promptly.
func startSource(t *testing.T, dir string, logs *syncBuffer) (*sourcetest.Recorder, func()) {
	t.Helper()
	rec := sourcetest.NewRecorder()
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	src := New(dir, "n1", "", rec, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(wait):
			t.Errorf("Run did not return within %v of cancel", wait)
		}
	}
	t.Cleanup(stop)
	return rec, stop
}

// expect waits for the event named last, then checks that exactly want
// (in order) was delivered since the previous expect.
func expect(t *testing.T, rec *sourcetest.Recorder, last string, want ...string) []sourcetest.Event {
	t.Helper()
	rec.WaitEvent(t, wait, last)
	got := rec.Take()
	if s := sourcetest.Strings(got); !reflect.DeepEqual(s, want) {
		t.Fatalf("delivered %v, want %v", s, want)
	}
	return got
}

func port(ev sourcetest.Event) int32 { return ev.Obj.(*corev1.Service).Spec.Ports[0].Port }

func TestRunDeliversChanges(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuffer{}
	writeFile(t, dir, "a.yaml", svcYAML("web", 80, "")+sliceWeb)
	writeFile(t, dir, "node.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n")
	rec, stop := startSource(t, dir, logs)

	rec.WaitSynced(t, wait)
	if got, want := sourcetest.Strings(rec.Take()), []string{"+Node n1", "+Service ns/web", "+EndpointSlice ns/web-1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("initial delivery %v, want %v", got, want)
	}

	// A new file.
	writeFile(t, dir, "b.yaml", svcYAML("api", 80, ""))
	expect(t, rec, "+Service ns/api", "+Service ns/api")

	// A changed service in a file whose slice did not change.
	writeFile(t, dir, "a.yaml", svcYAML("web", 81, "")+sliceWeb)
	if ev := expect(t, rec, "+Service ns/web", "+Service ns/web"); port(ev[0]) != 81 {
		t.Fatalf("web delivered with port %d, want 81", port(ev[0]))
	}

	// Rewriting a file unchanged delivers nothing (the next change proves
	// the folder was re-read after it).
	writeFile(t, dir, "a.yaml", svcYAML("web", 81, "")+sliceWeb)
	writeFile(t, dir, "c.yaml", svcYAML("c", 80, ""))
	expect(t, rec, "+Service ns/c", "+Service ns/c")

	// A removed file.
	if err := os.Remove(filepath.Join(dir, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	expect(t, rec, "-Service ns/api", "-Service ns/api")

	// An editor's write-then-rename replacement.
	tmp := filepath.Join(dir, ".a.yaml.swp")
	writeFile(t, dir, ".a.yaml.swp", svcYAML("web", 82, "")+sliceWeb)
	if err := os.Rename(tmp, filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	if ev := expect(t, rec, "+Service ns/web", "+Service ns/web"); port(ev[0]) != 82 {
		t.Fatalf("web delivered with port %d, want 82", port(ev[0]))
	}

	// A half-written file keeps its previous objects: no deletions.
	writeFile(t, dir, "a.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web, namesp")
	writeFile(t, dir, "d.yaml", svcYAML("d", 80, ""))
	expect(t, rec, "+Service ns/d", "+Service ns/d")
	aPath := filepath.Join(dir, "a.yaml")
	if l := logs.String(); !strings.Contains(l, `msg="manifest document skipped" source=manifests dir=`+dir+` file=`+aPath+` doc=1 line=1 reason="invalid YAML`) {
		t.Errorf("log does not name the unparsable file and document:\n%s", l)
	}
	// ... and once complete, only what changed is delivered.
	writeFile(t, dir, "a.yaml", svcYAML("web", 83, "")+sliceWeb)
	if ev := expect(t, rec, "+Service ns/web", "+Service ns/web"); port(ev[0]) != 83 {
		t.Fatalf("web delivered with port %d, want 83", port(ev[0]))
	}

	// A valid file that loses a document deletes its object.
	writeFile(t, dir, "a.yaml", svcYAML("web", 83, ""))
	expect(t, rec, "-EndpointSlice ns/web-1", "-EndpointSlice ns/web-1")

	// Moving an object between files is no change; removing the node is.
	writeFile(t, dir, "c.yaml", svcYAML("c", 80, "")+"---\n"+svcYAML("web", 83, ""))
	if err := os.Remove(filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "node.yaml")); err != nil {
		t.Fatal(err)
	}
	expect(t, rec, "-Node n1", "-Node n1")

	stop()
	if n := rec.Synced(); n != 1 {
		t.Errorf("OnSynced called %d times, want 1", n)
	}
}

func TestRunDuplicateAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuffer{}
	writeFile(t, dir, "a.yaml", svcYAML("web", 80, ""))
	writeFile(t, dir, "b.yaml", svcYAML("web", 81, ""))
	rec, _ := startSource(t, dir, logs)
	rec.WaitSynced(t, wait)
	ev := rec.Take()
	if got := sourcetest.Strings(ev); !reflect.DeepEqual(got, []string{"+Service ns/web"}) || port(ev[0]) != 81 {
		t.Fatalf("initial delivery %v, want web from b.yaml (port 81)", got)
	}
	if !strings.Contains(logs.String(), "this later definition wins") {
		t.Errorf("no duplicate warning logged:\n%s", logs)
	}
	// The later file disappears: the earlier definition takes over.
	if err := os.Remove(filepath.Join(dir, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	if ev := expect(t, rec, "+Service ns/web", "+Service ns/web"); port(ev[0]) != 80 {
		t.Fatalf("web delivered with port %d, want 80", port(ev[0]))
	}
}

func TestRunMissingFolder(t *testing.T) {
	src := New(filepath.Join(t.TempDir(), "nope"), "n1", "", sourcetest.NewRecorder(), slog.New(slog.DiscardHandler))
	if err := src.Run(context.Background()); err == nil {
		t.Fatal("Run on a missing folder returned nil")
	}
}
