// Package cluster starts a real, throwaway Kubernetes control plane
// (embedded etcd + kube-apiserver, the swy-testcluster command of this
// module) for tests, and hands back clients for it.
//
// The command is built once per machine into <repo>/.cache/bin (the Go build
// cache makes later builds take seconds) and run as a child process. Set
// SWY_TESTCLUSTER_BIN to use a prebuilt binary instead.
package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/switchyard-proxy/switchyard/test/cluster/internal/kubeconfig"
)

// ReadyTimeout bounds how long Start waits for the API server to be ready.
const ReadyTimeout = 2 * time.Minute

// stopTimeout bounds how long Stop waits after SIGTERM before SIGKILL.
const stopTimeout = 30 * time.Second

// Cluster is a running (or stopped) test control plane.
type Cluster struct {
	// Kubeconfig is the path of the admin kubeconfig (group system:masters).
	Kubeconfig string
	// Server is the API server URL, e.g. https://127.0.0.1:41234.
	Server string
	// Config is the admin client configuration.
	Config *rest.Config
	// Client is an admin clientset. It keeps working across Restart.
	Client kubernetes.Interface
	// Dir holds the data dir, the log and the kubeconfigs; Stop removes it.
	Dir string
	// LogPath is the combined stdout and stderr of swy-testcluster.
	LogPath string

	opts    options
	bin     string
	port    int
	mu      sync.Mutex
	proc    *exec.Cmd
	done    chan struct{} // closed when proc has exited
	waitErr error
	logFile *os.File
	nextCfg int
}

// UserToken is a static token user the API server accepts.
type UserToken struct {
	Token, User, UID string
	Groups           []string
}

type options struct {
	bindAddress string
	serviceCIDR string
	netns       string
	userTokens  []UserToken
	extraArgs   []string
}

// Option changes how Start runs the control plane.
type Option func(*options)

// WithBindAddress makes kube-apiserver listen and advertise on addr
// instead of 127.0.0.1.
func WithBindAddress(addr string) Option { return func(o *options) { o.bindAddress = addr } }

// WithNetNS runs the control plane inside the named network namespace
// (through `ip netns exec`). Client and Config only work if the test can
// reach the bind address from where it runs.
func WithNetNS(name string) Option { return func(o *options) { o.netns = name } }

// WithServiceCIDR sets --service-cluster-ip-range (default 10.96.0.0/16).
func WithServiceCIDR(cidr string) Option { return func(o *options) { o.serviceCIDR = cidr } }

// WithUserToken adds a static token user.
func WithUserToken(u UserToken) Option {
	return func(o *options) { o.userTokens = append(o.userTokens, u) }
}

// WithAPIServerArgs passes extra flags to kube-apiserver.
func WithAPIServerArgs(args ...string) Option {
	return func(o *options) { o.extraArgs = append(o.extraArgs, args...) }
}

// Start builds (if needed) and starts a control plane, waits until it is
// ready and stops it when the test ends. It fails the test on error.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	bin, took, err := Binary()
	if err != nil {
		t.Fatalf("build swy-testcluster: %v", err)
	}
	if took > 10*time.Second {
		t.Logf("built swy-testcluster in %s", took.Round(time.Second))
	}
	c, err := New(bin, opts...)
	if err != nil {
		t.Fatalf("start test cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("swy-testcluster log (%s), last lines:\n%s", c.LogPath, c.LogTail(40))
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stop test cluster: %v", err)
		}
	})
	return c
}

// New starts a control plane from the swy-testcluster binary bin and waits
// until it is ready. The caller must call Stop.
func New(bin string, opts ...Option) (*Cluster, error) {
	o := options{bindAddress: "127.0.0.1", serviceCIDR: "10.96.0.0/16"}
	for _, opt := range opts {
		opt(&o)
	}
	dir, err := os.MkdirTemp("", "swy-cluster-")
	if err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	c := &Cluster{
		Kubeconfig: filepath.Join(dir, "admin.kubeconfig"),
		Dir:        dir,
		LogPath:    filepath.Join(dir, "swy-testcluster.log"),
		opts:       o,
		bin:        bin,
	}
	if err := c.launch(); err != nil {
		_ = c.Stop()
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("load admin kubeconfig: %w", err)
	}
	c.Config = cfg
	c.Server = cfg.Host
	u := strings.TrimPrefix(cfg.Host, "https://")
	if i := strings.LastIndexByte(u, ':'); i >= 0 {
		c.port, _ = strconv.Atoi(u[i+1:])
	}
	c.Client, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("admin clientset: %w", err)
	}
	return c, nil
}

// launch starts the child process and waits for its kubeconfig.
func (c *Cluster) launch() error {
	args := []string{
		"--kubeconfig-out=" + c.Kubeconfig,
		"--data-dir=" + filepath.Join(c.Dir, "data"),
		"--bind-address=" + c.opts.bindAddress,
		"--service-cluster-ip-range=" + c.opts.serviceCIDR,
	}
	if c.port != 0 {
		args = append(args, "--secure-port="+strconv.Itoa(c.port))
	}
	for _, u := range c.opts.userTokens {
		args = append(args, "--user-token="+strings.Join(append([]string{u.Token, u.User, u.UID}, u.Groups...), ","))
	}
	for _, a := range c.opts.extraArgs {
		args = append(args, "--apiserver-arg="+a)
	}
	name := c.bin
	if c.opts.netns != "" {
		args = append([]string{"netns", "exec", c.opts.netns, c.bin}, args...)
		name = "ip"
	}
	if err := os.Remove(c.Kubeconfig); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old kubeconfig: %w", err)
	}
	logFile, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	fmt.Fprintf(logFile, "=== %s starting %s %s\n", time.Now().Format(time.RFC3339Nano), name, strings.Join(args, " "))
	cmd := exec.Command(name, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Own process group: a Ctrl-C in the terminal reaches the test, whose
	// cleanup then stops the child, instead of racing it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	c.mu.Lock()
	c.proc, c.done, c.logFile, c.waitErr = cmd, done, logFile, nil
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		c.mu.Lock()
		c.waitErr = err
		c.mu.Unlock()
		close(done)
	}()

	deadline := time.Now().Add(ReadyTimeout)
	for {
		if _, err := os.Stat(c.Kubeconfig); err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("swy-testcluster exited before it was ready (%v); log %s:\n%s", c.exitErr(), c.LogPath, c.LogTail(30))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("swy-testcluster not ready after %s; log %s:\n%s", ReadyTimeout, c.LogPath, c.LogTail(30))
		}
	}
}

func (c *Cluster) exitErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waitErr
}

// PID returns the process id of the running swy-testcluster, or 0.
func (c *Cluster) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil || c.proc.Process == nil {
		return 0
	}
	select {
	case <-c.done:
		return 0
	default:
		return c.proc.Process.Pid
	}
}

// RSS returns the resident memory of the running control plane in bytes.
func (c *Cluster) RSS() (int64, error) {
	pid := c.PID()
	if pid == 0 {
		return 0, fmt.Errorf("not running")
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read process status: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS %q: %w", rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// stopProcess sends SIGTERM to the child and waits for it to exit,
// escalating to SIGKILL after stopTimeout.
func (c *Cluster) stopProcess() error {
	c.mu.Lock()
	proc, done, logFile := c.proc, c.done, c.logFile
	c.proc, c.logFile = nil, nil
	c.mu.Unlock()
	if proc == nil {
		return nil
	}
	defer logFile.Close()
	var err error
	select {
	case <-done:
	default:
		_ = proc.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(stopTimeout):
			_ = proc.Process.Kill()
			<-done
			err = fmt.Errorf("swy-testcluster (pid %d) ignored SIGTERM for %s; killed", proc.Process.Pid, stopTimeout)
		}
	}
	if err == nil {
		if werr := c.exitErr(); werr != nil {
			err = fmt.Errorf("swy-testcluster exited: %w", werr)
		}
	}
	return err
}

// Restart stops the control plane and starts it again on the same address,
// port, certificates, tokens and etcd data, as a real API server restart
// would. Clients made before keep working once it is ready again.
func (c *Cluster) Restart() error {
	if err := c.stopProcess(); err != nil {
		return fmt.Errorf("restart: stop: %w", err)
	}
	if err := c.launch(); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return nil
}

// Stop stops the control plane and removes its folder. It is safe to call
// more than once.
func (c *Cluster) Stop() error {
	err := c.stopProcess()
	if c.Dir != "" {
		if rerr := os.RemoveAll(c.Dir); rerr != nil && err == nil {
			err = fmt.Errorf("remove cluster dir: %w", rerr)
		}
	}
	return err
}

// LogTail returns the last n lines of the control plane's log.
func (c *Cluster) LogTail(n int) string {
	f, err := os.Open(c.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// ConfigForToken returns a client configuration for this cluster that
// authenticates with a bearer token instead of the admin's.
func (c *Cluster) ConfigForToken(token string) *rest.Config {
	cfg := rest.CopyConfig(c.Config)
	cfg.BearerToken = token
	cfg.BearerTokenFile = ""
	return cfg
}

// KubeconfigForToken writes a kubeconfig that authenticates with token to
// a new file in the cluster's folder and returns its path.
func (c *Cluster) KubeconfigForToken(token string) (string, error) {
	c.mu.Lock()
	c.nextCfg++
	path := filepath.Join(c.Dir, fmt.Sprintf("token-%d.kubeconfig", c.nextCfg))
	c.mu.Unlock()
	if err := kubeconfig.Write(path, c.Server, c.Config.CAData, "user", token); err != nil {
		return "", err
	}
	return path, nil
}

// ServiceAccountToken asks the API server (TokenRequest) for a token of
// the service account namespace/name, valid for an hour.
func (c *Cluster) ServiceAccountToken(ctx context.Context, namespace, name string) (string, error) {
	exp := int64(3600)
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}},
		metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

var (
	buildOnce sync.Once
	buildPath string
	buildTook time.Duration
	buildErr  error
)

// ModuleDir returns the folder of this Go module (test/cluster).
func ModuleDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// RepoRoot returns the root of the switchyard repository.
func RepoRoot() string { return filepath.Join(ModuleDir(), "..", "..") }

// Binary returns the path of a swy-testcluster binary, building it into
// <repo>/.cache/bin the first time in this process, and how long that took.
// A file lock keeps concurrent test processes from building at once.
func Binary() (string, time.Duration, error) {
	buildOnce.Do(func() {
		if p := os.Getenv("SWY_TESTCLUSTER_BIN"); p != "" {
			buildPath = p
			return
		}
		start := time.Now()
		buildPath, buildErr = build(filepath.Join(RepoRoot(), ".cache", "bin"))
		buildTook = time.Since(start)
	})
	return buildPath, buildTook, buildErr
}

func build(outDir string) (string, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", outDir, err)
	}
	lock, err := os.OpenFile(filepath.Join(outDir, "swy-testcluster.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("open build lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("take build lock: %w", err)
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()

	out := filepath.Join(outDir, "swy-testcluster")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/swy-testcluster")
	cmd.Dir = ModuleDir()
	var buf strings.Builder
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	// A cold build compiles all of kube-apiserver (minutes); say so.
	timer := time.AfterFunc(15*time.Second, func() {
		fmt.Fprintln(os.Stderr, "swy-testcluster: building kube-apiserver and etcd from source; the first build takes about 5 minutes, later ones seconds")
	})
	defer timer.Stop()
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/swy-testcluster: %w\n%s", err, buf.String())
	}
	return out, nil
}
