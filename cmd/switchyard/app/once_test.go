package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/switchyard-proxy/switchyard/internal/kubeproxyclean"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// fakeBackend records syncs and fails when told to.
type fakeBackend struct {
	mu    sync.Mutex
	fail  error
	syncs [][]*proxier.Snapshot
}

func (f *fakeBackend) Name() string { return "fake" }
func (f *fakeBackend) Sync(_ context.Context, snaps []*proxier.Snapshot) (proxier.SyncResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs = append(f.syncs, snaps)
	return proxier.SyncResult{Full: snaps[0].FullSync, Wrote: true}, f.fail
}
func (f *fakeBackend) Cleanup(context.Context) error { return nil }

func useBackend(t *testing.T, b proxier.Backend) {
	old := backendFactory
	backendFactory = func(*Options, *slog.Logger) (proxier.Backend, error) { return b, nil }
	// In-process runs must never change the host's sysctls.
	oldSetup := nodeSetup
	nodeSetup = func(*Options, *slog.Logger) error { return nil }
	// The node's address families, not the host kernel's, decide.
	oldFams := kernelFamilies
	kernelFamilies = func(context.Context, *slog.Logger) []proxier.IPFamily { return nil }
	t.Cleanup(func() { backendFactory, nodeSetup, kernelFamilies = old, oldSetup, oldFams })
}

func TestOnceExitCodes(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "objects.yaml", demoObjects)
	args := []string{"--manifests", dir, "--hostname-override", "node-a", "--once", "--healthz-bind-address", "", "--metrics-bind-address", ""}

	ok := &fakeBackend{}
	useBackend(t, ok)
	code, _, stderr := runMain(t, args...)
	if code != 0 {
		t.Fatalf("successful --once exited %d: %s", code, stderr)
	}
	if len(ok.syncs) != 1 || !ok.syncs[0][0].FullSync {
		t.Fatalf("want exactly one full sync, got %d", len(ok.syncs))
	}
	snap := ok.syncs[0][0]
	if len(snap.Services) != 1 || snap.Services[0].Name.String() != "demo/web:http" || len(snap.Services[0].ClusterEndpoints) != 1 {
		t.Errorf("the sync did not get the planned service: %+v", snap.Services)
	}
	if !strings.Contains(stderr, "demo/broken") {
		t.Errorf("the broken service must be named in the log: %s", stderr)
	}

	bad := &fakeBackend{fail: errors.New("iptables-restore: line 7 failed")}
	useBackend(t, bad)
	code, _, stderr = runMain(t, args...)
	if code != 1 {
		t.Errorf("failed --once exited %d, want 1", code)
	}
	if !strings.Contains(stderr, "switchyard: sync failed: ") || !strings.Contains(stderr, "iptables-restore: line 7 failed") {
		t.Errorf("no clear message: %s", stderr)
	}
}

// TestOnceProgramsARealNamespace runs the real iptables backend, --once,
// inside a network namespace the test creates.
func TestOnceProgramsARealNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ns := fmt.Sprintf("swy-app-once-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	bin := buildBinary(t)
	dir := t.TempDir()
	writeFile(t, dir, "objects.yaml", demoObjects)
	run := func(args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...).CombinedOutput()
		return string(out), err
	}
	common := []string{"--hostname-override", "node-a", "--healthz-bind-address", "", "--metrics-bind-address", ""}
	if out, err := run(append([]string{"--manifests", dir, "--once"}, common...)...); err != nil {
		t.Fatalf("--once failed: %v\n%s", err, out)
	}
	save, err := exec.Command("ip", "netns", "exec", ns, "iptables-save", "-t", "nat").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(save), "--to-destination 10.244.0.11:8080") || !strings.Contains(string(save), `"demo/web:http`) {
		t.Errorf("iptables-save lacks the service:\n%s", save)
	}
	if out, err := run(append([]string{"--cleanup"}, common...)...); err != nil {
		t.Fatalf("--cleanup failed: %v\n%s", err, out)
	}
	save, _ = exec.Command("ip", "netns", "exec", ns, "iptables-save").CombinedOutput()
	if strings.Contains(string(save), "SWY-") {
		t.Errorf("--cleanup left SWY- rules:\n%s", save)
	}
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := t.TempDir() + "/switchyard"
	out, err := exec.Command("go", "build", "-o", bin, "github.com/switchyard-proxy/switchyard/cmd/switchyard").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestCleanupKubeProxyAfterFirstSync: --cleanup-kube-proxy removes
// kube-proxy's state only after switchyard's own sync succeeded, once.
func TestCleanupKubeProxyAfterFirstSync(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "objects.yaml", demoObjects)
	args := []string{"--manifests", dir, "--hostname-override", "node-a", "--once", "--cleanup-kube-proxy",
		"--proxy-mode", "ipvs", "--healthz-bind-address", "", "--metrics-bind-address", ""}
	var calls []kubeproxyclean.Config
	var syncsAtCall int
	b := &fakeBackend{}
	old := kubeProxyCleaner
	kubeProxyCleaner = func(_ context.Context, cfg kubeproxyclean.Config) (kubeproxyclean.Report, error) {
		calls = append(calls, cfg)
		b.mu.Lock()
		syncsAtCall = len(b.syncs)
		b.mu.Unlock()
		return kubeproxyclean.Report{}, errors.New("partly failed")
	}
	t.Cleanup(func() { kubeProxyCleaner = old })

	b.fail = errors.New("apply failed")
	useBackend(t, b)
	if code, _, _ := runMain(t, args...); code != 1 || len(calls) != 0 {
		t.Fatalf("failed sync: exit %d, cleaner called %d times; want 1 and 0", code, len(calls))
	}
	b.fail = nil
	code, _, stderr := runMain(t, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if len(calls) != 1 || syncsAtCall == 0 || !calls[0].KeepVirtualServers {
		t.Fatalf("cleaner calls %d (after %d syncs), cfg %+v; want one after the sync, keeping node-port virtual servers in ipvs mode", len(calls), syncsAtCall, calls)
	}
	if !strings.Contains(stderr, "kube-proxy's leftovers failed in part") {
		t.Errorf("the cleaner's failure is not logged:\n%s", stderr)
	}
	if code, _, _ := runMain(t, "--cleanup", "--cleanup-kube-proxy"); code != 2 {
		t.Errorf("--cleanup --cleanup-kube-proxy exited %d, want 2", code)
	}
}
