// Package node is a real-node test bed: a control plane (etcd +
// kube-apiserver from test/cluster, kube-controller-manager and
// kube-scheduler) and two nodes, each a network namespace with its own
// containerd and kubelet, on a shared link with routes between the nodes'
// pod CIDRs. Everything lives in namespaces and under one scratch folder the
// bed creates, and Start's cleanup removes it all. See README.md.
package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/switchyard-proxy/switchyard/test/cluster"
	"github.com/switchyard-proxy/switchyard/test/lab"
)

// Addresses of the bed's shared link (a bridge in the control-plane
// namespace) and its cluster ranges. They exist only inside the bed's
// namespaces.
const (
	CPAddr      = "10.88.0.1"
	OutsideAddr = "10.88.0.100"
	ClusterCIDR = "10.244.0.0/16"
	ServiceCIDR = "10.96.0.0/16"
	linkPrefix  = 24
)

// Node is one node of the bed: a network namespace with containerd and
// kubelet running in it.
type Node struct {
	// Name is the Kubernetes node name (swynode-1, swynode-2).
	Name string
	// NS is the network namespace (under /run/netns).
	NS string
	// IP is the node's address on the shared link (its InternalIP).
	IP string
	// PodCIDR is what kube-controller-manager allocated to the node.
	PodCIDR string
	// Dir holds the node's containerd, kubelet and CNI state.
	Dir string
	// CgroupRoot is kubelet's --cgroup-root (pods live below it).
	CgroupRoot string
	// MountNS is the node's mount namespace (a file bound under the
	// scratch folder): containerd, kubelet and every pod see their own
	// /var/lib, /var/log and /run there (see makeMountNS).
	MountNS string

	containerd, kubelet *proc
}

// Socket is the node's containerd socket.
func (n *Node) Socket() string { return filepath.Join(n.Dir, "containerd.sock") }

// Bed is a running test bed.
type Bed struct {
	// ID makes the namespace names unique (swynode-<ID>-...).
	ID string
	// Dir is the scratch folder everything is written under.
	Dir string
	// Cluster is the control plane (kube-apiserver + etcd).
	Cluster *cluster.Cluster
	// Config and Client reach the API server from the test's own
	// namespace (sockets are made in the control-plane namespace).
	Config *rest.Config
	Client kubernetes.Interface
	// CPNS is the control-plane namespace; OutNS a client namespace on
	// the shared link, "outside" the cluster.
	CPNS, OutNS string
	// Nodes are the bed's nodes.
	Nodes []*Node
	// Timings records how long each bring-up step took.
	Timings []Timing

	t     testing.TB
	mu    sync.Mutex
	procs []*proc
	// sysctlsSaved: this bed registered in the host's sysctl state (see
	// sysctl.go) and must unregister.
	sysctlsSaved bool
}

// Timing is one measured bring-up step.
type Timing struct {
	Step string
	Took time.Duration
}

// Start brings up the control plane and two nodes and registers their
// teardown with t.Cleanup. It returns once both nodes are Ready.
func Start(t testing.TB) *Bed {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, containerd, kubelet)")
	}
	bins, err := Binaries()
	if err != nil {
		t.Fatalf("binaries: %v", err)
	}
	idb := make([]byte, 2)
	_, _ = rand.Read(idb)
	id := hex.EncodeToString(idb)
	dir, err := os.MkdirTemp("/var/tmp", "swynode-"+id+"-")
	if err != nil {
		t.Fatalf("scratch dir: %v", err)
	}
	b := &Bed{ID: id, Dir: dir, t: t, CPNS: "swynode-" + id + "-cp", OutNS: "swynode-" + id + "-out"}
	for i := 1; i <= 2; i++ {
		b.Nodes = append(b.Nodes, &Node{
			Name:       fmt.Sprintf("swynode-%d", i),
			NS:         fmt.Sprintf("swynode-%s-n%d", id, i),
			IP:         fmt.Sprintf("10.88.0.%d", 10+i),
			Dir:        filepath.Join(dir, fmt.Sprintf("n%d", i)),
			CgroupRoot: fmt.Sprintf("/swynode-%s-n%d", id, i),
		})
	}
	t.Cleanup(func() {
		if t.Failed() {
			b.dumpLogs()
		}
		start := time.Now()
		if err := b.teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
		t.Logf("teardown took %s", time.Since(start).Round(100*time.Millisecond))
	})
	if err := b.saveSysctls(); err != nil {
		t.Fatalf("%v", err)
	}
	step := func(name string, fn func() error) {
		t.Helper()
		s := time.Now()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b.Timings = append(b.Timings, Timing{name, time.Since(s)})
		t.Logf("%s: %s", name, time.Since(s).Round(100*time.Millisecond))
	}
	step("network", b.setupNetwork)
	step("control plane", func() error {
		c, err := cluster.New(bins.TestCluster,
			cluster.WithNetNS(b.CPNS), cluster.WithBindAddress(CPAddr), cluster.WithServiceCIDR(ServiceCIDR),
			cluster.WithAPIServerArgs(
				// Pods need their ServiceAccount tokens mounted, and the
				// kubernetes Service its endpoints.
				"--disable-admission-plugins=",
				"--endpoint-reconciler-type=lease",
				"--kubelet-preferred-address-types=InternalIP",
			))
		if err != nil {
			return err
		}
		b.Cluster = c
		b.Config = rest.CopyConfig(c.Config)
		b.Config.Dial = NSDialer("/run/netns/" + b.CPNS)
		b.Config.QPS, b.Config.Burst = 50, 100
		c.Config.Dial = b.Config.Dial // cluster.Apply uses it
		b.Client, err = kubernetes.NewForConfig(b.Config)
		if err != nil {
			return fmt.Errorf("client: %w", err)
		}
		return b.startControllers(bins)
	})
	step("images", func() error { return b.buildBaseImages(bins) })
	step("nodes", func() error {
		for _, n := range b.Nodes {
			if err := b.startNode(n, bins); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
		return b.waitNodesReady(4 * time.Minute)
	})
	return b
}

// setupNetwork makes the namespaces: a bridge in the control-plane one,
// a veth from it to each node and to the outside namespace.
func (b *Bed) setupNetwork() error {
	all := []string{b.CPNS, b.OutNS}
	for _, n := range b.Nodes {
		all = append(all, n.NS)
	}
	for _, ns := range all {
		if err := ipCmd("netns", "add", ns); err != nil {
			return err
		}
		if err := ipCmd("-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	cmds := [][]string{
		{"-n", b.CPNS, "link", "add", "br0", "type", "bridge"},
		{"-n", b.CPNS, "addr", "add", fmt.Sprintf("%s/%d", CPAddr, linkPrefix), "dev", "br0"},
		{"-n", b.CPNS, "link", "set", "br0", "up"},
	}
	attach := func(ns, port, addr string) {
		cmds = append(cmds,
			[]string{"-n", b.CPNS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", b.CPNS, "link", "set", port, "master", "br0", "up"},
			[]string{"-n", ns, "addr", "add", fmt.Sprintf("%s/%d", addr, linkPrefix), "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
			// Nothing answers beyond the link: the control-plane
			// namespace does not forward. kubelet wants a default route.
			[]string{"-n", ns, "route", "add", "default", "via", CPAddr},
		)
	}
	for i, n := range b.Nodes {
		attach(n.NS, fmt.Sprintf("n%d", i+1), n.IP)
	}
	attach(b.OutNS, "out", OutsideAddr)
	for _, c := range cmds {
		if err := ipCmd(c...); err != nil {
			return err
		}
	}
	for _, n := range b.Nodes {
		if err := nsSysctl(n.NS, "net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
	}
	return nil
}

// routePodCIDRs routes each node's pod CIDR to it from every other node
// and from the control-plane namespace (pods reach the API server through
// the kubernetes Service unmasqueraded, and the e2e runner there reaches
// pods).
func (b *Bed) routePodCIDRs() error {
	for _, to := range b.Nodes {
		if err := ipCmd("-n", b.CPNS, "route", "replace", to.PodCIDR, "via", to.IP); err != nil {
			return err
		}
	}
	for _, from := range b.Nodes {
		for _, to := range b.Nodes {
			if from == to {
				continue
			}
			if err := ipCmd("-n", from.NS, "route", "replace", to.PodCIDR, "via", to.IP); err != nil {
				return err
			}
		}
	}
	return nil
}

// startControllers starts kube-controller-manager (node CIDRs, service
// accounts, endpoint slices, Deployments, DaemonSets) and kube-scheduler in
// the control-plane namespace.
func (b *Bed) startControllers(bins BinPaths) error {
	pki := filepath.Join(b.Cluster.Dir, "data", "pki")
	kc := b.Cluster.Kubeconfig
	if _, err := b.start("kube-controller-manager", b.CPNS, bins.ControllerManager,
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--leader-elect=false", "--bind-address="+CPAddr,
		"--service-account-private-key-file="+filepath.Join(pki, "sa.key"),
		"--root-ca-file="+filepath.Join(pki, "ca.crt"),
		"--use-service-account-credentials=false",
		"--allocate-node-cidrs", "--cluster-cidr="+ClusterCIDR, "--node-cidr-mask-size=24",
		"--service-cluster-ip-range="+ServiceCIDR,
		"--cert-dir="+filepath.Join(b.Dir, "kcm-certs"),
	); err != nil {
		return err
	}
	_, err := b.start("kube-scheduler", b.CPNS, bins.Scheduler,
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--leader-elect=false", "--bind-address="+CPAddr,
		"--cert-dir="+filepath.Join(b.Dir, "scheduler-certs"),
	)
	return err
}

// startNode starts containerd and kubelet in the node's namespace, waits
// for the node's pod CIDR and writes its CNI configuration.
func (b *Bed) startNode(n *Node, bins BinPaths) error {
	for _, d := range []string{"cni/net.d", "cni/ipam"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return fmt.Errorf("mkdir: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "containerd.toml"), []byte(containerdConfig(n.Dir)), 0o644); err != nil {
		return fmt.Errorf("containerd config: %w", err)
	}
	if err := b.makeMountNS(n); err != nil {
		return err
	}
	var err error
	if n.containerd, err = b.startIn("containerd-"+n.Name, n.NS, n.MountNS, "containerd", "--config", filepath.Join(n.Dir, "containerd.toml")); err != nil {
		return err
	}
	if err := waitFor(30*time.Second, func() error {
		_, err := ctr(n, "version")
		return err
	}); err != nil {
		return fmt.Errorf("containerd not up: %w", err)
	}
	if err := b.importArchive(n, b.pauseArchive()); err != nil {
		return err
	}
	if err := makeCgroupRoot(n.CgroupRoot); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "kubelet.yaml"), []byte(kubeletConfig(n)), 0o644); err != nil {
		return fmt.Errorf("kubelet config: %w", err)
	}
	n.kubelet, err = b.startIn("kubelet-"+n.Name, n.NS, n.MountNS, bins.Kubelet,
		"--config="+filepath.Join(n.Dir, "kubelet.yaml"),
		"--kubeconfig="+b.Cluster.Kubeconfig,
		"--hostname-override="+n.Name,
		"--node-ip="+n.IP,
		"--v=1",
	)
	return err
}

// waitNodesReady waits for every node's pod CIDR, writes the CNI
// configurations and routes, then waits until every node is Ready.
func (b *Bed) waitNodesReady(timeout time.Duration) error {
	ctx := context.Background()
	for _, n := range b.Nodes {
		if err := waitFor(timeout, func() error {
			node, err := b.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if node.Spec.PodCIDR == "" {
				return errors.New("no pod CIDR yet")
			}
			n.PodCIDR = node.Spec.PodCIDR
			return nil
		}); err != nil {
			return fmt.Errorf("node %s registered with a pod CIDR: %w", n.Name, err)
		}
		if err := os.WriteFile(filepath.Join(n.Dir, "cni/net.d/10-swynode.conflist"), []byte(cniConfig(n)), 0o644); err != nil {
			return fmt.Errorf("cni config: %w", err)
		}
	}
	if err := b.routePodCIDRs(); err != nil {
		return err
	}
	for _, n := range b.Nodes {
		if err := waitFor(timeout, func() error {
			node, err := b.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					if c.Status == corev1.ConditionTrue {
						return nil
					}
					return fmt.Errorf("not ready: %s", c.Message)
				}
			}
			return errors.New("no Ready condition")
		}); err != nil {
			return fmt.Errorf("node %s ready: %w", n.Name, err)
		}
	}
	return nil
}

// nodeTmpfs are the folders a node gets its own (empty) tmpfs on, in its
// mount namespace: kubelet, containerd and the CNI plugins write to fixed
// places below them (/var/lib/kubelet, /var/lib/cni, /var/log/pods,
// /var/log/containers, /run/containerd, and a pod's hostPath such as
// /run/xtables.lock), which then never reach the host and vanish with the
// namespace.
var nodeTmpfs = []string{"/var/lib", "/var/log", "/run"}

// makeMountNS creates the node's mount namespace: a private copy of the
// host's mounts, made rshared inside (kubelet's volume mounts must reach
// containerd's containers), with a tmpfs on each of nodeTmpfs. It is bound
// to a file under <Dir>/mntns, which must itself be a private mount.
func (b *Bed) makeMountNS(n *Node) error {
	dir := filepath.Join(b.Dir, "mntns")
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("mntns dir: %w", err)
		}
		if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", dir, err)
		}
		if err := syscall.Mount("", dir, "", syscall.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("make %s private: %w", dir, err)
		}
	}
	n.MountNS = filepath.Join(dir, n.Name)
	if err := os.WriteFile(n.MountNS, nil, 0o644); err != nil {
		return fmt.Errorf("mntns file: %w", err)
	}
	script := "set -e; mount --make-rshared /"
	for _, d := range nodeTmpfs {
		script += fmt.Sprintf("; mount -t tmpfs -o mode=755,size=512m swynode %s", d)
	}
	out, err := exec.Command("unshare", "--mount="+n.MountNS, "--propagation", "private", "sh", "-c", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mount namespace for %s: %w: %s", n.Name, err, out)
	}
	return nil
}

// proc is a process the bed started.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// start runs a program inside network namespace ns (nsenter --net, not
// `ip netns exec`, which remounts /sys and hides the cgroup v1 mounts),
// logging to <Dir>/logs/<name>.log.
func (b *Bed) start(name, ns, bin string, args ...string) (*proc, error) {
	return b.startIn(name, ns, "", bin, args...)
}

// startIn is start with the process also in the mount namespace bound at
// mntns (empty: the host's).
func (b *Bed) startIn(name, ns, mntns, bin string, args ...string) (*proc, error) {
	logDir := filepath.Join(b.Dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("log: %w", err)
	}
	nsArgs := []string{"--net=/run/netns/" + ns}
	if mntns != "" {
		nsArgs = append(nsArgs, "--mount="+mntns)
	}
	cmd := exec.Command("nsenter", append(append(nsArgs, "--", bin), args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	b.mu.Lock()
	b.procs = append(b.procs, p)
	b.mu.Unlock()
	return p, nil
}

// stop sends SIGTERM to the process (by PID) and SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// running tells whether the process is still alive.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// dumpLogs prints the tail of every component's log.
func (b *Bed) dumpLogs() {
	b.mu.Lock()
	procs := append([]*proc(nil), b.procs...)
	b.mu.Unlock()
	for _, p := range procs {
		b.t.Logf("--- %s (%s), last lines:\n%s", p.name, p.log, tail(p.log, 25))
	}
	if b.Cluster != nil {
		b.t.Logf("--- swy-testcluster, last lines:\n%s", b.Cluster.LogTail(25))
	}
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls fn every 250 ms until it returns nil or timeout passes.
func waitFor(timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func ipCmd(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// nsSysctl writes a per-namespace sysctl inside ns.
func nsSysctl(ns, key, value string) error {
	return lab.InNS(ns, func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	})
}

// ctr runs containerd's ctr against the node's containerd, in namespace
// k8s.io (the CRI's).
func ctr(n *Node, args ...string) (string, error) {
	out, err := exec.Command("ctr", append([]string{"--address", n.Socket(), "-n", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// NSDialer returns a dial function whose sockets are made inside the
// network namespace at path.
func NSDialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := lab.InNSPath(path, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// Memory reports the resident set size of the bed's parts in MiB: the
// control plane (kube-apiserver + etcd, controller manager, scheduler), and
// per node kubelet, containerd, its shims and its pods' processes.
func (b *Bed) Memory() string {
	mib := func(pids ...int) int64 {
		var sum int64
		for _, p := range pids {
			sum += rss(p)
		}
		return sum >> 20
	}
	b.mu.Lock()
	procs := append([]*proc(nil), b.procs...)
	b.mu.Unlock()
	pidOf := func(name string) int {
		for _, p := range procs {
			if p.name == name && p.running() {
				return p.cmd.Process.Pid
			}
		}
		return 0
	}
	var total int64
	parts := []string{}
	add := func(name string, v int64) {
		total += v
		parts = append(parts, fmt.Sprintf("%s %d", name, v))
	}
	if b.Cluster != nil {
		add("apiserver+etcd", mib(b.Cluster.PID()))
	}
	add("controller-manager", mib(pidOf("kube-controller-manager")))
	add("scheduler", mib(pidOf("kube-scheduler")))
	for _, n := range b.Nodes {
		add(n.Name+" kubelet", mib(pidOf("kubelet-"+n.Name)))
		add(n.Name+" containerd", mib(pidOf("containerd-"+n.Name)))
		add(n.Name+" shims", mib(shimPIDs(n.Socket())...))
		add(n.Name+" pods", mib(cgroupPIDs(filepath.Join("/sys/fs/cgroup/pids", n.CgroupRoot))...))
	}
	return fmt.Sprintf("RSS MiB: total %d (%s)", total, strings.Join(parts, ", "))
}

// rss reads a process's resident set size in bytes (0 if it is gone).
func rss(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var kb int64
			_, _ = fmt.Sscanf(rest, "%d", &kb)
			return kb << 10
		}
	}
	return 0
}
