package manifests

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func svcYAML(name string, port int, labels string) string {
	s := "apiVersion: v1\nkind: Service\nmetadata:\n  name: " + name + "\n  namespace: ns\n"
	if labels != "" {
		s += "  labels:\n    " + labels + "\n"
	}
	s += "spec:\n  clusterIP: 10.0.0.1\n  ports:\n  - port: " + strconv.Itoa(port) + "\n"
	return s
}

func names(o Objects) []string {
	var out []string
	for _, n := range o.Nodes {
		out = append(out, "Node "+n.Name)
	}
	for _, s := range o.Services {
		out = append(out, "Service "+s.Namespace+"/"+s.Name)
	}
	for _, s := range o.EndpointSlices {
		out = append(out, "EndpointSlice "+s.Namespace+"/"+s.Name)
	}
	for _, p := range o.Pods {
		out = append(out, "Pod "+p.Namespace+"/"+p.Name)
	}
	return out
}

func mustLoad(t *testing.T, dir, node, proxy string) Objects {
	t.Helper()
	objs, errs := Load(dir, node, proxy)
	for _, err := range errs {
		t.Errorf("unexpected problem: %v", err)
	}
	return objs
}

func TestLoadMultiDocumentAndLists(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", `---
# leading separator and a comment-only document
---
`+svcYAML("one", 80, "")+`---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: one-abc
  namespace: ns
  labels:
    kubernetes.io/service-name: one
addressType: IPv4
endpoints:
- addresses: ["10.1.0.1"]
ports:
- port: 8080
...
`)
	writeFile(t, dir, "b.yml", `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: two}
  spec: {ports: [{port: 53, protocol: UDP}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: p1, namespace: ns}
  spec: {nodeName: node1, containers: [{name: c, ports: [{containerPort: 80, hostPort: 8080}]}]}
`)
	writeFile(t, dir, "c.YAML", `apiVersion: v1
kind: ServiceList
items:
- metadata: {name: three, namespace: ns}
  spec: {ports: [{port: 443}]}
`)
	writeFile(t, dir, "nodes.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\n")
	// Not loaded: other extensions, hidden files, sub-folders.
	writeFile(t, dir, "notes.txt", "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\n")
	writeFile(t, dir, ".hidden.yaml", svcYAML("hidden", 1, ""))
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "sub"), "x.yaml", svcYAML("nested", 1, ""))

	objs := mustLoad(t, dir, "node1", "")
	want := []string{"Node node1", "Service default/two", "Service ns/one", "Service ns/three",
		"EndpointSlice ns/one-abc", "Pod ns/p1"}
	if got := names(objs); !reflect.DeepEqual(got, want) {
		t.Fatalf("loaded %v, want %v", got, want)
	}

	// API server defaults are applied; type meta is cleared like informers'.
	one := objs.Services[1]
	if one.Spec.Ports[0].Protocol != corev1.ProtocolTCP || one.Spec.Ports[0].TargetPort != intstr.FromInt32(80) {
		t.Errorf("service port not defaulted: %+v", one.Spec.Ports[0])
	}
	if !reflect.DeepEqual(one.Spec.ClusterIPs, []string{"10.0.0.1"}) || !reflect.DeepEqual(one.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) {
		t.Errorf("clusterIPs/ipFamilies not derived: %v %v", one.Spec.ClusterIPs, one.Spec.IPFamilies)
	}
	if one.Spec.Type != corev1.ServiceTypeClusterIP || one.Spec.SessionAffinity != corev1.ServiceAffinityNone {
		t.Errorf("type/affinity not defaulted: %q %q", one.Spec.Type, one.Spec.SessionAffinity)
	}
	if one.Kind != "" || one.APIVersion != "" {
		t.Errorf("type meta kept: %v", one.TypeMeta)
	}
	if objs.Services[0].Spec.Ports[0].Protocol != corev1.ProtocolUDP {
		t.Errorf("explicit protocol overwritten")
	}
	sp := objs.EndpointSlices[0].Ports[0]
	if sp.Protocol == nil || *sp.Protocol != corev1.ProtocolTCP || sp.Name == nil || *sp.Name != "" {
		t.Errorf("slice port not defaulted: %+v", sp)
	}
	if p := objs.Pods[0].Spec.Containers[0].Ports[0]; p.Protocol != corev1.ProtocolTCP || p.HostPort != 8080 {
		t.Errorf("pod port: %+v", p)
	}
}

func TestLoadSkipsBadDocuments(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "bad.yaml", svcYAML("good1", 80, "")+`---
apiVersion: v1
kind: Service
metadata: {name: broken
spec: [
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: v1
kind: Service
metadata: {namespace: ns}
---
metadata: {name: nokind}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cm}
- apiVersion: v1
  kind: Service
  metadata: {name: good2, namespace: ns}
---
apiVersion: v1
kind: Service
metadata: {name: typo, namespace: ns}
spec: {portz: 1}
---
apiVersion: v1
kind: Service
metadata: {name: wrongtype, namespace: ns}
spec: {ports: "eighty"}
`)
	objs, errs := Load(dir, "n", "")
	if got, want := names(objs), []string{"Service ns/good1", "Service ns/good2", "Service ns/typo"}; !reflect.DeepEqual(got, want) {
		t.Errorf("loaded %v, want %v", got, want)
	}
	path := filepath.Join(dir, "bad.yaml")
	want := []struct {
		doc, line, item int
		skipped         bool
		reason          string
	}{
		{2, 11, 0, true, "invalid YAML"},
		{3, 16, 0, true, `unsupported kind "Deployment", apiVersion "apps/v1"`},
		{4, 20, 0, true, "Service without metadata.name"},
		{5, 24, 0, true, "missing apiVersion or kind"},
		{6, 26, 1, true, `unsupported kind "ConfigMap"`},
		{7, 36, 0, false, `unknown field "spec.portz"`},
		{8, 41, 0, true, "decode Service"},
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d problems, want %d: %v", len(errs), len(want), errs)
	}
	for i, w := range want {
		var de *DocError
		if !errors.As(errs[i], &de) {
			t.Fatalf("problem %d is %T, not *DocError: %v", i, errs[i], errs[i])
		}
		if de.File != path || de.Doc != w.doc || de.Line != w.line || de.Item != w.item || de.Skipped != w.skipped {
			t.Errorf("problem %d = %+v, want doc %d line %d item %d skipped %v", i, de, w.doc, w.line, w.item, w.skipped)
		}
		msg := errs[i].Error()
		if !strings.Contains(msg, w.reason) || !strings.HasPrefix(msg, path+": document ") {
			t.Errorf("problem %d message %q does not name file, document and %q", i, msg, w.reason)
		}
	}
}

func TestLoadNodeAndPodFiltering(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "n.yaml", `apiVersion: v1
kind: Node
metadata: {name: node1}
---
apiVersion: v1
kind: Node
metadata: {name: node2}
---
apiVersion: v1
kind: Pod
metadata: {name: here, namespace: ns}
spec: {nodeName: node1}
---
apiVersion: v1
kind: Pod
metadata: {name: there, namespace: ns}
spec: {nodeName: node2}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: ns}
`)
	for _, tc := range []struct {
		node string
		want []string
	}{
		{"node1", []string{"Node node1", "Pod ns/here"}},
		{"node2", []string{"Node node2", "Pod ns/there"}},
		{"node3", nil},
		{"", nil},
	} {
		if got := names(mustLoad(t, dir, tc.node, "")); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("node %q: got %v, want %v", tc.node, got, tc.want)
		}
	}
}

func TestLoadProxyNameFiltering(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "s.yaml", svcYAML("plain", 80, "")+"---\n"+
		svcYAML("ours", 80, "service.kubernetes.io/service-proxy-name: switchyard")+"---\n"+
		svcYAML("theirs", 80, "service.kubernetes.io/service-proxy-name: other")+"---\n"+
		svcYAML("emptyname", 80, `service.kubernetes.io/service-proxy-name: ""`)+`---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: headless-abc
  namespace: ns
  labels: {service.kubernetes.io/headless: ""}
addressType: IPv4
endpoints: []
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: theirs-abc
  namespace: ns
  labels: {service.kubernetes.io/service-proxy-name: other}
addressType: IPv4
endpoints: []
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: plain-abc, namespace: ns}
addressType: IPv4
endpoints: []
`)
	for _, tc := range []struct {
		proxy string
		want  []string
	}{
		{"", []string{"Service ns/plain", "EndpointSlice ns/plain-abc"}},
		{"switchyard", []string{"Service ns/ours", "Service ns/plain", "EndpointSlice ns/plain-abc"}},
		{"other", []string{"Service ns/plain", "Service ns/theirs", "EndpointSlice ns/plain-abc", "EndpointSlice ns/theirs-abc"}},
	} {
		if got := names(mustLoad(t, dir, "n", tc.proxy)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("proxy %q: got %v, want %v", tc.proxy, got, tc.want)
		}
	}
}

func TestLoadDuplicatesLaterFileWins(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", svcYAML("web", 80, ""))
	writeFile(t, dir, "b.yaml", svcYAML("web", 81, "")+"---\n"+svcYAML("web", 82, ""))
	objs, errs := Load(dir, "n", "")
	if len(objs.Services) != 1 || objs.Services[0].Spec.Ports[0].Port != 82 {
		t.Fatalf("want one service web with port 82 (last definition), got %+v", objs.Services)
	}
	if len(errs) != 2 {
		t.Fatalf("want 2 duplicate warnings, got %v", errs)
	}
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	wantMsgs := []string{
		b + ": document 1 (line 1): Service ns/web is also defined in " + a + ": document 1 (line 1); this later definition wins",
		b + ": document 2 (line 11): Service ns/web is also defined in " + b + ": document 1 (line 1); this later definition wins",
	}
	for i, w := range wantMsgs {
		if errs[i].Error() != w {
			t.Errorf("warning %d = %q, want %q", i, errs[i], w)
		}
		var de *DocError
		if !errors.As(errs[i], &de) || de.Skipped {
			t.Errorf("warning %d should be a non-skipping *DocError", i)
		}
	}
}

func TestLoadMissingFolder(t *testing.T) {
	objs, errs := Load(filepath.Join(t.TempDir(), "nope"), "n", "")
	if len(errs) != 1 || !errors.Is(errs[0], ErrFolder) || !errors.Is(errs[0], os.ErrNotExist) {
		t.Fatalf("want one ErrFolder/ErrNotExist error, got %v", errs)
	}
	if len(names(objs)) != 0 {
		t.Fatalf("loaded objects from a missing folder: %v", names(objs))
	}
}

// Objects the API server would reject are skipped one by one, with the
// file, document and reason; the others load.
func TestLoadValidatesNames(t *testing.T) {
	dir := t.TempDir()
	hostilePort := strings.Replace(svcYAML("evil", 80, ""), "  - port:", "  - name: \"x\\\"\\n-A INPUT -j ACCEPT\"\n    port:", 1)
	writeFile(t, dir, "a.yaml", svcYAML("web", 80, "")+"---\n"+hostilePort+"---\n"+svcYAML("Bad_Name", 80, "")+`---
apiVersion: v1
kind: Service
metadata: {name: web2, namespace: "ns\"x"}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: ns}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]
ports: [{name: "\"", port: 8080}]
---
apiVersion: v1
kind: Node
metadata: {name: "n 1"}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: ns}
spec: {nodeName: "n", containers: [{name: c, ports: [{name: "a\\b", containerPort: 80, hostPort: 80}]}]}
`)
	objs, errs := Load(dir, "n", "")
	if got, want := names(objs), []string{"Service ns/web"}; !reflect.DeepEqual(got, want) {
		t.Errorf("loaded %v, want %v", got, want)
	}
	want := []struct {
		doc    int
		reason string
	}{
		{2, "spec.ports[0].name"},
		{3, "metadata.name"},
		{4, "metadata.namespace"},
		{5, "ports[0].name"},
		{6, "metadata.name"},
		{7, "spec.containers[0].ports[0].name"},
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d problems, want %d: %v", len(errs), len(want), errs)
	}
	for i, w := range want {
		var de *DocError
		if !errors.As(errs[i], &de) || !de.Skipped || de.Doc != w.doc || !strings.Contains(de.Error(), w.reason) {
			t.Errorf("problem %d = %v, want document %d skipped for %s", i, errs[i], w.doc, w.reason)
		}
		if strings.Contains(errs[i].Error(), "\n") {
			t.Errorf("problem %d holds a raw newline: %q", i, errs[i])
		}
	}
}
