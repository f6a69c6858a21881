package conformance

import (
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/echo"
	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// Request counts per packet of the real-traffic checks.
const (
	// spreadRequests are sent when several endpoints are allowed: enough
	// that more than one answers (a miss has odds below 1e-5 for two).
	spreadRequests = 20
	// stickyRequests are sent with session affinity: all must hit one pod.
	stickyRequests = 10
	// singleRequests are sent when one endpoint is allowed.
	singleRequests = 3
	// failTimeout bounds a request expected to go unanswered.
	failTimeout = 800 * time.Millisecond
)

var switchyardBuild struct {
	once sync.Once
	path string
	err  error
}

// switchyardBinary builds cmd/switchyard once per test binary, at a fixed
// place in the OS temp folder (replaced atomically by each build).
func switchyardBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("SWY_SWITCHYARD_BIN"); p != "" {
		return p // prebuilt (the VM, where compiling is slow)
	}
	switchyardBuild.once.Do(func() {
		goTool := "go"
		if _, err := exec.LookPath("go"); err != nil {
			goTool = "/usr/local/go/bin/go"
		}
		// One folder per checkout: several checkouts (git worktrees) may
		// run this suite at once, each with its own code.
		wd, _ := os.Getwd()
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("swy-conformance-build-%08x", crc32.ChecksumIEEE([]byte(wd))))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			switchyardBuild.err = err
			return
		}
		tmp := filepath.Join(dir, fmt.Sprintf("switchyard.%d", os.Getpid()))
		out, err := exec.Command(goTool, "build", "-o", tmp, "github.com/switchyard-proxy/switchyard/cmd/switchyard").CombinedOutput()
		if err != nil {
			_ = os.Remove(tmp)
			switchyardBuild.err = fmt.Errorf("go build ./cmd/switchyard: %w: %s", err, out)
			return
		}
		final := filepath.Join(dir, "switchyard")
		if err := os.Rename(tmp, final); err != nil {
			switchyardBuild.err = err
			return
		}
		switchyardBuild.path = final
	})
	if switchyardBuild.err != nil {
		t.Fatal(switchyardBuild.err)
	}
	return switchyardBuild.path
}

// labPods turns a fixture's pods into lab pods: echo servers on the TCP and
// UDP ports of their endpoints (none for the client, or for an SCTP-only
// pod, which swy-echo cannot serve).
func labPods(pods []scenarios.Pod) []lab.Pod {
	var out []lab.Pod
	for _, p := range pods {
		lp := lab.Pod{Name: p.Name, IP: p.IP, TCPPorts: p.Ports[proxier.TCP], UDPPorts: p.Ports[proxier.UDP]}
		lp.NoEcho = len(lp.TCPPorts) == 0 && len(lp.UDPPorts) == 0
		out = append(out, lp)
	}
	return out
}

// newScenarioLab builds the lab for a fixture's pods, with every outside
// client address the table uses.
func newScenarioLab(t *testing.T, pods []scenarios.Pod) *lab.Lab {
	t.Helper()
	var extra []netip.Addr
	for _, a := range scenarios.OutsideClients {
		if a != scenarios.Topology.OutsideClient {
			extra = append(extra, a)
		}
	}
	l := lab.New(t, lab.Spec{
		NodeIP:          scenarios.Topology.NodeIP,
		OutsideIP:       scenarios.Topology.OutsideClient,
		OutsideGW:       scenarios.Topology.NodeAddrs[1],
		OutsideExtraIPs: extra,
		Pods:            labPods(pods),
	})
	return l
}

// writeManifest writes a file into dir atomically (hidden temporary file,
// then rename), so a watching switchyard never reads half a file.
func writeManifest(t testing.TB, dir, name string, data []byte) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// commonFlags are the flags every switchyard run in the lab uses
// (iptables mode).
func commonFlags(dir string, cfg scenarios.Config) []string {
	return modeFlags(dir, cfg, "iptables")
}

// modeFlags are commonFlags with another --proxy-mode.
func modeFlags(dir string, cfg scenarios.Config, mode string) []string {
	args := []string{
		"--manifests", dir, "--hostname-override", scenarios.Topology.NodeName,
		"--proxy-mode", mode, "--iptables-backend", "nft",
		"--healthz-bind-address", "", "--metrics-bind-address", "",
	}
	if len(cfg.ClusterCIDRs) > 0 {
		var s []string
		for _, p := range cfg.ClusterCIDRs {
			s = append(s, p.String())
		}
		args = append(args, "--cluster-cidr", strings.Join(s, ","))
	}
	if cfg.MasqueradeAll {
		args = append(args, "--masquerade-all")
	}
	return args
}

// runOnce runs `switchyard --once` in the lab's node namespace and returns
// its output; a non-zero exit fails the test.
func runOnce(t *testing.T, l *lab.Lab, dir string, cfg scenarios.Config) string {
	t.Helper()
	return runOnceMode(t, l, dir, cfg, "iptables")
}

// runOnceMode is runOnce in another proxy mode.
func runOnceMode(t *testing.T, l *lab.Lab, dir string, cfg scenarios.Config, mode string) string {
	t.Helper()
	args := append([]string{"netns", "exec", l.Node, switchyardBinary(t), "--once"}, modeFlags(dir, cfg, mode)...)
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("switchyard --once: %v\n%s", err, out)
	}
	return string(out)
}

// client is where a packet is sent from in the lab.
type client struct {
	ns  string
	src netip.Addr // bound source address (invalid: the kernel picks)
	// want is the source address an endpoint sees when not masqueraded.
	want netip.Addr
}

func clientFor(l *lab.Lab, p scenarios.Packet, pods []scenarios.Pod) (client, error) {
	src, err := p.Source(pods)
	if err != nil {
		return client{}, err
	}
	switch p.Origin {
	case scenarios.FromPod:
		name := p.From
		if name == "" {
			name = scenarios.Topology.Client.Name
		}
		for _, pn := range l.Pods {
			if pn.Name == name {
				return client{ns: pn.NS, want: src}, nil
			}
		}
		return client{}, fmt.Errorf("no pod %s in the lab", name)
	case scenarios.FromNode:
		return client{ns: l.Node, src: src, want: src}, nil
	case scenarios.FromOutside:
		return client{ns: l.Outside, src: src, want: src}, nil
	}
	return client{}, fmt.Errorf("unknown origin %q", p.Origin)
}

func (c client) dial(proto proxier.Protocol, dst netip.AddrPort, timeout time.Duration) (echo.Reply, error) {
	return lab.DialFrom(c.ns, c.src, proto.Lower(), dst.String(), timeout)
}

// podNames maps endpoint "ip:port" strings to the lab pod answering there.
func podNames(pods []scenarios.Pod, eps []string) (map[string]bool, error) {
	names := map[string]bool{}
	for _, e := range eps {
		ap, err := netip.ParseAddrPort(e)
		if err != nil {
			return nil, err
		}
		found := false
		for _, p := range pods {
			if p.IP == ap.Addr() {
				names[p.Name] = true
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("no pod has endpoint %s", e)
		}
	}
	return names, nil
}

func isNodeAddr(a netip.Addr) bool {
	for _, n := range scenarios.Topology.NodeAddrs {
		if n == a {
			return true
		}
	}
	return false
}

// sendAndCheck sends real requests for p and checks them against its
// expectation; it returns the per-pod reply counts (for reachable
// packets) and every disagreement found.
func sendAndCheck(l *lab.Lab, p scenarios.Packet, pods []scenarios.Pod) (map[string]int, []string) {
	c, err := clientFor(l, p, pods)
	if err != nil {
		return nil, []string{err.Error()}
	}
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	switch {
	case len(p.Endpoints) > 0:
		allowed, err := podNames(pods, p.Endpoints)
		if err != nil {
			return nil, []string{err.Error()}
		}
		n := singleRequests
		switch {
		case p.Affinity:
			n = stickyRequests
		case len(p.Endpoints) > 1:
			n = spreadRequests
		}
		counts := map[string]int{}
		for i := 0; i < n; i++ {
			r, err := c.dial(p.Proto, p.Dst, lab.DefaultDialTimeout)
			if err != nil {
				bad("request %d: %v", i+1, err)
				continue
			}
			counts[r.Name]++
			if !allowed[r.Name] {
				bad("request %d answered by %s, not one of the allowed endpoints %v", i+1, r.Name, p.Endpoints)
			}
			switch peer := r.Peer.Addr(); {
			case p.Masqueraded && !isNodeAddr(peer):
				bad("request %d: %s saw source %v, want a node address (masqueraded)", i+1, r.Name, peer)
			case !p.Masqueraded && peer != c.want:
				bad("request %d: %s saw source %v, want the client's own %v", i+1, r.Name, peer, c.want)
			}
		}
		switch {
		case p.Affinity && len(counts) > 1:
			bad("session affinity: one client reached %d pods: %s", len(counts), fmtCounts(counts))
		case !p.Affinity && len(p.Endpoints) > 1 && len(counts) < 2:
			bad("no spread: %d requests over %d allowed endpoints all went to %s", n, len(p.Endpoints), fmtCounts(counts))
		}
		return counts, dedupe(errs)
	case p.Refused:
		if _, err := c.dial(p.Proto, p.Dst, lab.DefaultDialTimeout); !errors.Is(err, lab.ErrRefused) {
			bad("got %v, want connection refused at once", errOrReply(err))
		}
	case p.Dropped:
		if _, err := c.dial(p.Proto, p.Dst, failTimeout); !errors.Is(err, lab.ErrTimeout) {
			bad("got %v, want no answer at all (dropped)", errOrReply(err))
		}
	case p.Unserved:
		if r, err := c.dial(p.Proto, p.Dst, failTimeout); err == nil {
			bad("%s answered (saw %v), want no endpoint to receive it", r.Name, r.Peer)
		}
	}
	return nil, errs
}

func errOrReply(err error) string {
	if err == nil {
		return "an answer"
	}
	return err.Error()
}

// fmtCounts prints per-pod counts sorted by pod name.
func fmtCounts(counts map[string]int) string {
	var names []string
	for n := range counts {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s=%d", n, counts[n]))
	}
	if len(parts) == 0 {
		return "(no replies)"
	}
	return strings.Join(parts, " ")
}

// realTrafficSkip says why a packet cannot be checked with real traffic,
// or "" when it can.
func realTrafficSkip(p scenarios.Packet) string {
	if p.Proto == proxier.SCTP {
		return "SCTP: the lab's client (Go's net package) and swy-echo speak TCP and UDP only; the tracer covers SCTP"
	}
	return ""
}

// setupScenario decodes the named scenario, builds a lab with its pods and
// writes its fixture into a fresh manifest folder.
func setupScenario(t *testing.T, name string) (scenarios.Scenario, []scenarios.Pod, *lab.Lab, string) {
	t.Helper()
	s := scenarioNamed(t, name)
	objs, err := s.Objects()
	if err != nil {
		t.Fatal(err)
	}
	pods, err := objs.Pods()
	if err != nil {
		t.Fatal(err)
	}
	l := newScenarioLab(t, pods)
	dir := t.TempDir()
	yaml, err := s.YAML()
	if err != nil {
		t.Fatal(err)
	}
	writeManifest(t, dir, "objects.yaml", yaml)
	return s, pods, l, dir
}
