package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startDaemon runs Main in the background with a fake backend and returns
// its log and a function that stops it and returns the exit status.
func startDaemon(t *testing.T, args ...string) (*syncBuffer, chan int, context.CancelFunc) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, dir, "objects.yaml", demoObjects)
	useBackend(t, &fakeBackend{})
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, append([]string{"--manifests", dir, "--hostname-override", "node-a"}, args...), io.Discard, logs)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Main did not return after cancel")
		}
	})
	return logs, done, cancel
}

// A health port in use is logged and retried, and served once it frees.
func TestBusyPortIsRetried(t *testing.T) {
	old := serverRetryInterval
	serverRetryInterval = 50 * time.Millisecond
	t.Cleanup(func() { serverRetryInterval = old })
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := busy.Addr().String()
	logs, done, _ := startDaemon(t, "--healthz-bind-address", addr, "--metrics-bind-address", "")
	eventually(t, "a logged bind failure", func() bool { return strings.Contains(logs.String(), "retrying") })
	select {
	case code := <-done:
		t.Fatalf("exited %d on a busy port:\n%s", code, logs)
	default:
	}
	busy.Close()
	eventually(t, "healthz served after the port freed", func() bool {
		code, _ := get("http://" + addr + "/healthz")
		return code == 200 || code == 503
	})
}

// With --bind-address-hard-fail a busy port ends the process with status 1.
func TestBusyPortHardFail(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	logs, done, _ := startDaemon(t, "--metrics-bind-address", busy.Addr().String(), "--healthz-bind-address", "", "--bind-address-hard-fail")
	select {
	case code := <-done:
		done <- code // for startDaemon's cleanup
		if code != 1 || !strings.Contains(logs.String(), "bind-address-hard-fail") {
			t.Errorf("exit %d:\n%s", code, logs)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("still running:\n%s", logs)
	}
}

// --once binds neither the health nor the metrics port: a busy default
// port does not matter.
func TestOnceBindsNoServers(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	writeFile(t, dir, "objects.yaml", demoObjects)
	useBackend(t, &fakeBackend{})
	code, _, stderr := runMain(t, "--manifests", dir, "--hostname-override", "node-a", "--once",
		"--healthz-bind-address", busy.Addr().String(), "--metrics-bind-address", busy.Addr().String(), "--bind-address-hard-fail")
	if code != 0 || strings.Contains(stderr, "HTTP server") {
		t.Errorf("--once: exit %d\n%s", code, stderr)
	}
}

// --init-only applies the node settings and exits before any sync.
func TestInitOnly(t *testing.T) {
	fb := &fakeBackend{}
	useBackend(t, fb)
	var applied *Options
	nodeSetup = func(o *Options, _ *slog.Logger) error { applied = o; return nil }
	dir := t.TempDir()
	writeFile(t, dir, "objects.yaml", demoObjects)
	code, _, stderr := runMain(t, "--manifests", dir, "--hostname-override", "node-a", "--init-only", "--conntrack-max-per-core=7")
	if code != 0 || applied == nil || applied.Conntrack.MaxPerCore != 7 || len(fb.syncs) != 0 {
		t.Errorf("--init-only: exit %d, applied %v, %d syncs\n%s", code, applied != nil, len(fb.syncs), stderr)
	}
}

// Like kube-proxy, switchyard exits when the content of its config file
// changes (its DaemonSet restarts it with the new one); an event that
// leaves the content alone does not count.
func TestConfigFileChangeExits(t *testing.T) {
	dir := t.TempDir()
	body := "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmetricsBindAddress: \"0\"\n"
	cfg := writeFile(t, dir, "config.conf", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n")
	logs, done, _ := startDaemon(t, "--config", cfg, "--healthz-bind-address", "", "--metrics-bind-address", "")
	eventually(t, "the first sync", func() bool { return strings.Contains(logs.String(), "initial state received") })
	writeFile(t, dir, "unrelated", "x") // an event in the folder, same content
	writeFile(t, dir, "config.conf", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n")
	time.Sleep(3 * configSettle) // a negative check: give a wrong exit the chance to happen
	select {
	case code := <-done:
		done <- code
		t.Fatalf("exited %d though the content did not change:\n%s", code, logs)
	default:
	}
	writeFile(t, dir, "config.conf", body)
	select {
	case code := <-done:
		done <- code
		if code != 1 || !strings.Contains(logs.String(), "was updated") {
			t.Errorf("exit %d:\n%s", code, logs)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit after the config changed:\n%s", logs)
	}
}

// A ConfigMap volume updates by swapping the ..data symlink: that counts.
func TestConfigMapSwapExits(t *testing.T) {
	dir := t.TempDir()
	v1, v2 := filepath.Join(dir, "..2026_1"), filepath.Join(dir, "..2026_2")
	for _, d := range []string{v1, v2} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, v1, "config.conf", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n")
	writeFile(t, v2, "config.conf", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.1.0.0/16\n")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("..2026_1", filepath.Join(dir, "..data")))
	must(os.Symlink("..data/config.conf", filepath.Join(dir, "config.conf")))
	logs, done, _ := startDaemon(t, "--config", filepath.Join(dir, "config.conf"), "--healthz-bind-address", "", "--metrics-bind-address", "")
	eventually(t, "the first sync", func() bool { return strings.Contains(logs.String(), "initial state received") })
	must(os.Symlink("..2026_2", filepath.Join(dir, "..data_tmp")))
	must(os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	select {
	case code := <-done:
		done <- code
		if code != 1 || !strings.Contains(logs.String(), "was updated") {
			t.Errorf("exit %d:\n%s", code, logs)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit after the ConfigMap swap:\n%s", logs)
	}
}
