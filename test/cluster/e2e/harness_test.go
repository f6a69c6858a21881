package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"k8s.io/client-go/kubernetes"

	"github.com/switchyard-proxy/switchyard/test/cluster"
	"github.com/switchyard-proxy/switchyard/test/lab"
)

// Addresses and names of the lab the suite builds.
const (
	nodeName    = "node-a"
	otherNode   = "node-b" // endpoints "elsewhere": same lab routing, another nodeName
	targetPort  = 8080
	metricsAt   = "127.0.0.1:10249"
	healthzAt   = "127.0.0.1:10256"
	clusterCIDR = "10.244.0.0/16"
)

// waitTimeout bounds every poll for a state switchyard must reach. It is
// generous: the machines running this are shared and slow.
const waitTimeout = 90 * time.Second

var (
	clientIP = netip.MustParseAddr("10.244.0.2")
	podIPs   = map[string]netip.Addr{
		"pod-a": netip.MustParseAddr("10.244.0.11"),
		"pod-b": netip.MustParseAddr("10.244.0.12"),
		"pod-c": netip.MustParseAddr("10.244.0.13"),
		"pod-d": netip.MustParseAddr("10.244.0.14"),
	}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if switchyardBuild.dir != "" {
		_ = os.RemoveAll(switchyardBuild.dir)
	}
	os.Exit(code)
}

var switchyardBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// switchyardBinary builds cmd/switchyard once per test binary into a
// temporary folder that TestMain removes (the Go build cache makes it take
// seconds after the first time).
func switchyardBinary(t testing.TB) string {
	t.Helper()
	switchyardBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "swy-e2e-build-")
		if err != nil {
			switchyardBuild.err = fmt.Errorf("build folder: %w", err)
			return
		}
		switchyardBuild.dir = dir
		out := filepath.Join(dir, "switchyard")
		cmd := exec.Command(goTool(), "build", "-o", out, "./cmd/switchyard")
		cmd.Dir = cluster.RepoRoot()
		if b, err := cmd.CombinedOutput(); err != nil {
			switchyardBuild.err = fmt.Errorf("go build ./cmd/switchyard: %w\n%s", err, b)
			return
		}
		switchyardBuild.path = out
	})
	if switchyardBuild.err != nil {
		t.Fatal(switchyardBuild.err)
	}
	return switchyardBuild.path
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// nsDialer returns a dial function whose sockets are created inside the
// network namespace ns. The calling goroutine's namespace is untouched: the
// socket is made on a locked OS thread that enters ns and comes back, and a
// socket stays in the namespace it was created in.
func nsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		target, err := netns.GetFromName(ns)
		if err != nil {
			return nil, fmt.Errorf("open namespace %s: %w", ns, err)
		}
		defer target.Close()
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			orig, err := netns.Get()
			if err != nil {
				runtime.UnlockOSThread()
				ch <- result{err: fmt.Errorf("current namespace: %w", err)}
				return
			}
			defer orig.Close()
			if err := netns.Set(target); err != nil {
				runtime.UnlockOSThread()
				ch <- result{err: fmt.Errorf("enter namespace %s: %w", ns, err)}
				return
			}
			var d net.Dialer
			c, derr := d.DialContext(ctx, network, addr)
			if err := netns.Set(orig); err != nil {
				// Keep the thread locked: Go retires it with this goroutine.
				if c != nil {
					c.Close()
				}
				ch <- result{err: fmt.Errorf("leave namespace %s: %w", ns, err)}
				return
			}
			runtime.UnlockOSThread()
			ch <- result{c: c, err: derr}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// env is one lab, one API server inside its node namespace and the
// clients that reach them from the test process.
type env struct {
	t       *testing.T
	lab     *lab.Lab
	cluster *cluster.Cluster
	// client is an admin clientset that dials inside the node namespace.
	client kubernetes.Interface
	// http dials inside the node namespace (switchyard's /metrics, /healthz).
	http *http.Client
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// newEnv builds the lab (a client pod without server, four echo pods) and
// starts the control plane on 127.0.0.1 inside the lab's node namespace,
// where switchyard will run.
func newEnv(t *testing.T) *env {
	t.Helper()
	pods := []lab.Pod{{Name: "client", IP: clientIP, NoEcho: true}}
	for _, name := range []string{"pod-a", "pod-b", "pod-c", "pod-d"} {
		pods = append(pods, lab.Pod{Name: name, IP: podIPs[name], TCPPorts: []uint16{targetPort}})
	}
	return newEnvWith(t, pods)
}

// newEnvWith is newEnv with the given lab pods.
func newEnvWith(t *testing.T, pods []lab.Pod) *env {
	t.Helper()
	l := lab.New(t, lab.Spec{Pods: pods})
	// Registered after the lab: the control plane stops before the
	// namespace it runs in is deleted.
	c := cluster.Start(t, cluster.WithNetNS(l.Node))
	dial := nsDialer(l.Node)
	c.Config.Dial = dial
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		t.Fatalf("admin clientset: %v", err)
	}
	// cluster's own helpers (ServiceAccountToken) use c.Client.
	c.Client = client
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &env{
		t: t, lab: l, cluster: c, client: client, dial: dial,
		http: &http.Client{Transport: tr, Timeout: 5 * time.Second},
	}
}

// apiServerUp tells whether something accepts TCP connections on the API
// server's port (inside the node namespace).
func (e *env) apiServerUp() bool {
	host := strings.TrimPrefix(e.cluster.Server, "https://")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c, err := e.dial(ctx, "tcp", host)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// switchyard is a switchyard process running in the lab's node namespace.
type switchyard struct {
	proc *lab.Process
}

// startSwitchyard runs switchyard against the API server with kubeconfig
// (and extra flags).
func (e *env) startSwitchyard(kubeconfig string, extra ...string) *switchyard {
	e.t.Helper()
	args := []string{switchyardBinary(e.t),
		"--kubeconfig", kubeconfig, "--hostname-override", nodeName,
		"--proxy-mode", "iptables", "--iptables-backend", "nft",
		"--cluster-cidr", clusterCIDR,
		"--metrics-bind-address", metricsAt, "--healthz-bind-address", healthzAt,
		"--min-sync-period", "250ms", "--log-level", "debug",
	}
	args = append(args, extra...)
	s := &switchyard{proc: e.lab.Start(e.lab.Node, args...)}
	e.t.Cleanup(func() {
		if e.t.Failed() {
			e.t.Logf("switchyard output, last lines:\n%s", tail(s.proc.Output(), 60))
		}
	})
	return s
}

// running fails with switchyard's output when the process has exited.
func (s *switchyard) running() error {
	select {
	case <-s.proc.Done():
		return fmt.Errorf("switchyard exited; output:\n%s", tail(s.proc.Output(), 30))
	default:
		return nil
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// get fetches http://addr/path inside the node namespace.
func (e *env) get(addr, path string) (int, string, error) {
	return e.getTimeout(addr, path, e.http.Timeout)
}

// metricSum adds up the samples of the metric named name (exactly, labels
// aside) in a Prometheus text exposition; false when there is none.
func metricSum(text, name string) (float64, bool) {
	var sum float64
	found := false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

// iptablesSave returns iptables-save of the node namespace (both tables).
func (e *env) iptablesSave() (string, error) {
	return e.lab.Exec(e.lab.Node, "iptables-nft-save")
}

// eventually polls f every 200ms until it returns nil, and fails the test
// with f's last error when waitTimeout passes.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(waitTimeout)
	for {
		err := f()
		if err == nil {
			t.Logf("%s: after %s", what, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after %s: %v", what, waitTimeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
