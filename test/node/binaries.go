package node

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard-proxy/switchyard/test/cluster"
)

// KubeVersion is the Kubernetes release the components are built from
// (test/cluster's go.mod pins k8s.io/kubernetes to it).
const KubeVersion = "v1.37.2"

// BinPaths are the programs the bed runs.
type BinPaths struct {
	TestCluster, Kubelet, ControllerManager, Scheduler string
	// ImagePacker is build/image (packs a root folder as an OCI image and
	// a docker-archive); Pause and Echo are the static binaries the bed
	// packs as images.
	ImagePacker, Pause, Echo string
}

// CacheDir is where binaries are built once: <repo>/.cache/bin.
func CacheDir() string { return filepath.Join(cluster.RepoRoot(), ".cache", "bin") }

// Binaries returns the bed's programs, built into CacheDir: kubelet,
// kube-controller-manager and kube-scheduler from test/cluster's module (a
// few minutes each when the build cache is cold), the others from this
// repository. go build leaves an up-to-date binary alone, so a warm call
// takes seconds.
func Binaries() (BinPaths, error) {
	tc, _, err := cluster.Binary()
	if err != nil {
		return BinPaths{}, fmt.Errorf("swy-testcluster: %w", err)
	}
	b := BinPaths{TestCluster: tc}
	ld := fmt.Sprintf("-X k8s.io/component-base/version.gitVersion=%s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean", KubeVersion)
	kube := filepath.Join(cluster.RepoRoot(), "test", "cluster")
	repo := cluster.RepoRoot()
	self := filepath.Join(repo, "test", "node")
	for _, x := range []struct {
		dst        *string
		name, dir  string
		pkg, flags string
		static     bool
	}{
		{&b.Kubelet, "kubelet", kube, "k8s.io/kubernetes/cmd/kubelet", ld, false},
		{&b.ControllerManager, "kube-controller-manager", kube, "k8s.io/kubernetes/cmd/kube-controller-manager", ld, false},
		{&b.Scheduler, "kube-scheduler", kube, "k8s.io/kubernetes/cmd/kube-scheduler", ld, false},
		{&b.ImagePacker, "swy-image-pack", repo, "./build/image", "", false},
		{&b.Pause, "swy-pause", self, "./cmd/swy-pause", "-s -w", true},
		{&b.Echo, "swy-echo-static", repo, "./test/echo/cmd/swy-echo", "-s -w", true},
	} {
		p, err := buildOnce(x.name, x.dir, x.pkg, x.flags, x.static)
		if err != nil {
			return BinPaths{}, err
		}
		*x.dst = p
	}
	return b, nil
}

// buildOnce builds pkg (in module dir) into CacheDir/name under a file
// lock (concurrent test processes share the cache).
func buildOnce(name, dir, pkg, ldflags string, static bool) (string, error) {
	out := filepath.Join(CacheDir(), name)
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return "", fmt.Errorf("cache dir: %w", err)
	}
	lock, err := os.OpenFile(out+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("build lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("take build lock: %w", err)
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()
	start := time.Now()
	args := []string{"build", "-ldflags", ldflags, "-o", out}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Env = os.Environ()
	if static {
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	cmd.Dir = dir
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, strings.TrimSpace(string(o)))
	}
	if took := time.Since(start); took > 10*time.Second {
		fmt.Fprintf(os.Stderr, "test/node: built %s in %s\n", name, took.Round(time.Second))
	}
	return out, nil
}

// CoreDNSVersion is the CoreDNS release the bed builds (from its Go
// module, through the module proxy) for cluster DNS.
const CoreDNSVersion = "v1.14.7"

// UpstreamBins are the programs TestUpstreamServices needs besides the
// bed's own.
type UpstreamBins struct {
	E2ETest, Agnhost, Kubectl, KubeProxy, CoreDNS string
}

// UpstreamBinaries builds (or finds up to date) upstream's e2e.test,
// agnhost, kubectl and kube-proxy from test/cluster's module, and
// CoreDNS (static) from its own module, into CacheDir.
func UpstreamBinaries() (UpstreamBins, error) {
	var u UpstreamBins
	ld := fmt.Sprintf("-X k8s.io/component-base/version.gitVersion=%s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean", KubeVersion)
	kube := filepath.Join(cluster.RepoRoot(), "test", "cluster")
	for _, x := range []struct {
		dst       *string
		name, pkg string
		flags     string
		static    bool
	}{
		{&u.Kubectl, "kubectl", "k8s.io/kubernetes/cmd/kubectl", ld, false},
		{&u.KubeProxy, "kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy", ld, false},
		{&u.Agnhost, "agnhost", "k8s.io/kubernetes/test/images/agnhost", "-s -w", false},
	} {
		p, err := buildOnce(x.name, kube, x.pkg, x.flags, x.static)
		if err != nil {
			return u, err
		}
		*x.dst = p
	}
	u.E2ETest = filepath.Join(CacheDir(), "e2e.test")
	if err := runLocked(u.E2ETest, kube, nil, "test", "-c", "-ldflags", ld, "-o", u.E2ETest, "k8s.io/kubernetes/test/e2e"); err != nil {
		return u, err
	}
	u.CoreDNS = filepath.Join(CacheDir(), "coredns")
	tmp, err := os.MkdirTemp("", "swynode-coredns-")
	if err != nil {
		return u, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := runLocked(u.CoreDNS, tmp, []string{"CGO_ENABLED=0", "GOBIN=" + CacheDir()},
		"install", "-ldflags", "-s -w", "github.com/coredns/coredns@"+CoreDNSVersion); err != nil {
		return u, err
	}
	return u, nil
}

// runLocked runs `go args...` in dir under out's build lock.
func runLocked(out, dir string, env []string, args ...string) error {
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return fmt.Errorf("cache dir: %w", err)
	}
	lock, err := os.OpenFile(out+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("build lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("take build lock: %w", err)
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()
	start := time.Now()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, strings.TrimSpace(string(o)))
	}
	if took := time.Since(start); took > 10*time.Second {
		fmt.Fprintf(os.Stderr, "test/node: built %s in %s\n", filepath.Base(out), took.Round(time.Second))
	}
	return nil
}
