// Package image_test starts switchyard's OCI image (make image) with a real
// OCI runtime, runc, as a kube-proxy pod runs: the container joins a lab
// node's network namespace (hostNetwork) with a manifest folder mounted in.
// It checks `switchyard --version`, a real `--once` sync (SWY- rules in the
// namespace, traffic to a cluster IP and a node port reaching the pod) and
// the iptables wrapper's choice of flavour (nft on an empty node; legacy
// where kubelet's hint chain is in iptables-legacy, and switchyard then
// writes iptables-legacy too); and a long-running
// switchyard as its DaemonSet runs it (health, metrics, SIGTERM).
//
// It needs root, umoci, runc and skopeo, and SWY_IMAGE_LAYOUT (and
// SWY_IMAGE_ARCHIVE, the docker-archive) pointing at what
// `make image` writes; `make test-image` sets all of that up.
// Without SWY_IMAGE_LAYOUT it skips.
package image_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/lab"
)

const objects = `apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 10.0.0.10}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.80
  ports: [{name: http, port: 80, targetPort: 80, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- addresses: [10.244.0.11]
  nodeName: node-a
`

// bundle is an unpacked image with its own runc state folder.
type bundle struct {
	t           *testing.T
	dir, state  string
	config      map[string]any
	version     string
	containerID int
}

func unpack(t *testing.T, layout string) *bundle {
	t.Helper()
	for _, tool := range []string{"umoci", "runc", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (make test-image installs it): %v", tool, err)
		}
	}
	tmp := t.TempDir()
	b := &bundle{t: t, dir: filepath.Join(tmp, "bundle"), state: filepath.Join(tmp, "state")}
	if out, err := exec.Command("umoci", "unpack", "--image", layout+":latest", b.dir).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack %s: %v\n%s", layout, err, out)
	}
	raw, err := os.ReadFile(filepath.Join(b.dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &b.config); err != nil {
		t.Fatalf("umoci's config.json: %v", err)
	}
	ann, _ := b.config["annotations"].(map[string]any)
	b.version, _ = ann["org.opencontainers.image.version"].(string)
	return b
}

// privilegedCaps are the capabilities of a privileged kube-proxy pod that
// switchyard uses, by number.
var privilegedCaps = map[string]uint{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7,
	"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_MODULE": 16,
	"CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24,
}

// grantableCaps returns those of privilegedCaps this process holds (the
// test machines' root lacks some, e.g. CAP_SYS_RESOURCE), as runc cannot
// grant more.
func grantableCaps(t *testing.T) []string {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var bnd uint64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			if bnd, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				t.Fatalf("CapBnd %q: %v", v, err)
			}
		}
	}
	var caps []string
	for name, bit := range privilegedCaps {
		if bnd&(1<<bit) != 0 {
			caps = append(caps, name)
		}
	}
	sort.Strings(caps)
	return caps
}

// command prepares the image's rootfs to run args in network namespace
// netns (as a hostNetwork pod), with the host folder mounts[dst]
// bind-mounted at dst, and returns the runc command that runs it in the
// foreground, and the container's ID.
func (b *bundle) command(netns string, mounts map[string]string, args ...string) (*exec.Cmd, string) {
	b.t.Helper()
	cfg := b.config
	proc := cfg["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = args
	proc["noNewPrivileges"] = false
	caps := map[string]any{}
	for _, set := range []string{"bounding", "effective", "permitted"} {
		caps[set] = grantableCaps(b.t)
	}
	proc["capabilities"] = caps
	linux := cfg["linux"].(map[string]any)
	linux["namespaces"] = []map[string]string{
		{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
		{"type": "network", "path": "/run/netns/" + netns},
	}
	linux["readonlyPaths"] = []string{}
	var ms []any
	for _, m := range cfg["mounts"].([]any) {
		if m.(map[string]any)["destination"] == "/sys/fs/cgroup" {
			continue // hosts with cgroup v1 hybrid; switchyard does not read cgroups
		}
		ms = append(ms, m)
	}
	for dst, src := range mounts {
		ms = append(ms, map[string]any{"destination": dst, "type": "bind", "source": src, "options": []string{"rbind", "ro"}})
	}
	cfg["mounts"] = ms
	raw, err := json.Marshal(cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	if err = os.WriteFile(filepath.Join(b.dir, "config.json"), raw, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.containerID++
	id := fmt.Sprintf("swy-image-%d-%d", os.Getpid(), b.containerID)
	b.t.Cleanup(func() { _ = exec.Command("runc", "--root", b.state, "delete", "--force", id).Run() })
	return exec.Command("runc", "--root", b.state, "run", "--bundle", b.dir, id), id
}

// run runs the container (see command) to its end and returns its output.
func (b *bundle) run(netns string, mounts map[string]string, args ...string) (string, error) {
	b.t.Helper()
	cmd, _ := b.command(netns, mounts, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// link returns where the image's /usr/sbin/NAME points.
func (b *bundle) link(name string) string {
	target, err := os.Readlink(filepath.Join(b.dir, "rootfs/usr/sbin", name))
	if err != nil {
		b.t.Fatal(err)
	}
	return target
}

// resetLinks points the unflavoured names back at the wrapper, as in the image.
func (b *bundle) resetLinks() {
	for _, n := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		p := filepath.Join(b.dir, "rootfs/usr/sbin", n)
		if err := os.Remove(p); err != nil {
			b.t.Fatal(err)
		}
		if err := os.Symlink("iptables-wrapper", p); err != nil {
			b.t.Fatal(err)
		}
	}
}

func layout(t *testing.T) string {
	l := os.Getenv("SWY_IMAGE_LAYOUT")
	if l == "" {
		t.Skip("SWY_IMAGE_LAYOUT is not set: run make test-image")
	}
	lab.RequireRoot(t)
	return l
}

func TestImageRunsAndSyncs(t *testing.T) {
	img := layout(t)
	l := lab.New(t, lab.Spec{Pods: []lab.Pod{{Name: "web-a", IP: mustAddr("10.244.0.11")}}})
	b := unpack(t, img)

	out, err := b.run(l.Node, nil, "/usr/local/bin/switchyard", "--version")
	if err != nil {
		t.Fatalf("switchyard --version in the image: %v\n%s", err, out)
	}
	if b.version == "" || !strings.Contains(out, b.version) {
		t.Errorf("--version printed %q, want the image's version %q", out, b.version)
	}
	// kube-proxy's path in its images runs switchyard too.
	if out, err := b.run(l.Node, nil, "/usr/local/bin/kube-proxy", "--version"); err != nil || !strings.Contains(out, b.version) {
		t.Errorf("/usr/local/bin/kube-proxy --version: %v %q", err, out)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "objects.yaml"), []byte(objects), 0o644); err != nil {
		t.Fatal(err)
	}
	// A fresh node has route_localnet off; switchyard turns it on (with the
	// image's sysctl) for node ports on 127.0.0.1.
	l.MustExec(l.Node, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=0")
	out, err = b.run(l.Node, map[string]string{"/manifests": dir}, "/usr/local/bin/switchyard",
		"--manifests=/manifests", "--hostname-override=node-a", "--once", "-v=2")
	if err != nil {
		t.Fatalf("switchyard --once in the image: %v\n%s", err, out)
	}
	save := l.MustExec(l.Node, "iptables-nft-save", "-t", "nat")
	if !strings.Contains(save, ":SWY-") || !strings.Contains(save, "10.244.0.11:80") {
		t.Fatalf("the namespace's nft rules lack switchyard's service:\n%s\nswitchyard said:\n%s", save, out)
	}
	r, err := lab.Dial(l.Node, "tcp", "10.96.0.80:80", 5*time.Second)
	if err != nil || r.Name != "web-a" {
		t.Errorf("node -> cluster IP: %v %v", r, err)
	}
	r, err = lab.Dial(l.Outside, "tcp", net.JoinHostPort(l.NodeIP.String(), "30080"), 5*time.Second)
	if err != nil || r.Name != "web-a" {
		t.Errorf("outside -> node port: %v %v", r, err)
	}
	if got := strings.TrimSpace(l.MustExec(l.Node, "sysctl", "-n", "net.ipv4.conf.all.route_localnet")); got != "1" {
		t.Errorf("route_localnet is %s after the sync, want 1; switchyard said:\n%s", got, out)
	}
	r, err = lab.Dial(l.Node, "tcp", "127.0.0.1:30080", 5*time.Second)
	if err != nil || r.Name != "web-a" {
		t.Errorf("node -> 127.0.0.1 node port: %v %v", r, err)
	}

	// The wrapper: an empty node's flavour is nft, and iptables-save in
	// the container then reads the same rules as the host's nft tools.
	out, err = b.run(l.Node, nil, "iptables-save", "-t", "nat")
	if err != nil {
		t.Fatalf("iptables-save in the image: %v\n%s", err, out)
	}
	if got := b.link("iptables"); got != "xtables-nft-multi" {
		t.Errorf("wrapper linked iptables to %q, want xtables-nft-multi", got)
	}
	if !strings.Contains(out, ":SWY-") {
		t.Errorf("iptables-save in the image lacks the SWY- chains:\n%s", out)
	}
}

func TestImageWrapperFollowsKubeletsHint(t *testing.T) {
	img := layout(t)
	ns := fmt.Sprintf("swy-image-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	// kubelet on an iptables-legacy host: its hint chain is in legacy's
	// mangle table; nft holds nothing.
	if out, err := exec.Command("ip", "netns", "exec", ns, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT").CombinedOutput(); err != nil {
		t.Fatalf("create hint chain: %v: %s", err, out)
	}
	b := unpack(t, img)
	out, err := b.run(ns, nil, "iptables-wrapper")
	if err != nil || strings.TrimSpace(out) != "legacy" {
		t.Fatalf("iptables-wrapper picked %q (%v), want legacy", out, err)
	}
	out, err = b.run(ns, nil, "iptables", "-t", "mangle", "-S")
	if err != nil || !strings.Contains(out, "-N KUBE-IPTABLES-HINT") {
		t.Fatalf("iptables -t mangle -S in the image: %v\n%s", err, out)
	}
	for _, n := range []string{"iptables", "ip6tables-restore"} {
		if got := b.link(n); got != "xtables-legacy-multi" {
			t.Errorf("wrapper linked %s to %q, want xtables-legacy-multi", n, got)
		}
	}
	// switchyard's own --iptables-backend=auto follows the same hint.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "objects.yaml"), []byte(objects), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := b.run(ns, map[string]string{"/manifests": dir}, "/usr/local/bin/switchyard",
		"--manifests=/manifests", "--hostname-override=node-a", "--once"); err != nil {
		t.Fatalf("switchyard --once: %v\n%s", err, out)
	}
	if save, err := exec.Command("ip", "netns", "exec", ns, "iptables-legacy-save", "-t", "nat").CombinedOutput(); err != nil || !strings.Contains(string(save), ":SWY-") {
		t.Errorf("switchyard did not write iptables-legacy on a legacy node: %v\n%s", err, save)
	}
	if save, _ := exec.Command("ip", "netns", "exec", ns, "iptables-nft-save", "-t", "nat").CombinedOutput(); strings.Contains(string(save), "SWY-") {
		t.Errorf("switchyard wrote iptables-nft on a legacy node:\n%s", save)
	}
	if out, err := b.run(ns, nil, "/usr/local/bin/switchyard", "--cleanup"); err != nil {
		t.Fatalf("switchyard --cleanup: %v\n%s", err, out)
	}
	b.resetLinks()
	// Without the hint, both empty: nft.
	if out, err := exec.Command("ip", "netns", "exec", ns, "iptables-legacy", "-t", "mangle", "-X", "KUBE-IPTABLES-HINT").CombinedOutput(); err != nil {
		t.Fatalf("delete hint chain: %v: %s", err, out)
	}
	if out, err := b.run(ns, nil, "iptables-wrapper"); err != nil || strings.TrimSpace(out) != "nft" {
		t.Fatalf("iptables-wrapper picked %q (%v), want nft", out, err)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestImageFormats has skopeo, an independent reader, check both outputs
// of make image: the OCI layout and the docker-archive tarball (copied
// into a fresh OCI layout, which verifies every digest).
func TestImageFormats(t *testing.T) {
	img := layout(t)
	archive := os.Getenv("SWY_IMAGE_ARCHIVE")
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Fatalf("skopeo is not installed (make test-image installs it): %v", err)
	}
	out, err := exec.Command("skopeo", "inspect", "oci:"+img+":latest").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"org.opencontainers.image.title": "switchyard"`) {
		t.Fatalf("skopeo inspect the OCI layout: %v\n%s", err, out)
	}
	if archive == "" {
		t.Skip("SWY_IMAGE_ARCHIVE is not set")
	}
	dst := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("skopeo", "copy", "-q", "docker-archive:"+archive, "oci:"+dst+":x").CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy the docker-archive: %v\n%s", err, out)
	}
}

// TestImageRunsAsDaemon runs the image as its DaemonSet does, a
// long-running switchyard (here from a manifest folder instead of the API
// server): /livez answers on the healthz port, the metrics port serves
// kube-proxy's series, traffic flows, and SIGTERM ends it cleanly.
func TestImageRunsAsDaemon(t *testing.T) {
	img := layout(t)
	l := lab.New(t, lab.Spec{Pods: []lab.Pod{{Name: "web-a", IP: mustAddr("10.244.0.11")}}})
	b := unpack(t, img)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "objects.yaml"), []byte(objects), 0o644); err != nil {
		t.Fatal(err)
	}
	// --conntrack-max-per-core=0: nf_conntrack_max and the hashsize are
	// global to the host, which a test must not change.
	cmd, id := b.command(l.Node, map[string]string{"/manifests": dir}, "/usr/local/bin/switchyard",
		"--manifests=/manifests", "--hostname-override=node-a", "--conntrack-max-per-core=0")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("runc run: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = exec.Command("runc", "--root", b.state, "kill", id, "KILL").Run()
			<-done
		}
	})

	var body string
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, b, err := httpGet(l.Node, "http://127.0.0.1:10256/livez")
		if err == nil && code == 200 {
			body = b
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/livez did not answer 200 (last: %d %v); switchyard said:\n%s", code, err, out.String())
		}
		select {
		case err := <-done:
			t.Fatalf("switchyard exited: %v\n%s", err, out.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	if !strings.Contains(body, `"lastUpdated"`) {
		t.Errorf("/livez body: %s", body)
	}
	if _, metrics, err := httpGet(l.Node, "http://127.0.0.1:10249/metrics"); err != nil ||
		!strings.Contains(metrics, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") {
		t.Errorf("metrics: %v\n%.2000s", err, metrics)
	}
	if r, err := lab.Dial(l.Node, "tcp", "10.96.0.80:80", 5*time.Second); err != nil || r.Name != "web-a" {
		t.Errorf("node -> cluster IP: %v %v", r, err)
	}

	if out, err := exec.Command("runc", "--root", b.state, "kill", id, "TERM").CombinedOutput(); err != nil {
		t.Fatalf("runc kill TERM: %v %s", err, out)
	}
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Errorf("switchyard did not exit cleanly on SIGTERM: %v\n%s", err, out.String())
		}
		t.Logf("switchyard said:\n%s", out.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("switchyard did not stop within 60s of SIGTERM:\n%s", out.String())
	}
}

// httpGet fetches url from inside network namespace ns.
func httpGet(ns, url string) (int, string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := lab.InNS(ns, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// syncBuffer is a bytes.Buffer safe for a process's output and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
