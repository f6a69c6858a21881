package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Image names upstream's e2e specs ask for (k8s.io/kubernetes
// test/utils/image, v1.37.2). The bed imports its own builds under these
// names; pods use IfNotPresent, so nothing is pulled.
const (
	AgnhostRef  = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	BusyboxRef  = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
	E2EPauseRef = "registry.k8s.io/pause:3.10.2"
	CoreDNSRef  = "localhost/swynode/coredns:v1"
)

// ImportUpstreamImages builds and imports what upstream's e2e specs run:
// agnhost (with curl, wget, nc, ip, conntrack and a shell from Debian
// packages, see images/rootfs.sh), busybox, the pause image under
// upstream's name, and CoreDNS (static, from its Go module).
func (b *Bed) ImportUpstreamImages(bins BinPaths, agnhost, coredns string) error {
	dir := filepath.Join(b.Dir, "images")
	debs := filepath.Join(CacheDir(), "..", "node-debs")
	script := filepath.Join(moduleDir(), "images", "rootfs.sh")
	for _, img := range []struct {
		kind, bin, entry, ref string
	}{
		{"agnhost", agnhost, "/agnhost", AgnhostRef},
		{"busybox", "", "/bin/sh", BusyboxRef},
	} {
		root := filepath.Join(dir, img.kind, "rootfs")
		if out, err := runCmd("sh", script, debs, root, img.kind, img.bin); err != nil {
			return fmt.Errorf("%s root file system: %w: %s", img.kind, err, out)
		}
		archive := filepath.Join(dir, img.kind+".tar")
		if out, err := runCmd(bins.ImagePacker, "-rootfs", root, "-out", filepath.Join(dir, img.kind, "oci"), "-ref", img.ref,
			"-archive", archive, "-entrypoint", img.entry, "-version", "test"); err != nil {
			return fmt.Errorf("pack %s: %w: %s", img.ref, err, out)
		}
		if err := b.ImportArchive(archive); err != nil {
			return err
		}
	}
	for _, img := range []struct{ bin, entry, ref, name string }{
		{bins.Pause, "/pause", E2EPauseRef, "e2e-pause"},
		{coredns, "/coredns", CoreDNSRef, "coredns"},
	} {
		archive := filepath.Join(dir, img.name+".tar")
		if err := packImage(bins.ImagePacker, img.bin, img.entry, img.ref, archive); err != nil {
			return err
		}
		if err := b.ImportArchive(archive); err != nil {
			return err
		}
	}
	return nil
}

// DeployCoreDNS runs CoreDNS (one replica, in-cluster config through the
// kubernetes Service) behind the kube-dns Service at DNSServiceIP and waits
// until it is ready.
func (b *Bed) DeployCoreDNS(ctx context.Context) error {
	ns := "kube-system"
	labels := map[string]string{"k8s-app": "kube-dns"}
	c := b.Client
	if _, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "coredns"}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("coredns service account: %w", err)
	}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "swynode:coredns"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("coredns role: %w", err)
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "swynode:coredns"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "swynode:coredns"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "coredns", Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("coredns binding: %w", err)
	}
	corefile := `.:53 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
}
`
	if _, err := c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns"}, Data: map[string]string{"Corefile": corefile},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("coredns config: %w", err)
	}
	one := int32(1)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns", Namespace: ns, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: "coredns",
					DNSPolicy:          corev1.DNSDefault,
					PriorityClassName:  "system-cluster-critical",
					Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Containers: []corev1.Container{{
						Name: "coredns", Image: CoreDNSRef, ImagePullPolicy: corev1.PullNever,
						Args: []string{"-conf", "/etc/coredns/Corefile"},
						Ports: []corev1.ContainerPort{
							{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
							{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8181)}},
							PeriodSeconds: 2,
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns"}},
					}},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
						ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"}},
					}}},
				},
			},
		},
	}
	if _, err := c.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("coredns deployment: %w", err)
	}
	if _, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Labels: labels},
		Spec: corev1.ServiceSpec{
			ClusterIP: DNSServiceIP,
			Selector:  labels,
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("kube-dns service: %w", err)
	}
	return waitFor(3*time.Minute, func() error {
		d, err := c.AppsV1().Deployments(ns).Get(ctx, "coredns", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != 1 {
			return fmt.Errorf("coredns not ready")
		}
		return nil
	})
}

// StartKubeProxy runs upstream kube-proxy (iptables mode) on every node as
// a process in the node's namespaces, the way a node without a kube-proxy
// DaemonSet runs it.
func (b *Bed) StartKubeProxy(bin string) error {
	for _, n := range b.Nodes {
		cfg := filepath.Join(n.Dir, "kube-proxy.yaml")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
bindAddress: 0.0.0.0
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection:
  kubeconfig: %s
conntrack:
  maxPerCore: 0
`, ClusterCIDR, n.Name, b.Cluster.Kubeconfig)), 0o644); err != nil {
			return fmt.Errorf("kube-proxy config: %w", err)
		}
		if _, err := b.startIn("kube-proxy-"+n.Name, n.NS, n.MountNS, bin, "--config="+cfg, "--v=1"); err != nil {
			return err
		}
	}
	return nil
}

// moduleDir is this module's folder (test/node).
func moduleDir() string { return filepath.Join(CacheDir(), "..", "..", "test", "node") }

func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
