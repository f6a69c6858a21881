// Package manifests is switchyard's standalone object source: a folder of
// YAML files holding v1 Services, discovery.k8s.io/v1 EndpointSlices, v1
// Nodes and v1 Pods (also inside v1 Lists), read once and re-read whenever
// the folder changes. It delivers to a proxier.Sink exactly what the
// informer source would: this node's Node, the Pods scheduled on it, and
// the Services and EndpointSlices this proxy is responsible for, with the
// API server's defaults applied.
//
// # Validation
//
// Every object is validated as the API server would at creation (see
// source.Validate): namespace a DNS-1123 label; Service name a DNS-1035
// label; EndpointSlice, Pod and Node names DNS-1123 subdomains; Service and
// EndpointSlice port names DNS-1123 labels (unique; required on a Service
// with several ports), container port names IANA service names; protocols
// TCP, UDP or SCTP; label and annotation keys, values and total size. An
// invalid object is skipped with a WARN naming the file, the document and
// the reason; every other object keeps loading. Documents of other kinds
// (a Deployment next to its Service) are skipped too, without consequence.
//
// # Bad input loses nothing
//
// A file that is "broken" (a document that is not valid YAML, cannot be
// decoded or is invalid; an unreadable file), as a half-written file or a
// bad edit is, keeps the last good version of every object it no longer
// loads, with a WARN naming the file, until it loads again; its valid
// documents still apply. Like the API server rejecting an update, an
// invalid edit leaves the previous object in place.
//
// Emptiness is what a non-atomic rewrite (`>` truncates first) or a
// replaced folder passes through, so it deletes only once it lasts: a
// file that held objects and has no document left, or a folder whose
// manifest files are all gone, keeps its objects for Source.EmptyGrace
// (5 s by default) with a WARN, then they are deleted with another WARN.
// An operator who empties a file or the folder gets the deletions they
// asked for, 5 s late; removing one file of several deletes its objects
// at once. Last good versions live in memory: a restart reads the folder
// as it is. Writing a file elsewhere and renaming it into the folder
// (atomic) avoids all of this.
package manifests

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/source"
)

// ErrFolder wraps the error returned when the manifest folder itself cannot
// be read; nothing was loaded.
var ErrFolder = errors.New("cannot read manifest folder")

// Objects is what a manifest folder holds for one node, each slice sorted
// by namespace and name.
type Objects struct {
	// Services are the services this proxy is responsible for.
	Services []*corev1.Service
	// EndpointSlices are the slices this proxy is responsible for.
	EndpointSlices []*discoveryv1.EndpointSlice
	// Nodes holds this node's Node, if the folder defines it.
	Nodes []*corev1.Node
	// Pods are the pods whose spec.nodeName is this node.
	Pods []*corev1.Pod
}

// Deliver sends every object to sink as an addition, Nodes first, then
// calls sink.OnSynced.
func (o Objects) Deliver(sink proxier.Sink) {
	for _, n := range o.Nodes {
		sink.OnNode(n, false)
	}
	for _, s := range o.Services {
		sink.OnService(s, false)
	}
	for _, s := range o.EndpointSlices {
		sink.OnEndpointSlice(s, false)
	}
	for _, p := range o.Pods {
		sink.OnPod(p, false)
	}
	sink.OnSynced()
}

// Load reads every *.yaml and *.yml file at the top level of dir (names
// starting with "." are ignored) and returns the objects for nodeName and
// proxyName (see source.Selected). The errors name the file, document and
// reason of every document that was skipped (a *DocError with Skipped set)
// or loaded with a warning (unknown fields, a duplicate definition: the
// later file in lexical order, or the later document, wins). If the folder
// itself cannot be read the only error wraps ErrFolder.
func Load(dir, nodeName, proxyName string) (Objects, []error) {
	files, err := readDir(dir)
	if err != nil {
		return Objects{}, []error{err}
	}
	set, errs := merge(files, nodeName, proxyName)
	return set.objects(), errs
}

// readDir parses every manifest file of dir, in lexical order.
func readDir(dir string) ([]fileResult, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrFolder, dir, err)
	}
	var files []fileResult
	for _, ent := range ents { // os.ReadDir sorts by name
		name := ent.Name()
		if !isManifestName(name) {
			continue
		}
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path) // follows symlinks (ConfigMap volumes)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // removed while listing, or a dangling link
			}
			files = append(files, fileError(path, err))
			continue
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			files = append(files, fileError(path, err))
			continue
		}
		files = append(files, parseFile(path, data))
	}
	return files, nil
}

func isManifestName(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".yaml" || ext == ".yml"
}

func fileError(path string, err error) fileResult {
	return fileResult{
		path:   path,
		errs:   []error{&DocError{File: path, Skipped: true, Err: fmt.Errorf("read: %w", err)}},
		broken: true,
	}
}

// objectSet is the merged content of a folder, by identity.
type objectSet map[key]runtime.Object

// merge combines the files' entries (later wins, with a warning) and keeps
// only the objects for this node and proxy.
func merge(files []fileResult, nodeName, proxyName string) (objectSet, []error) {
	var errs []error
	seen := map[key]*DocError{}
	set := objectSet{}
	for _, f := range files {
		errs = append(errs, f.errs...)
		for _, e := range f.entries {
			if prev, ok := seen[e.key]; ok {
				w := *e.loc
				w.Err = fmt.Errorf("%s is also defined in %s; this later definition wins", e.key, prev.Where())
				errs = append(errs, &w)
			}
			seen[e.key] = e.loc
			set[e.key] = e.obj
		}
	}
	for k, obj := range set {
		if !wanted(obj, nodeName, proxyName) {
			delete(set, k)
		}
	}
	return set, errs
}

// wanted reports whether this node and proxy deliver obj.
func wanted(obj runtime.Object, nodeName, proxyName string) bool {
	switch o := obj.(type) {
	case *corev1.Service:
		return source.ServiceSelected(o, proxyName)
	case *discoveryv1.EndpointSlice:
		return source.EndpointSliceSelected(o, proxyName)
	case *corev1.Node:
		return nodeName != "" && o.Name == nodeName
	case *corev1.Pod:
		return nodeName != "" && o.Spec.NodeName == nodeName
	}
	return false
}

// kindRank orders kinds for delivery: the node first, then services, their
// slices, and pods.
var kindRank = map[kind]int{kindNode: 0, kindService: 1, kindEndpointSlice: 2, kindPod: 3}

// sortedKeys returns the set's keys ordered by kind (see kindRank),
// namespace, name.
func (s objectSet) sortedKeys() []key {
	keys := make([]key, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.Kind != b.Kind {
			return kindRank[a.Kind] < kindRank[b.Kind]
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	return keys
}

func (s objectSet) objects() Objects {
	var o Objects
	for _, k := range s.sortedKeys() {
		switch obj := s[k].(type) {
		case *corev1.Service:
			o.Services = append(o.Services, obj)
		case *discoveryv1.EndpointSlice:
			o.EndpointSlices = append(o.EndpointSlices, obj)
		case *corev1.Node:
			o.Nodes = append(o.Nodes, obj)
		case *corev1.Pod:
			o.Pods = append(o.Pods, obj)
		}
	}
	return o
}
