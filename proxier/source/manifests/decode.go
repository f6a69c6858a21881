package manifests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"sigs.k8s.io/yaml"

	"github.com/switchyard-proxy/switchyard/proxier/source"
)

// DocError is a problem with one document of a manifest file. When Skipped
// is true the document was not loaded; otherwise it is a warning (an unknown
// field, a duplicate definition) and the object was loaded.
type DocError struct {
	// File is the path of the file.
	File string
	// Doc is the 1-based index of the document in the file (documents are
	// separated by "---" lines; empty ones are not counted), 0 when the
	// problem concerns the whole file.
	Doc int
	// Line is the 1-based line the document starts on, 0 for the whole file.
	Line int
	// Item is the 1-based index of the item inside a List document, or 0.
	Item int
	// Skipped is true when the document (or list item) was not loaded.
	Skipped bool
	// Err is the reason.
	Err error
}

// Where returns "file: document N (line L), item I", naming the place.
func (e *DocError) Where() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Doc > 0 {
		fmt.Fprintf(&b, ": document %d (line %d)", e.Doc, e.Line)
	}
	if e.Item > 0 {
		fmt.Fprintf(&b, ", list item %d", e.Item)
	}
	return b.String()
}

// Error returns the place, "skipped" for skipped documents, and the reason.
func (e *DocError) Error() string {
	if e.Skipped {
		return e.Where() + ": skipped: " + e.Err.Error()
	}
	return e.Where() + ": " + e.Err.Error()
}

// Unwrap returns the reason.
func (e *DocError) Unwrap() error { return e.Err }

// kind names the object kinds the source delivers.
type kind string

const (
	kindService       kind = "Service"
	kindEndpointSlice kind = "EndpointSlice"
	kindNode          kind = "Node"
	kindPod           kind = "Pod"
)

// key identifies one object.
type key struct {
	Kind      kind
	Namespace string
	Name      string
}

func (k key) String() string {
	if k.Namespace == "" {
		return string(k.Kind) + " " + k.Name
	}
	return string(k.Kind) + " " + k.Namespace + "/" + k.Name
}

// entry is one decoded object and where it came from.
type entry struct {
	key key
	obj runtime.Object
	loc *DocError // File, Doc, Line, Item filled; Err nil
}

// ErrUnsupportedKind is wrapped by the reason of a document skipped
// because it holds a kind switchyard does not read (a Deployment next to
// its Service, say). Such a document is expected, not a broken one.
var ErrUnsupportedKind = errors.New("unsupported kind")

// fileResult is everything read from one file.
type fileResult struct {
	path    string
	entries []entry
	errs    []error
	// docs counts the file's non-empty documents; 0 for an empty file.
	docs int
	// broken is true when some document was skipped for a reason other
	// than ErrUnsupportedKind (invalid YAML, a decode error, an invalid
	// object) or the file could not be read: what a half-written file or a
	// bad edit looks like.
	broken bool
}

var (
	scheme  = runtime.NewScheme()
	decoder *kjson.Serializer

	gvService           = corev1.SchemeGroupVersion.WithKind("Service")
	gvNode              = corev1.SchemeGroupVersion.WithKind("Node")
	gvPod               = corev1.SchemeGroupVersion.WithKind("Pod")
	gvList              = corev1.SchemeGroupVersion.WithKind("List")
	gvServiceList       = corev1.SchemeGroupVersion.WithKind("ServiceList")
	gvNodeList          = corev1.SchemeGroupVersion.WithKind("NodeList")
	gvPodList           = corev1.SchemeGroupVersion.WithKind("PodList")
	gvEndpointSlice     = discoveryv1.SchemeGroupVersion.WithKind("EndpointSlice")
	gvEndpointSliceList = discoveryv1.SchemeGroupVersion.WithKind("EndpointSliceList")
)

func init() {
	if err := corev1.AddToScheme(scheme); err != nil {
		panic(fmt.Sprintf("register core/v1: %v", err))
	}
	if err := discoveryv1.AddToScheme(scheme); err != nil {
		panic(fmt.Sprintf("register discovery/v1: %v", err))
	}
	decoder = kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
		kjson.SerializerOptions{Strict: true})
}

// document is one "---"-separated section of a file.
type document struct {
	index int // 1-based, counting non-empty documents
	line  int // 1-based first line
	data  []byte
}

// splitDocuments splits a YAML stream at lines that start with "---".
// Sections holding only blanks and comments are dropped.
func splitDocuments(data []byte) []document {
	var docs []document
	var cur bytes.Buffer
	start, lineNo := 1, 0
	flush := func() {
		if !blank(cur.Bytes()) {
			docs = append(docs, document{index: len(docs) + 1, line: start, data: bytes.Clone(cur.Bytes())})
		}
		cur.Reset()
	}
	for len(data) > 0 {
		lineNo++
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i+1], data[i+1:]
		} else {
			data = nil
		}
		if isSeparator(line) {
			flush()
			start = lineNo + 1
			continue
		}
		cur.Write(line)
	}
	flush()
	return docs
}

func isSeparator(line []byte) bool {
	line = bytes.TrimRight(line, " \t\r\n")
	return bytes.Equal(line, []byte("---")) || bytes.HasPrefix(line, []byte("--- ")) || bytes.HasPrefix(line, []byte("---\t"))
}

// blank reports whether a YAML section holds nothing but whitespace and comments.
func blank(data []byte) bool {
	for _, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' {
			return false
		}
	}
	return true
}

// parseFile decodes every document of one file.
func parseFile(path string, data []byte) fileResult {
	res := fileResult{path: path}
	docs := splitDocuments(data)
	res.docs = len(docs)
	for _, doc := range docs {
		loc := DocError{File: path, Doc: doc.index, Line: doc.line}
		js, err := yaml.YAMLToJSONStrict(doc.data)
		if err != nil {
			if js2, err2 := yaml.YAMLToJSON(doc.data); err2 == nil {
				// Valid YAML with a duplicate key: the last one wins,
				// as kubectl would decode it.
				res.warn(loc, fmt.Errorf("duplicate key: %w", err))
				js = js2
			} else {
				res.skip(loc, fmt.Errorf("invalid YAML: %w", err))
				continue
			}
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			continue
		}
		res.decode(loc, js, true)
	}
	return res
}

func (r *fileResult) skip(loc DocError, err error) {
	if !errors.Is(err, ErrUnsupportedKind) {
		r.broken = true
	}
	loc.Skipped, loc.Err = true, err
	r.errs = append(r.errs, &loc)
}

func (r *fileResult) warn(loc DocError, err error) {
	loc.Err = err
	r.errs = append(r.errs, &loc)
}

// header is the part of a document read before choosing its Go type.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// decode decodes one JSON document (or list item) and appends what it
// holds; allowList is false inside a list.
func (r *fileResult) decode(loc DocError, js []byte, allowList bool) {
	var h header
	if err := json.Unmarshal(js, &h); err != nil {
		r.skip(loc, fmt.Errorf("not an object: %w", err))
		return
	}
	if h.Kind == "" || h.APIVersion == "" {
		r.skip(loc, errors.New("missing apiVersion or kind"))
		return
	}
	gv, err := schema.ParseGroupVersion(h.APIVersion)
	if err != nil {
		r.skip(loc, fmt.Errorf("bad apiVersion %q: %w", h.APIVersion, err))
		return
	}
	gvk := gv.WithKind(h.Kind)
	switch gvk {
	case gvService, gvNode, gvPod, gvEndpointSlice:
	case gvList, gvServiceList, gvNodeList, gvPodList, gvEndpointSliceList:
		if !allowList {
			r.skip(loc, fmt.Errorf("a %s inside a list is not supported", h.Kind))
			return
		}
	default:
		r.skip(loc, fmt.Errorf("%w %q, apiVersion %q (want v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Node, v1 Pod or a v1 List of them)", ErrUnsupportedKind, h.Kind, h.APIVersion))
		return
	}
	obj, _, err := decoder.Decode(js, &gvk, nil)
	if err != nil {
		if obj == nil || !runtime.IsStrictDecodingError(err) {
			r.skip(loc, fmt.Errorf("decode %s: %w", h.Kind, err))
			return
		}
		// Unknown or duplicate fields: load the object, say what was ignored.
		r.warn(loc, fmt.Errorf("%s: %w (ignored)", h.Kind, err))
	}
	switch o := obj.(type) {
	case *corev1.List:
		for i, item := range o.Items {
			itemLoc := loc
			itemLoc.Item = i + 1
			if len(item.Raw) == 0 {
				r.skip(itemLoc, errors.New("empty list item"))
				continue
			}
			r.decode(itemLoc, item.Raw, false)
		}
	case *corev1.ServiceList:
		for i := range o.Items {
			r.add(itemLoc(loc, i), &o.Items[i])
		}
	case *corev1.NodeList:
		for i := range o.Items {
			r.add(itemLoc(loc, i), &o.Items[i])
		}
	case *corev1.PodList:
		for i := range o.Items {
			r.add(itemLoc(loc, i), &o.Items[i])
		}
	case *discoveryv1.EndpointSliceList:
		for i := range o.Items {
			r.add(itemLoc(loc, i), &o.Items[i])
		}
	default:
		r.add(loc, obj)
	}
}

func itemLoc(loc DocError, i int) DocError {
	loc.Item = i + 1
	return loc
}

// add defaults an object as the API server would (its namespace and the
// fields source.Default* fill), validates it as the API server would (see
// source.Validate: names, namespace, port names, annotations) and appends
// it, or skips it with the reason.
func (r *fileResult) add(loc DocError, obj runtime.Object) {
	var k kind
	var meta *metav1.ObjectMeta
	switch o := obj.(type) {
	case *corev1.Service:
		k, meta = kindService, &o.ObjectMeta
		source.DefaultService(o)
	case *discoveryv1.EndpointSlice:
		k, meta = kindEndpointSlice, &o.ObjectMeta
		source.DefaultEndpointSlice(o)
	case *corev1.Node:
		k, meta = kindNode, &o.ObjectMeta
	case *corev1.Pod:
		k, meta = kindPod, &o.ObjectMeta
		source.DefaultPod(o)
	default:
		r.skip(loc, fmt.Errorf("unexpected object type %T", obj))
		return
	}
	if meta.Name == "" {
		r.skip(loc, fmt.Errorf("%s without metadata.name", k))
		return
	}
	if k == kindNode {
		meta.Namespace = ""
	} else if meta.Namespace == "" {
		meta.Namespace = metav1.NamespaceDefault
	}
	if err := source.Validate(obj); err != nil {
		r.skip(loc, fmt.Errorf("%s %s/%s: %w", k, meta.Namespace, meta.Name, err))
		return
	}
	// Objects from informers carry no type meta; match them.
	obj.GetObjectKind().SetGroupVersionKind(schema.GroupVersionKind{})
	l := loc
	r.entries = append(r.entries, entry{key: key{Kind: k, Namespace: meta.Namespace, Name: meta.Name}, obj: obj, loc: &l})
}
