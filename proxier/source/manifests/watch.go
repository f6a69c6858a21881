package manifests

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// DefaultDebounce is how long the folder must stay quiet after a change
// before it is re-read.
const DefaultDebounce = 100 * time.Millisecond

// Source delivers a manifest folder's objects to a sink and keeps the sink
// up to date as the folder changes. Create it with New.
type Source struct {
	dir       string
	nodeName  string
	proxyName string
	sink      proxier.Sink
	log       *slog.Logger

	// Debounce is the quiet period before a re-read (DefaultDebounce);
	// set it before calling Run.
	Debounce time.Duration

	// lastGood holds, per file, its last result that parsed completely,
	// used while the file is unparsable (for instance half written).
	lastGood map[string]fileResult
}

// New returns a source for the manifest folder dir that delivers this
// node's objects (nodeName) for this proxy (proxyName, see
// source.Selected) to sink, logging problems to log (nil: slog.Default()).
func New(dir, nodeName, proxyName string, sink proxier.Sink, log *slog.Logger) *Source {
	if log == nil {
		log = slog.Default()
	}
	return &Source{
		dir:       dir,
		nodeName:  nodeName,
		proxyName: proxyName,
		sink:      sink,
		log:       log.With("source", "manifests", "dir", dir),
		Debounce:  DefaultDebounce,
		lastGood:  map[string]fileResult{},
	}
}

// Run reads the folder, delivers its objects, calls sink.OnSynced, then
// watches the folder: after every burst of changes it re-reads all files
// and delivers only the differences (additions and semantic changes as
// upserts, vanished objects as deletions). Documents that cannot be loaded
// are skipped with a log line naming file, document and reason; a file that
// stops parsing as YAML (a write in progress) keeps its previous content
// until it parses again. Run returns nil when ctx ends, or an error if the
// folder cannot be watched or read at start.
func (s *Source) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("manifests: create watcher: %w", err)
	}
	defer w.Close()
	// Watch before the first read so no change between them is missed.
	if err := w.Add(s.dir); err != nil {
		return fmt.Errorf("manifests: watch %s: %w", s.dir, err)
	}
	cur, err := s.read()
	if err != nil {
		return fmt.Errorf("manifests: %w", err)
	}
	cur.objects().Deliver(s.sink)
	s.log.Info("manifests loaded", "services", count(cur, kindService),
		"endpointSlices", count(cur, kindEndpointSlice), "nodes", count(cur, kindNode), "pods", count(cur, kindPod))

	debounce := s.Debounce
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	timer := time.NewTimer(debounce)
	timer.Stop()
	defer timer.Stop()
	// schedule restarts the quiet period, unless changes have kept coming
	// for maxWait: then the pending re-read is left to fire, so a file
	// rewritten nonstop cannot starve the sink.
	maxWait := 10 * debounce
	var pendingSince time.Time
	schedule := func() {
		now := time.Now()
		if pendingSince.IsZero() {
			pendingSince = now
		}
		if now.Sub(pendingSince) < maxWait {
			timer.Reset(debounce)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("manifests: watcher closed")
			}
			s.log.Debug("manifest folder changed", "event", ev.String())
			if ev.Name == s.dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				s.log.Error("manifest folder removed or renamed; later changes are not seen")
			}
			schedule()
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("manifests: watcher closed")
			}
			// An overflow loses events: re-read to be safe.
			s.log.Warn("manifest folder watch error", "err", err)
			schedule()
		case <-timer.C:
			pendingSince = time.Time{}
			next, err := s.read()
			if err != nil {
				s.log.Error("manifest folder re-read failed; keeping previous objects", "err", err)
				continue
			}
			n := deliverDiff(s.sink, cur, next)
			s.log.Info("manifests re-read", "changes", n)
			cur = next
		}
	}
}

// read reads and merges the folder, logging every problem, and substitutes
// the last good content of files that do not parse.
func (s *Source) read() (objectSet, error) {
	files, err := readDir(s.dir)
	if err != nil {
		return nil, err
	}
	present := map[string]bool{}
	for i, f := range files {
		present[f.path] = true
		if !f.unparsable {
			s.lastGood[f.path] = f
			continue
		}
		if prev, ok := s.lastGood[f.path]; ok {
			for _, e := range f.errs {
				s.logProblem(e)
			}
			s.log.Warn("manifest file does not parse; keeping its previous content until it does",
				"file", f.path, "objects", len(prev.entries))
			files[i] = fileResult{path: prev.path, entries: prev.entries}
		}
	}
	for path := range s.lastGood {
		if !present[path] {
			delete(s.lastGood, path)
		}
	}
	set, errs := merge(files, s.nodeName, s.proxyName)
	for _, e := range errs {
		s.logProblem(e)
	}
	return set, nil
}

func (s *Source) logProblem(err error) {
	var de *DocError
	if !errors.As(err, &de) {
		s.log.Warn("manifest problem", "err", err)
		return
	}
	msg := "manifest warning"
	if de.Skipped {
		msg = "manifest document skipped"
	}
	attrs := []any{"file", de.File}
	if de.Doc > 0 {
		attrs = append(attrs, "doc", de.Doc, "line", de.Line)
	}
	if de.Item > 0 {
		attrs = append(attrs, "item", de.Item)
	}
	attrs = append(attrs, "reason", de.Err.Error())
	s.log.Warn(msg, attrs...)
}

func count(set objectSet, k kind) int {
	n := 0
	for key := range set {
		if key.Kind == k {
			n++
		}
	}
	return n
}

// deliverDiff sends sink what changed from old to next: deletions first,
// then additions and changes; unchanged objects are not re-sent. It returns
// the number of calls made.
func deliverDiff(sink proxier.Sink, old, next objectSet) int {
	n := 0
	for _, k := range old.sortedKeys() {
		if _, ok := next[k]; !ok {
			send(sink, old[k], true)
			n++
		}
	}
	for _, k := range next.sortedKeys() {
		if prev, ok := old[k]; ok && equality.Semantic.DeepEqual(prev, next[k]) {
			continue
		}
		send(sink, next[k], false)
		n++
	}
	return n
}

func send(sink proxier.Sink, obj runtime.Object, deleted bool) {
	switch o := obj.(type) {
	case *corev1.Service:
		sink.OnService(o, deleted)
	case *discoveryv1.EndpointSlice:
		sink.OnEndpointSlice(o, deleted)
	case *corev1.Node:
		sink.OnNode(o, deleted)
	case *corev1.Pod:
		sink.OnPod(o, deleted)
	}
}
