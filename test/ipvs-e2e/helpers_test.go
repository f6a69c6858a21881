package ipvse2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/echo"
	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// Request counts of the traffic checks.
const (
	// spreadRequests are sent when several endpoints may answer: the odds
	// that one endpoint of two gets them all are below 1e-5.
	spreadRequests = 20
	// stickyRequests are sent with session affinity or a source-hash
	// scheduler: all must reach one endpoint.
	stickyRequests = 10
	// singleRequests are sent when one endpoint may answer.
	singleRequests = 3
	// failTimeout bounds a request that must go unanswered.
	failTimeout = 800 * time.Millisecond
	// syncDeadline bounds waiting for a long-running switchyard's sync
	// (the VM is 5-20x slower than the host).
	syncDeadline = 60 * time.Second
)

// tools are the commands the suite drives.
var tools = []string{"ip", "ipvsadm", "ipset", "iptables-nft-save", "conntrack"}

// requireIPVS skips t unless it runs as root in a kernel with IPVS. Inside
// the test VM (SWITCHYARD_VM set) a missing IPVS or tool fails instead.
func requireIPVS(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		if os.Getenv("SWITCHYARD_VM") == "" {
			t.Skipf("no IPVS in this kernel (%v): run `make test-vm`", err)
		}
		t.Fatalf("no IPVS inside the test VM: %v", err)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required: %v", tool, err)
		}
	}
}

var switchyardBuild struct {
	once sync.Once
	path string
	err  error
}

// switchyardBinary returns $SWY_SWITCHYARD_BIN (built on the host by
// make test-vm) or builds cmd/switchyard once.
func switchyardBinary(t testing.TB) string {
	t.Helper()
	switchyardBuild.once.Do(func() {
		if p := os.Getenv("SWY_SWITCHYARD_BIN"); p != "" {
			if _, err := os.Stat(p); err != nil {
				switchyardBuild.err = fmt.Errorf("SWY_SWITCHYARD_BIN: %w", err)
			}
			switchyardBuild.path = p
			return
		}
		goTool := "go"
		if _, err := exec.LookPath(goTool); err != nil {
			goTool = "/usr/local/go/bin/go"
		}
		dir, err := os.MkdirTemp("", "swy-ipvs-e2e-")
		if err != nil {
			switchyardBuild.err = err
			return
		}
		p := filepath.Join(dir, "switchyard")
		out, err := exec.Command(goTool, "build", "-o", p, "github.com/switchyard-proxy/switchyard/cmd/switchyard").CombinedOutput()
		if err != nil {
			switchyardBuild.err = fmt.Errorf("go build ./cmd/switchyard: %w: %s", err, out)
			return
		}
		switchyardBuild.path = p
	})
	if switchyardBuild.err != nil {
		t.Fatal(switchyardBuild.err)
	}
	return switchyardBuild.path
}

// newLab builds a lab for a fixture's pods (plus extra ones) with every
// outside client address the scenario table uses, and serves each pod's
// ports with an in-process echo server (no swy-echo build in the VM).
func newLab(t *testing.T, pods []scenarios.Pod) *lab.Lab {
	t.Helper()
	var extra []netip.Addr
	for _, a := range scenarios.OutsideClients {
		if a != scenarios.Topology.OutsideClient {
			extra = append(extra, a)
		}
	}
	var lp []lab.Pod
	for _, p := range pods {
		lp = append(lp, lab.Pod{Name: p.Name, IP: p.IP, TCPPorts: p.Ports[proxier.TCP], UDPPorts: p.Ports[proxier.UDP], NoEcho: true})
	}
	l := lab.New(t, lab.Spec{
		NodeIP:          scenarios.Topology.NodeIP,
		OutsideIP:       scenarios.Topology.OutsideClient,
		OutsideGW:       scenarios.Topology.NodeAddrs[1],
		OutsideExtraIPs: extra,
		Pods:            lp,
	})
	for _, p := range l.Pods {
		if len(p.TCPPorts)+len(p.UDPPorts) > 0 {
			startEcho(t, p.NS, p.Name, p.TCPPorts, p.UDPPorts)
		}
	}
	return l
}

// startEcho serves an echo server (package test/echo) inside ns until the
// test ends.
func startEcho(t *testing.T, ns, name string, tcp, udp []uint16) {
	t.Helper()
	var s *echo.Server
	err := lab.InNS(ns, func() error {
		var err error
		s, err = echo.Listen(name, tcp, udp)
		return err
	})
	if err != nil {
		t.Fatalf("echo server %s in %s: %v", name, ns, err)
	}
	s.Serve()
	t.Cleanup(func() { _ = s.Close() })
}

// writeManifest writes a file into dir atomically, so a watching
// switchyard never reads half a file.
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

// ruleFlags are the flags of every run in the lab that `switchyard rules`
// takes too.
func ruleFlags(dir string, cfg scenarios.Config, extra ...string) []string {
	args := []string{
		"--proxy-mode", "ipvs", "--iptables-backend", "nft",
		"--manifests", dir, "--hostname-override", scenarios.Topology.NodeName,
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
	return append(args, extra...)
}

// flags are ruleFlags plus the daemon's: no health or metrics servers.
func flags(dir string, cfg scenarios.Config, extra ...string) []string {
	return append(ruleFlags(dir, cfg, extra...), "--healthz-bind-address", "", "--metrics-bind-address", "")
}

// switchyard runs the switchyard binary with args in the lab's node
// namespace and returns its output; a non-zero exit fails the test.
func switchyard(t *testing.T, l *lab.Lab, args ...string) string {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.Node, switchyardBinary(t)}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("switchyard %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// runOnce runs `switchyard --once` in the node namespace.
func runOnce(t *testing.T, l *lab.Lab, dir string, cfg scenarios.Config, extra ...string) string {
	t.Helper()
	return switchyard(t, l, append([]string{"--once"}, flags(dir, cfg, extra...)...)...)
}

var syncedLine = regexp.MustCompile(`(?:msg=synced|"synced") .*wrote=(true|false)`)

// live is a long-running switchyard watching a manifest folder.
type live struct {
	t    *testing.T
	proc *lab.Process
	mark int // output offset up to which syncs were consumed
}

// startLive starts switchyard in the node namespace with debug logs (the
// runner logs every sync) and waits for its first sync.
func startLive(t *testing.T, l *lab.Lab, dir string, cfg scenarios.Config, extra ...string) *live {
	t.Helper()
	args := append([]string{switchyardBinary(t)}, flags(dir, cfg, extra...)...)
	args = append(args, "--min-sync-period", "0", "--log-level", "debug")
	s := &live{t: t, proc: l.Start(l.Node, args...)}
	s.waitSync("start", true)
	return s
}

// waitSync waits for the next sync logged after the last one consumed
// that wrote (wrote true) or did not (false), and returns the output from
// the end of the previous one up to the end of its log line (any other
// syncs in between included).
func (s *live) waitSync(what string, wrote bool) string {
	s.t.Helper()
	deadline := time.Now().Add(syncDeadline)
	for time.Now().Before(deadline) {
		out := s.proc.Output()
		for _, loc := range syncedLine.FindAllStringSubmatchIndex(out[s.mark:], -1) {
			got := out[s.mark+loc[2]:s.mark+loc[3]] == "true"
			if got == wrote {
				seg := out[s.mark : s.mark+loc[1]]
				s.mark += loc[1]
				return seg
			}
		}
		select {
		case <-s.proc.Done():
			s.t.Fatalf("switchyard exited while waiting for the sync after %s:\n%s", what, out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.t.Fatalf("no sync (wrote=%v) within %v after %s; output since the last one:\n%s", wrote, syncDeadline, what, s.proc.Output()[s.mark:])
	return ""
}

// dest is one real server line of `ipvsadm -Ln`.
type dest struct {
	Addr             string
	Weight           int
	Active, Inactive int
}

// virtualServer is one virtual server of `ipvsadm -Ln`.
type virtualServer struct {
	// Head is the service line, e.g. "TCP 10.96.0.10:80 rr" or
	// "TCP 10.96.5.1:80 rr persistent 600".
	Head  string
	Dests []dest
}

// parseIPVSADM parses `ipvsadm -Ln` output, keyed by service line.
func parseIPVSADM(text string) (map[string]*virtualServer, error) {
	out := map[string]*virtualServer{}
	var cur *virtualServer
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0 || strings.HasPrefix(line, "IP Virtual") || strings.HasPrefix(line, "Prot ") || strings.Contains(line, "RemoteAddress"):
		case f[0] == "->":
			if cur == nil || len(f) < 6 {
				return nil, fmt.Errorf("ipvsadm: unexpected line %q", line)
			}
			var n [3]int
			for i := range n {
				v, err := strconv.Atoi(f[3+i])
				if err != nil {
					return nil, fmt.Errorf("ipvsadm: line %q: %w", line, err)
				}
				n[i] = v
			}
			cur.Dests = append(cur.Dests, dest{Addr: f[1], Weight: n[0], Active: n[1], Inactive: n[2]})
		default:
			cur = &virtualServer{Head: strings.Join(f, " ")}
			out[cur.Head] = cur
		}
	}
	return out, nil
}

// ipvsadm returns the parsed `ipvsadm -Ln` of namespace ns.
func ipvsadm(t *testing.T, l *lab.Lab, ns string) map[string]*virtualServer {
	t.Helper()
	vs, err := parseIPVSADM(l.MustExec(ns, "ipvsadm", "-Ln"))
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// shape is a virtual-server map without the connection counters, as
// sorted lines, for comparisons.
func shape(vs map[string]*virtualServer) []string {
	var out []string
	for h, v := range vs {
		out = append(out, h)
		for _, d := range v.Dests {
			out = append(out, fmt.Sprintf("%s -> %s w%d", h, d.Addr, d.Weight))
		}
	}
	sort.Strings(out)
	return out
}

// findDest returns the real server addr of the virtual server head.
func findDest(vs map[string]*virtualServer, head, addr string) (dest, bool) {
	v := vs[head]
	if v == nil {
		return dest{}, false
	}
	i := slices.IndexFunc(v.Dests, func(d dest) bool { return d.Addr == addr })
	if i < 0 {
		return dest{}, false
	}
	return v.Dests[i], true
}

// rendered is the desired state `switchyard rules --proxy-mode=ipvs`
// prints, split in its parts.
type rendered struct {
	IPVS      string
	Addresses []string
	SetAdds   []string // "add SET MEMBER" lines
	Rules     string   // iptables-restore text
}

func parseRendered(text string) rendered {
	var r rendered
	var ipvs, rules strings.Builder
	part := ""
	for _, line := range strings.SplitAfter(text, "\n") {
		trim := strings.TrimSpace(line)
		switch {
		case trim == "# ipvsadm -Ln":
			part = "ipvs"
			continue
		case strings.HasPrefix(trim, "# addresses on"):
			part = "addrs"
			continue
		case trim == "# ipset save":
			part = "sets"
			continue
		case strings.HasPrefix(trim, "# switchyard ipvs-mode iptables"):
			part = "rules"
		}
		switch part {
		case "ipvs":
			ipvs.WriteString(line)
		case "addrs":
			if trim != "" {
				r.Addresses = append(r.Addresses, trim)
			}
		case "sets":
			if strings.HasPrefix(trim, "add ") {
				r.SetAdds = append(r.SetAdds, trim)
			}
		case "rules":
			rules.WriteString(line)
		}
	}
	r.IPVS, r.Rules = ipvs.String(), rules.String()
	sort.Strings(r.Addresses)
	sort.Strings(r.SetAdds)
	return r
}

// ruleCounts counts the -A rules per SWY- chain of iptables-save or
// iptables-restore text.
func ruleCounts(text string) map[string]int {
	out := map[string]int{}
	table := ""
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case strings.HasPrefix(f[0], "*"):
			table = f[0][1:]
		case f[0] == ":" || strings.HasPrefix(f[0], ":SWY-"):
			out[table+"/"+strings.TrimPrefix(f[0], ":")] += 0
		case f[0] == "-A" && len(f) > 1 && strings.HasPrefix(f[1], "SWY-"):
			out[table+"/"+f[1]]++
		}
	}
	return out
}

// jumpsTo lists the rules of iptables-save text that jump from a built-in
// chain to a SWY- chain, as "table/CHAIN -> TARGET".
func jumpsTo(text string) []string {
	var out []string
	table := ""
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], "*") {
			table = f[0][1:]
		}
		if len(f) < 2 || f[0] != "-A" || strings.HasPrefix(f[1], "SWY-") {
			continue
		}
		if i := slices.Index(f, "-j"); i >= 0 && i+1 < len(f) && strings.HasPrefix(f[i+1], "SWY-") {
			out = append(out, table+"/"+f[1]+" -> "+f[i+1])
		}
	}
	sort.Strings(out)
	return out
}

// ipsetAdds returns the sorted "add SET MEMBER" lines of SWY- sets in
// namespace ns (`ipset save`).
func ipsetAdds(t *testing.T, l *lab.Lab, ns string) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(l.MustExec(ns, "ipset", "save"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "add" && strings.HasPrefix(f[1], "SWY-") {
			out = append(out, strings.Join(f[:3], " "))
		}
	}
	sort.Strings(out)
	return out
}

// dummyAddrs returns the sorted addresses on swy-ipvs0 in ns.
func dummyAddrs(t *testing.T, l *lab.Lab, ns string) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(l.MustExec(ns, "ip", "-o", "-4", "addr", "show", "dev", "swy-ipvs0"), "\n") {
		f := strings.Fields(line)
		if i := slices.Index(f, "inet"); i >= 0 && i+1 < len(f) {
			out = append(out, strings.TrimSuffix(f[i+1], "/32"))
		}
	}
	sort.Strings(out)
	return out
}

// diffLines returns the lines only in a (prefixed "-") and only in b ("+").
func diffLines(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, "- "+x)
		}
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			out = append(out, "+ "+x)
		}
	}
	return out
}

// poll calls cond until it returns "" or the deadline passes; then it
// fails the test with cond's last complaint.
func poll(t *testing.T, what string, deadline time.Duration, cond func() string) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: still not true after %v: %s", what, deadline, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fmtCounts prints per-pod counts sorted by pod name.
func fmtCounts(counts map[string]int) string {
	var parts []string
	for n, c := range counts {
		parts = append(parts, fmt.Sprintf("%s=%d", n, c))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "(no replies)"
	}
	return strings.Join(parts, " ")
}
