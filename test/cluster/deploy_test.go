package cluster_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	kubeproxyv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/switchyard-proxy/switchyard/test/cluster"
)

func loadDeploy(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	objs, err := cluster.LoadManifests(filepath.Join(cluster.RepoRoot(), "deploy"))
	if err != nil {
		t.Fatalf("load deploy/: %v", err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
	}
	for _, want := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("deploy/ has no %s (kinds: %v)", want, kinds)
		}
	}
	return objs
}

func find(objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind {
			return o
		}
	}
	return nil
}

// TestDeployConsistent checks what the API server cannot: the embedded
// KubeProxyConfiguration decodes strictly, and the DaemonSet's --config
// flag points at the ConfigMap key it mounts.
func TestDeployConsistent(t *testing.T) {
	objs := loadDeploy(t)
	cm, ds := find(objs, "ConfigMap"), find(objs, "DaemonSet")
	if cm == nil || ds == nil {
		t.Fatal("deploy/ lacks the ConfigMap or the DaemonSet")
	}
	conf, _, _ := unstructured.NestedString(cm.Object, "data", "config.conf")
	var kp kubeproxyv1alpha1.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict([]byte(conf), &kp); err != nil {
		t.Fatalf("config.conf is not a valid KubeProxyConfiguration: %v", err)
	}
	if kp.APIVersion != "kubeproxy.config.k8s.io/v1alpha1" || kp.Kind != "KubeProxyConfiguration" || kp.Mode != "iptables" {
		t.Errorf("config.conf: got %s/%s mode %q", kp.APIVersion, kp.Kind, kp.Mode)
	}

	containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	volumes, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "volumes")
	if len(containers) != 1 {
		t.Fatalf("want one container, got %d", len(containers))
	}
	ctr := containers[0].(map[string]any)
	args, _, _ := unstructured.NestedStringSlice(ctr, "args")
	if !slices.Contains(args, "--hostname-override=$(NODE_NAME)") {
		t.Errorf("args %v lack --hostname-override=$(NODE_NAME)", args)
	}
	var configPath string
	for _, a := range args {
		if p, ok := strings.CutPrefix(a, "--config="); ok {
			configPath = p
		}
	}
	mounts, _, _ := unstructured.NestedSlice(ctr, "volumeMounts")
	var resolved bool
	for _, m := range mounts {
		m := m.(map[string]any)
		if filepath.Join(m["mountPath"].(string), filepath.Base(configPath)) != configPath {
			continue
		}
		for _, v := range volumes {
			v := v.(map[string]any)
			name, _, _ := unstructured.NestedString(v, "configMap", "name")
			if v["name"] == m["name"] && name == cm.GetName() && filepath.Base(configPath) == "config.conf" {
				resolved = true
			}
		}
	}
	if !resolved {
		t.Errorf("--config=%s does not resolve to key config.conf of ConfigMap %s", configPath, cm.GetName())
	}
}

// TestDeploy applies deploy/ to a real API server: first as a server-side
// dry run (schema and admission), then for real, then checks that a token
// of the switchyard ServiceAccount can do exactly what the ClusterRole says.
func TestDeploy(t *testing.T) {
	objs := loadDeploy(t)
	c := cluster.Start(t)
	ctx := t.Context()

	t.Run("dry-run", func(t *testing.T) {
		if err := c.Apply(ctx, objs, true); err != nil {
			t.Fatalf("server-side dry run: %v", err)
		}
		_, err := c.Client.RbacV1().ClusterRoles().Get(ctx, "switchyard", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Fatalf("dry run stored the ClusterRole (err %v)", err)
		}
	})

	t.Run("dry-run rejects a misspelled field", func(t *testing.T) {
		bad := find(objs, "DaemonSet").DeepCopy()
		spec, _, _ := unstructured.NestedMap(bad.Object, "spec", "template", "spec")
		spec["hostNetwrok"] = true
		_ = unstructured.SetNestedMap(bad.Object, spec, "spec", "template", "spec")
		err := c.Apply(ctx, []*unstructured.Unstructured{bad}, true)
		if err == nil || !strings.Contains(err.Error(), "hostNetwrok") {
			t.Fatalf("want an error naming hostNetwrok, got %v", err)
		}
	})

	if err := c.Apply(ctx, objs, false); err != nil {
		t.Fatalf("apply deploy/: %v", err)
	}
	if _, err := c.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "switchyard", metav1.GetOptions{}); err != nil {
		t.Fatalf("DaemonSet not stored: %v", err)
	}

	t.Run("rbac", func(t *testing.T) { testRBAC(ctx, t, c) })
}

func testRBAC(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	token, err := c.ServiceAccountToken(ctx, "kube-system", "switchyard")
	if err != nil {
		t.Fatal(err)
	}
	sw, err := kubernetes.NewForConfig(c.ConfigForToken(token))
	if err != nil {
		t.Fatalf("clientset for switchyard: %v", err)
	}

	type access struct{ verb, group, resource string }
	allowed := []access{
		{"get", "", "services"}, {"list", "", "services"}, {"watch", "", "services"},
		{"get", "", "nodes"}, {"list", "", "nodes"}, {"watch", "", "nodes"},
		{"get", "", "pods"}, {"list", "", "pods"}, {"watch", "", "pods"},
		{"get", "discovery.k8s.io", "endpointslices"}, {"list", "discovery.k8s.io", "endpointslices"}, {"watch", "discovery.k8s.io", "endpointslices"},
		{"create", "", "events"}, {"patch", "", "events"},
		{"create", "events.k8s.io", "events"}, {"patch", "events.k8s.io", "events"},
	}
	denied := []access{
		{"list", "", "secrets"}, {"get", "", "configmaps"}, {"list", "", "endpoints"},
		{"create", "", "services"}, {"update", "", "services"}, {"delete", "", "pods"},
		{"patch", "", "nodes"}, {"update", "discovery.k8s.io", "endpointslices"},
		{"create", "", "serviceaccounts/token"}, {"delete", "", "events"},
	}
	check := func(a access, want bool) {
		r, err := sw.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: "default", Verb: a.verb, Group: a.group, Resource: a.resource,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("access review %v: %v", a, err)
		}
		if r.Status.Allowed != want {
			t.Errorf("%s %s.%s: allowed=%v, want %v (%s)", a.verb, a.resource, a.group, r.Status.Allowed, want, r.Status.Reason)
		}
	}
	for _, a := range allowed {
		check(a, true)
	}
	for _, a := range denied {
		check(a, false)
	}

	// Minimal: compared with a service account bound to nothing, the
	// switchyard account gains exactly the allowed list above.
	if _, err := c.Client.CoreV1().ServiceAccounts("kube-system").Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create control service account: %v", err)
	}
	nobodyToken, err := c.ServiceAccountToken(ctx, "kube-system", "nobody")
	if err != nil {
		t.Fatal(err)
	}
	nobody, err := kubernetes.NewForConfig(c.ConfigForToken(nobodyToken))
	if err != nil {
		t.Fatalf("clientset for nobody: %v", err)
	}
	rules := func(cs kubernetes.Interface) map[access]bool {
		r, err := cs.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx, &authorizationv1.SelfSubjectRulesReview{
			Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: "default"},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("rules review: %v", err)
		}
		set := map[access]bool{}
		for _, rule := range r.Status.ResourceRules {
			if len(rule.ResourceNames) > 0 {
				continue // e.g. selfsubjectreviews on named objects; none expected
			}
			for _, v := range rule.Verbs {
				for _, g := range rule.APIGroups {
					for _, res := range rule.Resources {
						set[access{v, g, res}] = true
					}
				}
			}
		}
		return set
	}
	base, mine := rules(nobody), rules(sw)
	var extra []string
	for a := range mine {
		if !base[a] && !slices.Contains(allowed, a) {
			extra = append(extra, fmt.Sprint(a))
		}
	}
	for _, a := range allowed {
		if !mine[a] {
			t.Errorf("rules review lacks %v", a)
		}
	}
	if len(extra) > 0 {
		t.Errorf("switchyard may do more than it needs: %v", extra)
	}

	// Real calls, as switchyard makes them.
	if _, err := sw.CoreV1().Services("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list services: %v", err)
	}
	if _, err := sw.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list endpointslices: %v", err)
	}
	if _, err := sw.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list nodes: %v", err)
	}
	if _, err := sw.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list pods: %v", err)
	}
	w, err := sw.DiscoveryV1().EndpointSlices("").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Errorf("watch endpointslices: %v", err)
	} else {
		w.Stop()
	}
	if _, err := sw.CoreV1().Events("default").Create(ctx, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "swy-"},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "node-1"},
		Reason:         "Starting", Message: "test", Type: corev1.EventTypeNormal,
	}, metav1.CreateOptions{}); err != nil {
		t.Errorf("create core event: %v", err)
	}
	if _, err := sw.EventsV1().Events("default").Create(ctx, &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "swy-"},
		EventTime:  metav1.NowMicro(), Action: "Sync", Reason: "Starting", Type: corev1.EventTypeNormal,
		ReportingController: "switchyard", ReportingInstance: "switchyard-node-1",
		Regarding: corev1.ObjectReference{Kind: "Node", Name: "node-1"},
	}, metav1.CreateOptions{}); err != nil {
		t.Errorf("create events.k8s.io event: %v", err)
	}
	if _, err := sw.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets: want Forbidden, got %v", err)
	}
	if _, err := sw.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "nope"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("create service: want Forbidden, got %v", err)
	}
}
