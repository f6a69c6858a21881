// Command swy-testcluster runs a throwaway Kubernetes control plane for
// tests: an embedded etcd and a real kube-apiserver in one process. Once
// /readyz answers 200 it writes an admin kubeconfig (bearer-token auth) to
// --kubeconfig-out and prints its path. SIGTERM or SIGINT stops both
// components; without --data-dir all state lives in a temporary folder that
// is removed on exit.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"

	"github.com/switchyard-proxy/switchyard/test/cluster/internal/kubeconfig"
	"github.com/switchyard-proxy/switchyard/test/cluster/internal/pki"
)

// started is when the process began, for the "ready in" message.
var started = time.Now()

// options are the command-line flags.
type options struct {
	kubeconfigOut  string
	bindAddress    string
	securePort     int
	dataDir        string
	userTokens     []string
	serviceCIDR    string
	apiserverExtra []string
	readyTimeout   time.Duration
}

// state is what a --data-dir keeps across restarts, so that clients and
// kubeconfigs written by an earlier run keep working.
type state struct {
	SecurePort     int    `json:"securePort"`
	EtcdClientPort int    `json:"etcdClientPort"`
	EtcdPeerPort   int    `json:"etcdPeerPort"`
	AdminToken     string `json:"adminToken"`
}

func main() {
	var o options
	fs := pflag.NewFlagSet("swy-testcluster", pflag.ExitOnError)
	fs.StringVar(&o.kubeconfigOut, "kubeconfig-out", "", "where to write the admin kubeconfig once the API server is ready (required)")
	fs.StringVar(&o.bindAddress, "bind-address", "127.0.0.1", "address kube-apiserver listens and advertises on")
	fs.IntVar(&o.securePort, "secure-port", 0, "kube-apiserver port; 0 reuses the port of the last run in --data-dir, or picks a free one")
	fs.StringVar(&o.dataDir, "data-dir", "", "folder for etcd data, certificates and tokens, kept on exit; default: a temporary folder removed on exit")
	fs.StringArrayVar(&o.userTokens, "user-token", nil, "extra static token user, TOKEN,USER,UID[,GROUP...] (repeatable)")
	fs.StringVar(&o.serviceCIDR, "service-cluster-ip-range", "10.96.0.0/16", "service cluster IP range(s), comma separated")
	fs.StringArrayVar(&o.apiserverExtra, "apiserver-arg", nil, "extra kube-apiserver flag, e.g. --apiserver-arg=--v=2 (repeatable); it replaces a default flag of the same name")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 2*time.Minute, "give up if /readyz is not 200 within this time")
	_ = fs.Parse(os.Args[1:])
	if o.kubeconfigOut == "" {
		fmt.Fprintln(os.Stderr, "swy-testcluster: --kubeconfig-out is required")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "swy-testcluster: %v\n", err)
		os.Exit(1)
	}
}

func run(o options) (err error) {
	// The API server command owns SIGTERM/SIGINT handling: its context is
	// cancelled on the first signal. Create it before anything else so a
	// signal during start-up still leads to a clean exit.
	cmd := app.NewAPIServerCommand()
	ctx := cmd.Context()

	bindIP := net.ParseIP(o.bindAddress)
	if bindIP == nil {
		return fmt.Errorf("--bind-address %q is not an IP address", o.bindAddress)
	}
	hostIP := bindIP
	if bindIP.IsUnspecified() {
		hostIP = net.IPv4(127, 0, 0, 1)
	}

	dir := o.dataDir
	if dir == "" {
		dir, err = os.MkdirTemp("", "swy-testcluster-")
		if err != nil {
			return fmt.Errorf("create temp dir: %w", err)
		}
		defer func() {
			if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
				err = fmt.Errorf("remove temp dir: %w", rerr)
			}
		}()
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}

	st, err := loadState(dir, o, hostIP)
	if err != nil {
		return err
	}
	// In-cluster clients (pods) reach the API server at the kubernetes
	// Service's cluster IP, the first address of each service range.
	certIPs := []net.IP{hostIP}
	for _, cidr := range strings.Split(o.serviceCIDR, ",") {
		_, n, err := net.ParseCIDR(strings.TrimSpace(cidr))
		if err != nil {
			return fmt.Errorf("--service-cluster-ip-range %q: %w", o.serviceCIDR, err)
		}
		first := slices.Clone(n.IP)
		first[len(first)-1]++
		certIPs = append(certIPs, first)
	}
	files, err := pki.Ensure(filepath.Join(dir, "pki"), certIPs)
	if err != nil {
		return fmt.Errorf("prepare certificates: %w", err)
	}
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := writeTokens(tokenFile, st.AdminToken, o.userTokens); err != nil {
		return err
	}

	etcd, err := startEtcd(ctx, filepath.Join(dir, "etcd"), st)
	if err != nil {
		return err
	}
	defer etcd.Close()

	server := "https://" + net.JoinHostPort(hostIP.String(), strconv.Itoa(st.SecurePort))
	caPEM, err := os.ReadFile(files.CACert)
	if err != nil {
		return fmt.Errorf("read CA: %w", err)
	}
	readyErr := make(chan error, 1)
	go func() {
		if err := announceWhenReady(ctx, o, server, caPEM, st.AdminToken); err != nil {
			readyErr <- err
			// The API server owns the signal context: ask it to stop the
			// same way a user would, so the deferred clean-up still runs.
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		}
	}()

	args := []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(st.EtcdClientPort),
		"--bind-address=" + o.bindAddress,
		"--advertise-address=" + hostIP.String(),
		"--secure-port=" + strconv.Itoa(st.SecurePort),
		"--cert-dir=" + files.Dir,
		"--tls-cert-file=" + files.ServerCert,
		"--tls-private-key-file=" + files.ServerKey,
		"--service-cluster-ip-range=" + o.serviceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + files.SAKey,
		"--service-account-signing-key-file=" + files.SAKey,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--endpoint-reconciler-type=none",
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--profiling=false",
		// Without this, open watches hold shutdown for --request-timeout
		// (60 s); with it, in-flight requests drain and the HTTP server
		// then closes within 2 s, watches included.
		"--shutdown-send-retry-after=true",
	}
	args = append(withoutOverridden(args, o.apiserverExtra), o.apiserverExtra...)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	select {
	case err := <-readyErr:
		return err
	default:
	}
	if o.dataDir == "" {
		_ = os.Remove(o.kubeconfigOut)
	}
	return nil
}

// loadState reads the state of an earlier run in dir, or makes a new one.
func loadState(dir string, o options, hostIP net.IP) (state, error) {
	var st state
	path := filepath.Join(dir, "state.json")
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &st); err != nil {
			return st, fmt.Errorf("parse %s: %w", path, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return st, fmt.Errorf("read state: %w", err)
	}
	if o.securePort != 0 {
		st.SecurePort = o.securePort
	}
	for _, p := range []struct {
		port *int
		ip   net.IP
	}{
		{&st.SecurePort, hostIP},
		{&st.EtcdClientPort, net.IPv4(127, 0, 0, 1)},
		{&st.EtcdPeerPort, net.IPv4(127, 0, 0, 1)},
	} {
		if *p.port == 0 {
			if *p.port, err = freePort(p.ip); err != nil {
				return st, err
			}
		}
	}
	if st.AdminToken == "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		st.AdminToken = hex.EncodeToString(b)
	}
	data, err = json.MarshalIndent(st, "", "  ")
	if err != nil {
		return st, fmt.Errorf("encode state: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return st, fmt.Errorf("write state: %w", err)
	}
	return st, nil
}

func freePort(ip net.IP) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("pick a free port on %s: %w", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeTokens writes kube-apiserver's static token file: the admin user
// (group system:masters) and every --user-token.
func writeTokens(path, adminToken string, extra []string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create token file: %w", err)
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{adminToken, "admin", "admin", "system:masters"})
	for _, spec := range extra {
		parts := strings.Split(spec, ",")
		if len(parts) < 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
			f.Close()
			return fmt.Errorf("--user-token %q: want TOKEN,USER,UID[,GROUP...]", spec)
		}
		rec := parts[:3]
		if len(parts) > 3 {
			rec = append(rec, strings.Join(parts[3:], ","))
		}
		_ = w.Write(rec)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("write token file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close token file: %w", err)
	}
	return nil
}

// startEtcd starts a single-member etcd on loopback and waits until it
// serves clients.
func startEtcd(ctx context.Context, dir string, st state) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "swy-testcluster"
	cfg.Dir = dir
	cfg.LogLevel = "error"
	cfg.UnsafeNoFsync = true // throwaway data: durability is not worth the latency
	client := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(st.EtcdClientPort)}
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(st.EtcdPeerPort)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd: %w", err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("interrupted while starting etcd")
	case <-time.After(time.Minute):
		e.Close()
		return nil, fmt.Errorf("etcd not ready after a minute")
	}
}

// announceWhenReady polls /readyz until it answers 200, then writes the
// admin kubeconfig and prints where it is.
func announceWhenReady(ctx context.Context, o options, server string, caPEM []byte, token string) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("CA file holds no certificate")
	}
	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	deadline := time.Now().Add(o.readyTimeout)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		if err != nil {
			return fmt.Errorf("build readyz request: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if ctx.Err() != nil {
			return nil // shutting down
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s/readyz not 200 after %s (last error: %v)", server, o.readyTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := kubeconfig.Write(o.kubeconfigOut, server, caPEM, "admin", token); err != nil {
		return err
	}
	fmt.Printf("ready in %s: server=%s kubeconfig=%s\n", time.Since(started).Round(time.Millisecond), server, o.kubeconfigOut)
	return nil
}

// withoutOverridden drops the default flags that an --apiserver-arg sets
// again: list flags such as --disable-admission-plugins append rather than
// replace when repeated, so a default could not be undone otherwise.
func withoutOverridden(defaults, extra []string) []string {
	name := func(arg string) string { n, _, _ := strings.Cut(arg, "="); return n }
	set := map[string]bool{}
	for _, a := range extra {
		set[name(a)] = true
	}
	var out []string
	for _, a := range defaults {
		if !set[name(a)] {
			out = append(out, a)
		}
	}
	return out
}
