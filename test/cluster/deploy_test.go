package cluster_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	kubeproxyv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/switchyard-proxy/switchyard/test/cluster"
)

// deploySet is one folder of deploy/ and the names its objects use.
type deploySet struct {
	dir                                  string // under deploy/, "" for deploy/ itself
	daemonSet, serviceAccount, configMap string
	binding, container, configDir        string
	podLabels                            map[string]string
}

var deploySets = []deploySet{
	{dir: "", daemonSet: "switchyard", serviceAccount: "switchyard", configMap: "switchyard",
		binding: "switchyard", container: "switchyard", configDir: "/var/lib/switchyard",
		podLabels: map[string]string{"app.kubernetes.io/name": "switchyard"}},
	// kube-proxy's names (kubeadm's), so dashboards and alerts keep working.
	{dir: "kube-proxy-names", daemonSet: "kube-proxy", serviceAccount: "kube-proxy", configMap: "kube-proxy",
		binding: "switchyard-kube-proxy", container: "kube-proxy", configDir: "/var/lib/kube-proxy",
		podLabels: map[string]string{"k8s-app": "kube-proxy"}},
}

func loadDeploy(t *testing.T, set deploySet) []*unstructured.Unstructured {
	t.Helper()
	objs, err := cluster.LoadManifests(filepath.Join(cluster.RepoRoot(), "deploy", set.dir))
	if err != nil {
		t.Fatalf("load deploy/%s: %v", set.dir, err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
	}
	for _, want := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("deploy/%s has no %s (kinds: %v)", set.dir, want, kinds)
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

// TestDeployConsistent checks what the API server cannot, for deploy/ and
// deploy/kube-proxy-names/: the names and labels each promises, the
// embedded KubeProxyConfiguration decodes strictly, the --config flag and
// the config's kubeconfig point at keys of the ConfigMap the DaemonSet
// mounts, and the kubeconfig reaches the API server by its own address
// with the ServiceAccount's token (never the in-cluster service IP).
func TestDeployConsistent(t *testing.T) {
	var roles [][]any
	for _, set := range deploySets {
		t.Run("deploy/"+set.dir, func(t *testing.T) {
			objs := loadDeploy(t, set)
			role, _, _ := unstructured.NestedSlice(find(objs, "ClusterRole").Object, "rules")
			roles = append(roles, role)
			testDeployConsistent(t, set, objs)
		})
	}
	if len(roles) == 2 && !reflect.DeepEqual(roles[0], roles[1]) {
		t.Errorf("the ClusterRole switchyard differs between deploy/ and deploy/kube-proxy-names/:\n%v\n%v", roles[0], roles[1])
	}
}

func testDeployConsistent(t *testing.T, set deploySet, objs []*unstructured.Unstructured) {
	cm, ds, sa, crb := find(objs, "ConfigMap"), find(objs, "DaemonSet"), find(objs, "ServiceAccount"), find(objs, "ClusterRoleBinding")
	if cm == nil || ds == nil || sa == nil || crb == nil {
		t.Fatal("missing objects")
	}
	if ds.GetName() != set.daemonSet || ds.GetNamespace() != "kube-system" || cm.GetName() != set.configMap ||
		sa.GetName() != set.serviceAccount || crb.GetName() != set.binding {
		t.Errorf("names: DaemonSet %s/%s, ConfigMap %s, ServiceAccount %s, ClusterRoleBinding %s; want %+v",
			ds.GetNamespace(), ds.GetName(), cm.GetName(), sa.GetName(), crb.GetName(), set)
	}
	selector, _, _ := unstructured.NestedStringMap(ds.Object, "spec", "selector", "matchLabels")
	podLabels, _, _ := unstructured.NestedStringMap(ds.Object, "spec", "template", "metadata", "labels")
	if !reflect.DeepEqual(selector, set.podLabels) {
		t.Errorf("DaemonSet selector %v, want exactly %v", selector, set.podLabels)
	}
	for k, v := range set.podLabels {
		if ds.GetLabels()[k] != v || podLabels[k] != v {
			t.Errorf("label %s=%s missing on the DaemonSet (%v) or its pods (%v)", k, v, ds.GetLabels(), podLabels)
		}
	}
	saName, _, _ := unstructured.NestedString(ds.Object, "spec", "template", "spec", "serviceAccountName")
	subjects, _, _ := unstructured.NestedSlice(crb.Object, "subjects")
	if saName != set.serviceAccount || len(subjects) != 1 || subjects[0].(map[string]any)["name"] != set.serviceAccount {
		t.Errorf("the DaemonSet runs as %q and the binding names %v; want %s", saName, subjects, set.serviceAccount)
	}

	conf, _, _ := unstructured.NestedString(cm.Object, "data", "config.conf")
	var kp kubeproxyv1alpha1.KubeProxyConfiguration
	if err := yaml.UnmarshalStrict([]byte(conf), &kp); err != nil {
		t.Fatalf("config.conf is not a valid KubeProxyConfiguration: %v", err)
	}
	if kp.APIVersion != "kubeproxy.config.k8s.io/v1alpha1" || kp.Kind != "KubeProxyConfiguration" || kp.Mode != "iptables" {
		t.Errorf("config.conf: got %s/%s mode %q", kp.APIVersion, kp.Kind, kp.Mode)
	}
	if kp.ClientConnection.Kubeconfig != set.configDir+"/kubeconfig.conf" {
		t.Errorf("clientConnection.kubeconfig %q, want %s/kubeconfig.conf (the in-cluster config needs switchyard's own rules)",
			kp.ClientConnection.Kubeconfig, set.configDir)
	}
	kc, _, _ := unstructured.NestedString(cm.Object, "data", "kubeconfig.conf")
	loaded, err := clientcmd.Load([]byte(kc))
	if err != nil {
		t.Fatalf("kubeconfig.conf: %v", err)
	}
	ctx := loaded.Contexts[loaded.CurrentContext]
	if ctx == nil || loaded.Clusters[ctx.Cluster] == nil || loaded.AuthInfos[ctx.AuthInfo] == nil {
		t.Fatalf("kubeconfig.conf has no complete current context: %+v", loaded)
	}
	cl, user := loaded.Clusters[ctx.Cluster], loaded.AuthInfos[ctx.AuthInfo]
	if cl.Server != "https://CONTROL-PLANE-ENDPOINT:6443" || cl.CertificateAuthority != saDir+"/ca.crt" || user.TokenFile != saDir+"/token" {
		t.Errorf("kubeconfig.conf: server %q (want the documented placeholder), CA %q, token file %q",
			cl.Server, cl.CertificateAuthority, user.TokenFile)
	}

	containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	volumes, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "volumes")
	if len(containers) != 1 {
		t.Fatalf("want one container, got %d", len(containers))
	}
	ctr := containers[0].(map[string]any)
	if ctr["name"] != set.container {
		t.Errorf("container %v, want %s", ctr["name"], set.container)
	}
	command, _, _ := unstructured.NestedStringSlice(ctr, "command")
	args, _, _ := unstructured.NestedStringSlice(ctr, "args")
	args = append(command, args...)
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
		if m["mountPath"] != set.configDir || filepath.Join(set.configDir, "config.conf") != configPath {
			continue
		}
		for _, v := range volumes {
			v := v.(map[string]any)
			name, _, _ := unstructured.NestedString(v, "configMap", "name")
			if v["name"] == m["name"] && name == cm.GetName() {
				resolved = true
			}
		}
	}
	if !resolved {
		t.Errorf("--config=%s does not resolve to key config.conf of ConfigMap %s mounted at %s", configPath, cm.GetName(), set.configDir)
	}
}

// saDir is where kubelet mounts a pod's ServiceAccount token and CA.
const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// TestDeploy applies deploy/ and deploy/kube-proxy-names/ to a real API
// server: first as a server-side dry run (schema and admission), then for
// real, then checks that a token of each ServiceAccount can do exactly what
// the ClusterRole says, and that the kubeconfig in each ConfigMap, with
// the placeholder replaced, reaches the API server with that token.
func TestDeploy(t *testing.T) {
	c := cluster.Start(t)
	ctx := t.Context()
	for _, set := range deploySets {
		t.Run("deploy/"+set.dir, func(t *testing.T) {
			objs := loadDeploy(t, set)
			t.Run("dry-run", func(t *testing.T) {
				if err := c.Apply(ctx, objs, true); err != nil {
					t.Fatalf("server-side dry run: %v", err)
				}
				_, err := c.Client.AppsV1().DaemonSets("kube-system").Get(ctx, set.daemonSet, metav1.GetOptions{})
				if !apierrors.IsNotFound(err) {
					t.Fatalf("dry run stored the DaemonSet (err %v)", err)
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

			if set.dir == "kube-proxy-names" {
				// A kubeadm cluster: kubeadm's own kube-proxy DaemonSet is
				// there; the set replaces it in place.
				createKubeadmKubeProxy(ctx, t, c)
			}
			if err := c.Apply(ctx, objs, false); err != nil {
				t.Fatalf("apply: %v", err)
			}
			if set.dir == "kube-proxy-names" {
				checkReplacedKubeadm(ctx, t, c, find(objs, "DaemonSet"))
			}
			if _, err := c.Client.AppsV1().DaemonSets("kube-system").Get(ctx, set.daemonSet, metav1.GetOptions{}); err != nil {
				t.Fatalf("DaemonSet not stored: %v", err)
			}
			t.Run("rbac", func(t *testing.T) { testRBAC(ctx, t, c, set.serviceAccount) })
			t.Run("kubeconfig", func(t *testing.T) { testKubeconfig(ctx, t, c, find(objs, "ConfigMap"), set.serviceAccount) })
		})
	}
}

// createKubeadmKubeProxy creates kube-proxy's ServiceAccount and DaemonSet
// as kubeadm's addon does (cmd/kubeadm/app/phases/addons/proxy), owned by
// the field manager "kubeadm".
func createKubeadmKubeProxy(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	opts := metav1.CreateOptions{FieldManager: "kubeadm"}
	if _, err := c.Client.CoreV1().ServiceAccounts("kube-system").Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "kube-proxy"}}, opts); err != nil {
		t.Fatalf("kubeadm's ServiceAccount: %v", err)
	}
	labels := map[string]string{"k8s-app": "kube-proxy"}
	hostPathType := corev1.HostPathFileOrCreate
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-proxy", Namespace: "kube-system", Labels: labels},
		Spec: appsv1.DaemonSetSpec{
			Selector:       &metav1.LabelSelector{MatchLabels: labels},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					PriorityClassName: "system-node-critical",
					Containers: []corev1.Container{{
						Name: "kube-proxy", Image: "registry.k8s.io/kube-proxy:v1.37.2", ImagePullPolicy: corev1.PullIfNotPresent,
						Command:         []string{"/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=$(NODE_NAME)"},
						SecurityContext: &corev1.SecurityContext{Privileged: ptr(true)},
						VolumeMounts: []corev1.VolumeMount{
							{MountPath: "/var/lib/kube-proxy", Name: "kube-proxy"},
							{MountPath: "/run/xtables.lock", Name: "xtables-lock"},
							{MountPath: "/lib/modules", Name: "lib-modules", ReadOnly: true},
						},
						Env: []corev1.EnvVar{{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}},
					}},
					HostNetwork:        true,
					ServiceAccountName: "kube-proxy",
					Volumes: []corev1.Volume{
						{Name: "kube-proxy", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: "kube-proxy"}}}},
						{Name: "xtables-lock", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
							Path: "/run/xtables.lock", Type: &hostPathType}}},
						{Name: "lib-modules", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/lib/modules"}}},
					},
					Tolerations:  []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					NodeSelector: map[string]string{"kubernetes.io/os": "linux"},
				},
			},
		},
	}
	if _, err := c.Client.AppsV1().DaemonSets("kube-system").Create(ctx, ds, opts); err != nil {
		t.Fatalf("kubeadm's DaemonSet: %v", err)
	}
}

// checkReplacedKubeadm checks that applying the kube-proxy-names set over
// kubeadm's DaemonSet left switchyard's pod spec: its command (kubeadm's
// is gone), image, probe, and no duplicated volume.
func checkReplacedKubeadm(ctx context.Context, t *testing.T, c *cluster.Cluster, want *unstructured.Unstructured) {
	t.Helper()
	ds, err := c.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "kube-proxy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	containers, _, _ := unstructured.NestedSlice(want.Object, "spec", "template", "spec", "containers")
	wantCmd, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "command")
	wantImage, _, _ := unstructured.NestedString(containers[0].(map[string]any), "image")
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("containers after apply: %d", len(spec.Containers))
	}
	ctr := spec.Containers[0]
	if !slices.Equal(ctr.Command, wantCmd) || len(ctr.Args) != 0 || ctr.Image != wantImage || ctr.LivenessProbe == nil {
		t.Errorf("after applying over kubeadm's DaemonSet: command %v args %v image %s probe %v; want command %v image %s",
			ctr.Command, ctr.Args, ctr.Image, ctr.LivenessProbe, wantCmd, wantImage)
	}
	var vols []string
	for _, v := range spec.Volumes {
		vols = append(vols, v.Name)
	}
	slices.Sort(vols)
	if !slices.Equal(vols, []string{"kube-proxy", "lib-modules", "xtables-lock"}) {
		t.Errorf("volumes after apply: %v", vols)
	}
}

func ptr[T any](v T) *T { return &v }

// testKubeconfig fills kubeconfig.conf's placeholder with the test API
// server's address, puts the ServiceAccount's token and the cluster's CA
// where the file expects them, and lists services with it.
func testKubeconfig(ctx context.Context, t *testing.T, c *cluster.Cluster, cm *unstructured.Unstructured, sa string) {
	token, err := c.ServiceAccountToken(ctx, "kube-system", sa)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), c.Config.CAData, 0o600); err != nil {
		t.Fatal(err)
	}
	kc, _, _ := unstructured.NestedString(cm.Object, "data", "kubeconfig.conf")
	kc = strings.ReplaceAll(kc, "https://CONTROL-PLANE-ENDPOINT:6443", c.Server)
	kc = strings.ReplaceAll(kc, saDir, dir)
	path := filepath.Join(dir, "kubeconfig.conf")
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path) // as switchyard loads it
	if err != nil {
		t.Fatalf("load kubeconfig.conf: %v", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list services through kubeconfig.conf as %s: %v", sa, err)
	}
}

func testRBAC(ctx context.Context, t *testing.T, c *cluster.Cluster, sa string) {
	token, err := c.ServiceAccountToken(ctx, "kube-system", sa)
	if err != nil {
		t.Fatal(err)
	}
	sw, err := kubernetes.NewForConfig(c.ConfigForToken(token))
	if err != nil {
		t.Fatalf("clientset for switchyard: %v", err)
	}

	type access struct{ verb, group, resource string }
	// What switchyard's informers do (proxier/source/informers): list and
	// watch; and what its pod events do (client-go's events.k8s.io
	// broadcaster, cmd/switchyard/app/events.go): create, and patch for a
	// series; nothing else.
	allowed := []access{
		{"create", "events.k8s.io", "events"}, {"patch", "events.k8s.io", "events"},
		{"list", "", "services"}, {"watch", "", "services"},
		{"list", "", "nodes"}, {"watch", "", "nodes"},
		{"list", "", "pods"}, {"watch", "", "pods"},
		{"list", "discovery.k8s.io", "endpointslices"}, {"watch", "discovery.k8s.io", "endpointslices"},
	}
	denied := []access{
		{"list", "", "secrets"}, {"get", "", "configmaps"}, {"list", "", "endpoints"},
		{"get", "", "services"}, {"get", "", "nodes"}, {"get", "", "pods"},
		{"create", "", "services"}, {"update", "", "services"}, {"delete", "", "pods"},
		{"patch", "", "nodes"}, {"update", "discovery.k8s.io", "endpointslices"},
		{"create", "", "serviceaccounts/token"}, {"create", "", "events"}, {"patch", "", "events"},
		{"update", "events.k8s.io", "events"}, {"get", "events.k8s.io", "events"}, {"delete", "events.k8s.io", "events"},
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
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
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
	// Pod events go through events.k8s.io only: create, then patch.
	ev, err := sw.EventsV1().Events("default").Create(ctx, &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "swy-"},
		EventTime:  metav1.NowMicro(), Regarding: corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "pod-1"},
		Reason: "HostPortConflict", Note: "test", Type: corev1.EventTypeWarning, Action: "MapHostPort",
		ReportingController: "switchyard", ReportingInstance: "switchyard-test",
	}, metav1.CreateOptions{})
	if err != nil {
		t.Errorf("create events.k8s.io event: %v", err)
	} else if _, err := sw.EventsV1().Events("default").Patch(ctx, ev.Name, types.MergePatchType,
		[]byte(`{"series":{"count":2,"lastObservedTime":"`+metav1.NowMicro().Format(metav1.RFC3339Micro)+`"}}`), metav1.PatchOptions{}); err != nil {
		t.Errorf("patch events.k8s.io event: %v", err)
	}
	// The core API's events are not switchyard's.
	if _, err := sw.CoreV1().Events("default").Create(ctx, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "swy-"},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "node-1"},
		Reason:         "Starting", Message: "test", Type: corev1.EventTypeNormal,
	}, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("create core event: want Forbidden, got %v", err)
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
