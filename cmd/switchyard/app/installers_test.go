package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/lab"
)

// installerLines are the kube-proxy command lines that installers really
// run (argv after the binary), with the kube-proxy configuration file the
// line points at when it has one (testdata/installers, see its README).
// $(NODE_NAME) is the downward-API variable the DaemonSets set.
var installerLines = []struct {
	name string
	args []string
	// config is the testdata file that replaces the line's --config path.
	config string
	// healthz is where /healthz must answer inside the namespace.
	healthz string
	// established is the nf_conntrack_tcp_timeout_established the line
	// leaves in the namespace (0: the kernel's default, untouched).
	established int
}{
	{
		// kubeadm v1.37.2: cmd/kubeadm/app/phases/addons/proxy/manifests.go
		// (KubeProxyDaemonSet19), with the config.conf kubeadm generates.
		name:        "kubeadm",
		args:        []string{"--config=/var/lib/kube-proxy/config.conf", "--hostname-override=$(NODE_NAME)"},
		config:      "kubeadm-config.conf",
		healthz:     "127.0.0.1:10256",
		established: 86400,
	},
	{
		// kubespray deploys kube-proxy through kubeadm (same DaemonSet), with
		// the KubeProxyConfiguration of its kubeadm-config.v1beta4.yaml.j2.
		name:        "kubespray",
		args:        []string{"--config=/var/lib/kube-proxy/config.conf", "--hostname-override=$(NODE_NAME)"},
		config:      "kubespray-config.conf",
		healthz:     "127.0.0.1:10256",
		established: 86400,
	},
	{
		// kops: nodeup/pkg/model/tests/golden/minimal/tasks-kube-proxy.yaml
		// (kubernetes/kops); the static pod runs it under go-runner, whose
		// --log-file/--also-stdout are go-runner's own. No
		// --hostname-override: kube-proxy uses the hostname.
		name: "kops",
		args: []string{"--cluster-cidr=100.96.0.0/11", "--conntrack-max-per-core=131072",
			"--kubeconfig=/var/lib/kube-proxy/kubeconfig", "--master=https://api.internal.minimal.example.com",
			"--oom-score-adj=-998", "--v=2"},
		healthz:     "127.0.0.1:10256",
		established: 86400,
	},
	{
		// k3s: pkg/daemons/agent/agent_linux.go kubeProxyArgs (k3s-io/k3s),
		// rendered as --key=value in sorted order.
		name: "k3s",
		args: []string{"--cluster-cidr=10.42.0.0/16", "--conntrack-max-per-core=0",
			"--conntrack-tcp-timeout-close-wait=0s", "--conntrack-tcp-timeout-established=0s",
			"--healthz-bind-address=127.0.0.1", "--hostname-override=$(NODE_NAME)",
			"--kubeconfig=/var/lib/rancher/k3s/agent/kubeproxy.kubeconfig", "--proxy-mode=iptables"},
		healthz: "127.0.0.1:10256",
	},
	{
		// RKE2: the same k3s argument map, run as the kube-proxy static pod
		// (rancher/rke2 pkg/podexecutor/staticpod.go KubeProxy), with RKE2's
		// kubeconfig path.
		name: "rke2",
		args: []string{"--cluster-cidr=10.42.0.0/16", "--conntrack-max-per-core=0",
			"--conntrack-tcp-timeout-close-wait=0s", "--conntrack-tcp-timeout-established=0s",
			"--healthz-bind-address=127.0.0.1", "--hostname-override=$(NODE_NAME)",
			"--kubeconfig=/var/lib/rancher/rke2/agent/kubeproxy.kubeconfig", "--proxy-mode=iptables"},
		healthz: "127.0.0.1:10256",
	},
	{
		// EKS's kube-proxy add-on DaemonSet: eksctl-io/eksctl
		// pkg/addons/default/testdata/sample-1.25.json, with the
		// kube-proxy-config ConfigMap.
		name:        "eks",
		args:        []string{"--v=2", "--config=/var/lib/kube-proxy-config/config", "--hostname-override=$(NODE_NAME)"},
		config:      "eks-config",
		healthz:     "127.0.0.1:10256",
		established: 86400,
	},
}

// TestInstallerCommandLines runs the switchyard binary with each
// installer's kube-proxy command line, unchanged but for two things:
// --manifests DIR is appended (switchyard's standalone source, so no API
// server is needed; it takes precedence over --kubeconfig and --master,
// which are then never read, so their paths need not exist), and the
// --config path is pointed at the testdata copy of the installer's file.
// Each runs in a network namespace the test creates, with the real
// iptables there: it must start, serve /healthz, program the service and
// stop cleanly on SIGTERM.
func TestInstallerCommandLines(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Skip("no iptables")
	}
	bin := buildBinary(t)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range installerLines {
		t.Run(line.name, func(t *testing.T) {
			node := "node-a"
			if !strings.Contains(strings.Join(line.args, " "), "--hostname-override") && line.config == "" {
				node = strings.ToLower(host)
			}
			ns := fmt.Sprintf("swy-inst-%d-%d", os.Getpid(), i)
			netnsUp(t, ns)
			kernelDefault := sysctlIn(t, ns, "net/netfilter/nf_conntrack_tcp_timeout_established")
			dir := t.TempDir()
			writeFile(t, dir, "objects.yaml", strings.ReplaceAll(demoObjects, "node-a", node))
			var args []string
			for _, a := range line.args {
				a = strings.ReplaceAll(a, "$(NODE_NAME)", node)
				if strings.HasPrefix(a, "--config=") {
					b, err := os.ReadFile(filepath.Join("testdata", "installers", line.config))
					if err != nil {
						t.Fatal(err)
					}
					a = "--config=" + writeFile(t, t.TempDir(), "config", string(b))
				}
				args = append(args, a)
			}
			args = append(args, "--manifests", dir)
			logs := &syncBuffer{}
			cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
			cmd.Stdout, cmd.Stderr = logs, logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			stopped := false
			t.Cleanup(func() {
				if !stopped {
					_ = cmd.Process.Kill()
					<-exited
				}
			})
			fail := func(format string, a ...any) {
				t.Helper()
				t.Fatalf(format+"\nswitchyard %s\nlogs:\n%s", append(a, strings.Join(args, " "), logs.String())...)
			}
			deadline := time.Now().Add(30 * time.Second)
			var code int
			var body string
			for {
				select {
				case err := <-exited:
					stopped = true
					fail("exited early: %v", err)
				default:
				}
				code, body = getIn(ns, "http://"+line.healthz+"/healthz")
				if code == http.StatusOK {
					break
				}
				if time.Now().After(deadline) {
					fail("/healthz on %s: %d %s", line.healthz, code, body)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if !strings.Contains(body, `"lastUpdated"`) {
				fail("/healthz body %q", body)
			}
			var save string
			for !strings.Contains(save, "--to-destination 10.244.0.11:8080") || !strings.Contains(save, `"demo/web:http`) {
				if time.Now().After(deadline) {
					fail("the service was not programmed:\n%s", save)
				}
				time.Sleep(50 * time.Millisecond)
				save = iptablesSaveIn(ns)
			}
			// The conntrack sysctls are per network namespace: the line's
			// settings (or kube-proxy's defaults) landed in ns.
			want := line.established
			if want == 0 {
				want = kernelDefault
			}
			if got := sysctlIn(t, ns, "net/netfilter/nf_conntrack_tcp_timeout_established"); got != want {
				fail("nf_conntrack_tcp_timeout_established = %d, want %d", got, want)
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				stopped = true
				if err != nil {
					fail("exit after SIGTERM: %v", err)
				}
			case <-time.After(30 * time.Second):
				fail("no exit after SIGTERM")
			}
			out := logs.String()
			if strings.Contains(out, "unknown flag") || strings.Contains(out, "\nE") {
				fail("error lines in the log")
			}
			var warns []string
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "W") {
					warns = append(warns, l)
				}
			}
			t.Logf("%d warnings:\n%s", len(warns), strings.Join(warns, "\n"))
		})
	}
}

// netnsUp creates ns with loopback up and the node's address (10.0.0.10,
// demoObjects' InternalIP) on a veth inside it; deleted at cleanup.
func netnsUp(t *testing.T, ns string) {
	t.Helper()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "-n", ns, "link", "add", "swy-n0", "type", "veth", "peer", "name", "swy-n1")
	run("ip", "-n", ns, "addr", "add", "10.0.0.10/24", "dev", "swy-n0")
	run("ip", "-n", ns, "link", "set", "swy-n0", "up")
	run("ip", "-n", ns, "link", "set", "swy-n1", "up")
}

// sysctlIn reads an integer sysctl inside ns.
func sysctlIn(t *testing.T, ns, name string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/sys/"+name).CombinedOutput()
	if err != nil {
		t.Fatalf("reading %s in %s: %v\n%s", name, ns, err, out)
	}
	var v int
	if _, err := fmt.Sscan(string(out), &v); err != nil {
		t.Fatalf("%s: %q: %v", name, out, err)
	}
	return v
}

// iptablesSaveIn returns the rules of both iptables flavours in ns.
func iptablesSaveIn(ns string) string {
	var b bytes.Buffer
	for _, tool := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		out, _ := exec.Command("ip", "netns", "exec", ns, tool).CombinedOutput()
		b.Write(out)
	}
	return b.String()
}

// getIn does an HTTP GET from inside ns (the socket is made on a thread
// that entered it) and returns the status and body; 0 and the error text
// when the request fails.
func getIn(ns, url string) (int, string) {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := lab.InNS(ns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
