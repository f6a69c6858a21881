package manifests

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
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

	// EmptyGrace is how long a file that held objects may stay empty, or
	// the folder stay without manifest files, before their objects are
	// deleted (DefaultEmptyGrace); set it before calling Run.
	EmptyGrace time.Duration

	// lastGood holds, per file, the objects it last delivered: its last
	// complete read, plus the objects kept while it is broken or empty.
	lastGood map[string]fileResult
	// emptySince records when a file that held objects became empty.
	emptySince map[string]time.Time
	// folderEmptySince records when the folder lost its last manifest file.
	folderEmptySince time.Time
}

// DefaultEmptyGrace is how long emptiness must last before it deletes
// objects: longer than any non-atomic rewrite of a file should take.
const DefaultEmptyGrace = 5 * time.Second

// New returns a source for the manifest folder dir that delivers this
// node's objects (nodeName) for this proxy (proxyName, see
// source.Selected) to sink, logging problems to log (nil: slog.Default()).
func New(dir, nodeName, proxyName string, sink proxier.Sink, log *slog.Logger) *Source {
	if log == nil {
		log = slog.Default()
	}
	return &Source{
		dir:        dir,
		nodeName:   nodeName,
		proxyName:  proxyName,
		sink:       sink,
		log:        log.With("source", "manifests", "dir", dir),
		Debounce:   DefaultDebounce,
		EmptyGrace: DefaultEmptyGrace,
		lastGood:   map[string]fileResult{},
		emptySince: map[string]time.Time{},
	}
}

// Run reads the folder, delivers its objects, calls sink.OnSynced, then
// watches the folder: after every burst of changes it re-reads all files
// and delivers only the differences (additions and semantic changes as
// upserts, vanished objects as deletions). Documents that cannot be loaded
// are skipped with a log line naming file, document and reason; a broken
// file keeps the last good version of its objects, and emptiness deletes
// only after EmptyGrace (see the package doc). Run returns nil when ctx ends, or an error if the
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
	cur, recheck, err := s.read()
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
	// graceTimer re-reads the folder when a grace period for emptiness
	// ends (see EmptyGrace).
	graceTimer := time.NewTimer(time.Hour)
	graceTimer.Stop()
	defer graceTimer.Stop()
	armGrace := func(at time.Time) {
		if !at.IsZero() {
			graceTimer.Reset(time.Until(at) + time.Millisecond)
		}
	}
	armGrace(recheck)
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
			cur = s.reread(cur, armGrace)
		case <-graceTimer.C:
			cur = s.reread(cur, armGrace)
		}
	}
}

// reread reads the folder again and delivers what changed since cur; it
// returns the new content (cur when the folder cannot be read).
func (s *Source) reread(cur objectSet, armGrace func(time.Time)) objectSet {
	next, recheck, err := s.read()
	if err != nil {
		s.log.Error("manifest folder re-read failed; keeping previous objects", "err", err)
		return cur
	}
	armGrace(recheck)
	n := deliverDiff(s.sink, cur, next)
	s.log.Info("manifests re-read", "changes", n)
	return next
}

// read reads and merges the folder, logging every problem. Files that are
// broken keep the last good version of the objects they no longer load,
// and emptiness (a file, or the whole folder, that held objects and holds
// none) keeps the previous objects for EmptyGrace; read returns when the
// folder must be read again for such a grace period to end (zero: never).
func (s *Source) read() (objectSet, time.Time, error) {
	files, err := readDir(s.dir)
	if err != nil {
		return nil, time.Time{}, err
	}
	now := time.Now()
	var recheck time.Time
	wake := func(t time.Time) {
		if recheck.IsZero() || t.Before(recheck) {
			recheck = t
		}
	}
	grace := s.EmptyGrace
	if grace <= 0 {
		grace = DefaultEmptyGrace
	}
	present := map[string]bool{}
	for i, f := range files {
		present[f.path] = true
		prev, hadPrev := s.lastGood[f.path]
		if f.docs > 0 || f.broken || !hadPrev || len(prev.entries) == 0 {
			delete(s.emptySince, f.path)
		}
		switch {
		case f.broken && hadPrev:
			kept := keepMissing(f, prev)
			if extra := kept.entries[len(f.entries):]; len(extra) > 0 {
				names := make([]string, 0, min(len(extra), 10))
				for _, e := range extra[:min(len(extra), 10)] {
					names = append(names, e.key.String())
				}
				s.log.Warn("manifest file has documents that do not load; keeping the last good version of the objects it no longer loads until it does",
					"file", f.path, "kept", len(extra), "objects", strings.Join(names, ", "))
			}
			files[i] = kept
			s.lastGood[f.path] = fileResult{path: f.path, entries: kept.entries, docs: kept.docs}
		case f.docs == 0 && !f.broken && hadPrev && len(prev.entries) > 0:
			since, ok := s.emptySince[f.path]
			if !ok {
				since = now
				s.emptySince[f.path] = now
				s.log.Warn("manifest file is empty; keeping its objects in case it is being rewritten",
					"file", f.path, "objects", len(prev.entries), "deleteAfter", grace)
			}
			if now.Sub(since) < grace {
				files[i] = prev
				wake(since.Add(grace))
				continue
			}
			s.log.Warn("manifest file stayed empty; deleting its objects", "file", f.path, "objects", len(prev.entries), "emptyFor", now.Sub(since).Round(time.Millisecond))
			delete(s.emptySince, f.path)
			s.lastGood[f.path] = fileResult{path: f.path}
		default:
			s.lastGood[f.path] = fileResult{path: f.path, entries: f.entries, docs: f.docs}
		}
	}
	// A folder that held objects and now holds no manifest file at all.
	if len(files) == 0 && lastGoodObjects(s.lastGood) > 0 {
		if s.folderEmptySince.IsZero() {
			s.folderEmptySince = now
			s.log.Warn("manifest folder is empty; keeping its objects in case its content is being replaced",
				"objects", lastGoodObjects(s.lastGood), "deleteAfter", grace)
		}
		if now.Sub(s.folderEmptySince) < grace {
			wake(s.folderEmptySince.Add(grace))
			for _, f := range s.lastGood {
				files = append(files, f)
			}
			sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
			set, _ := merge(files, s.nodeName, s.proxyName)
			return set, recheck, nil
		}
		s.log.Warn("manifest folder stayed empty; deleting every object it held",
			"objects", lastGoodObjects(s.lastGood), "emptyFor", now.Sub(s.folderEmptySince).Round(time.Millisecond))
	}
	s.folderEmptySince = time.Time{}
	for path := range s.lastGood {
		if !present[path] {
			delete(s.lastGood, path)
			delete(s.emptySince, path)
		}
	}
	set, errs := merge(files, s.nodeName, s.proxyName)
	for _, e := range errs {
		s.logProblem(e)
	}
	return set, recheck, nil
}

// keepMissing returns f with, added after its own entries, the entries of
// prev (its last good version) whose objects f no longer loads; f's
// problems are kept so they are logged.
func keepMissing(f, prev fileResult) fileResult {
	have := map[key]bool{}
	for _, e := range f.entries {
		have[e.key] = true
	}
	out := fileResult{path: f.path, errs: f.errs, docs: f.docs, broken: true}
	out.entries = append(out.entries, f.entries...)
	for _, e := range prev.entries {
		if !have[e.key] {
			out.entries = append(out.entries, e)
		}
	}
	return out
}

func lastGoodObjects(files map[string]fileResult) int {
	n := 0
	for _, f := range files {
		n += len(f.entries)
	}
	return n
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
