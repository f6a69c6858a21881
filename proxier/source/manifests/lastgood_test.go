package manifests

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier/source/sourcetest"
)

// waitLog polls the log until it holds want (a generous deadline, no
// fixed sleep in the assertion).
func waitLog(t *testing.T, logs *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", want, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startWithGrace is startSource with an EmptyGrace.
func startWithGrace(t *testing.T, dir string, logs *syncBuffer, grace time.Duration) *sourcetest.Recorder {
	t.Helper()
	rec := sourcetest.NewRecorder()
	src := New(dir, "n1", "", rec, slog.New(slog.NewTextHandler(logs, nil)))
	src.EmptyGrace = grace
	src.Debounce = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	rec.WaitSynced(t, wait)
	return rec
}

func noDeletions(t *testing.T, events []sourcetest.Event) {
	t.Helper()
	for _, e := range events {
		if e.Deleted {
			t.Fatalf("an object disappeared: %v (all: %v)", e, sourcetest.Strings(events))
		}
	}
}

// A file rewritten in place (truncated, then written in pieces), or edited
// badly, never loses its objects: they keep their last good version until
// the file loads again.
func TestRunNonAtomicRewriteLosesNothing(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuffer{}
	good := svcYAML("web", 80, "") + sliceWeb + "---\n" + svcYAML("api", 80, "")
	writeFile(t, dir, "a.yaml", good)
	writeFile(t, dir, "b.yaml", svcYAML("other", 80, ""))
	rec := startWithGrace(t, dir, logs, time.Hour)
	if got, want := sourcetest.Strings(rec.Take()), []string{"+Service ns/api", "+Service ns/other", "+Service ns/web", "+EndpointSlice ns/web-1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("initial delivery %v, want %v", got, want)
	}
	path := filepath.Join(dir, "a.yaml")

	// Non-atomic rewrite through one file descriptor: truncate, then the
	// first part, then the rest, with the changed port.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	waitLog(t, logs, "manifest file is empty; keeping its objects")
	next := svcYAML("web", 81, "") + sliceWeb + "---\n" + svcYAML("api", 80, "")
	cut := strings.Index(next, "endpoints:") + 5 // inside the slice document
	if _, err := f.WriteString(next[:cut]); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, "keeping the last good version")
	if !strings.Contains(logs.String(), "file="+path) {
		t.Errorf("the warning does not name the file:\n%s", logs)
	}
	if _, err := f.WriteString(next[cut:]); err != nil {
		t.Fatal(err)
	}
	rec.WaitEvent(t, wait, "+Service ns/web")
	ev := rec.Take()
	noDeletions(t, ev)
	if got := sourcetest.Strings(ev); !reflect.DeepEqual(got, []string{"+Service ns/web"}) || port(ev[len(ev)-1]) != 81 {
		t.Fatalf("after the rewrite: %v, want only web (port 81)", got)
	}

	// A bad edit: a hostile port name makes the document invalid; web keeps
	// its previous version, the other edits of the file apply.
	writeFile(t, dir, "a.yaml", strings.Replace(svcYAML("web", 82, ""), "  - port:", "  - name: \"x\\\"\\n-A INPUT -j ACCEPT\"\n    port:", 1)+
		sliceWeb+"---\n"+svcYAML("api", 90, ""))
	rec.WaitEvent(t, wait, "+Service ns/api")
	waitLog(t, logs, "spec.ports[0].name")
	ev = rec.Take()
	noDeletions(t, ev)
	if got := sourcetest.Strings(ev); !reflect.DeepEqual(got, []string{"+Service ns/api"}) {
		t.Fatalf("after a bad edit: %v, want only api", got)
	}
	// Fixed: web changes; nothing was ever deleted.
	writeFile(t, dir, "a.yaml", svcYAML("web", 83, "")+sliceWeb+"---\n"+svcYAML("api", 90, ""))
	rec.WaitEvent(t, wait, "+Service ns/web")
	ev = rec.Take()
	noDeletions(t, ev)
	if port(ev[0]) != 83 {
		t.Fatalf("web port %d, want 83", port(ev[0]))
	}
	// A valid edit that drops a document still deletes its object.
	writeFile(t, dir, "a.yaml", svcYAML("web", 83, "")+sliceWeb)
	rec.WaitEvent(t, wait, "-Service ns/api")
}

// Emptiness deletes only once it has lasted EmptyGrace, with warnings: a
// file truncated to nothing, and a folder whose files are all removed.
func TestRunEmptyGrace(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuffer{}
	writeFile(t, dir, "a.yaml", svcYAML("web", 80, ""))
	writeFile(t, dir, "b.yaml", svcYAML("api", 80, ""))
	rec := startWithGrace(t, dir, logs, 300*time.Millisecond)
	rec.Take()

	writeFile(t, dir, "a.yaml", "# emptied\n")
	rec.WaitEvent(t, wait, "-Service ns/web")
	if l := logs.String(); !strings.Contains(l, "manifest file is empty; keeping its objects") || !strings.Contains(l, "manifest file stayed empty; deleting its objects") {
		t.Errorf("missing warnings:\n%s", l)
	}
	if got := sourcetest.Strings(rec.Take()); !reflect.DeepEqual(got, []string{"-Service ns/web"}) {
		t.Fatalf("delivered %v", got)
	}
	// Filling the file again restores the object at once.
	writeFile(t, dir, "a.yaml", svcYAML("web", 80, ""))
	rec.WaitEvent(t, wait, "+Service ns/web")
	rec.Take()

	for _, n := range []string{"a.yaml", "b.yaml"} {
		if err := os.Remove(filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	rec.WaitFor(t, wait, "both deleted", func(ev []sourcetest.Event, _ int) bool { return len(ev) == 2 })
	if l := logs.String(); !strings.Contains(l, "manifest folder is empty; keeping its objects") || !strings.Contains(l, "manifest folder stayed empty; deleting every object") {
		t.Errorf("missing folder warnings:\n%s", l)
	}
	if got := sourcetest.Strings(rec.Take()); !reflect.DeepEqual(got, []string{"-Service ns/api", "-Service ns/web"}) {
		t.Fatalf("delivered %v", got)
	}
}

// Within the grace period, an emptied folder that gets its files back
// (a replaced ConfigMap, a copy) deletes nothing.
func TestRunFolderRefilledWithinGrace(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuffer{}
	writeFile(t, dir, "a.yaml", svcYAML("web", 80, ""))
	rec := startWithGrace(t, dir, logs, time.Hour)
	rec.Take()
	if err := os.Remove(filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, "manifest folder is empty")
	writeFile(t, dir, "new.yaml", svcYAML("web", 81, ""))
	rec.WaitEvent(t, wait, "+Service ns/web")
	noDeletions(t, rec.Take())
}
