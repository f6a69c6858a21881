package nodetune

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestConntrackSysctlsInNetns applies the per-namespace conntrack sysctls
// with the real kernel inside a network namespace the test creates (the
// net.netfilter.* timeouts are per namespace), reads them back there, and
// checks that the host's values did not move. nf_conntrack_max is
// read-only outside the host's namespace: asking for more than it holds is
// reported as ErrReadOnly (a warning for the caller), and the global
// hashsize is never touched from there.
func TestConntrackSysctlsInNetns(t *testing.T) {
	if os.Getenv("NODETUNE_CHILD") == "1" {
		childApply(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	if _, err := os.Stat("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"); err != nil {
		t.Skip("no nf_conntrack in this kernel")
	}
	hostBefore := hostValues(t)
	ns := fmt.Sprintf("swy-nodetune-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^TestConntrackSysctlsInNetns$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "NODETUNE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "CHILD OK") {
		t.Fatalf("child did not finish:\n%s", out)
	}
	if after := hostValues(t); after != hostBefore {
		t.Errorf("host values changed: before %s, after %s", hostBefore, after)
	}
}

func hostValues(t *testing.T) string {
	t.Helper()
	var parts []string
	for _, p := range []string{
		"/proc/sys/net/netfilter/nf_conntrack_max", "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
		"/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait", "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal",
		"/proc/sys/net/netfilter/nf_conntrack_udp_timeout", "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream",
		"/sys/module/nf_conntrack/parameters/hashsize",
	} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, filepath.Base(p)+"="+strings.TrimSpace(string(b)))
	}
	return strings.Join(parts, " ")
}

// childApply runs inside the namespace.
func childApply(t *testing.T) {
	tu := &Tuner{}
	if tu.inInitialNetns() {
		t.Fatal("the child is in the host's network namespace")
	}
	cur := readInt(t, "/proc/sys/net/netfilter/nf_conntrack_max")
	c := Conntrack{
		MaxPerCore: 1, Min: int32(cur / 2), // below the current max: not written
		TCPEstablishedTimeout: 1234 * time.Second, TCPCloseWaitTimeout: 567 * time.Second, TCPBeLiberal: true,
		UDPTimeout: 31 * time.Second, UDPStreamTimeout: 121 * time.Second,
	}
	if err := tu.ApplyConntrack(c); err != nil {
		t.Fatalf("apply: %v", err)
	}
	for name, want := range map[string]int{
		"nf_conntrack_tcp_timeout_established": 1234, "nf_conntrack_tcp_timeout_close_wait": 567,
		"nf_conntrack_tcp_be_liberal": 1, "nf_conntrack_udp_timeout": 31, "nf_conntrack_udp_timeout_stream": 121,
		"nf_conntrack_max": cur,
	} {
		if got := readInt(t, "/proc/sys/net/netfilter/"+name); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	// More than the current max: the kernel refuses outside the host's
	// namespace; that is ErrReadOnly, and the other settings still apply.
	c.Min = int32(cur) * 2
	c.MaxPerCore = 1
	c.UDPTimeout = 33 * time.Second
	err := tu.ApplyConntrack(c)
	if err != nil && !errors.Is(err, ErrReadOnly) {
		t.Fatalf("raising the max: want nil or ErrReadOnly, got %v", err)
	}
	if err == nil && readInt(t, "/proc/sys/net/netfilter/nf_conntrack_max") != cur*2 {
		t.Errorf("no error but the max was not raised")
	}
	if got := readInt(t, "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"); got != 33 {
		t.Errorf("udp timeout after a read-only max = %d, want 33", got)
	}
	t.Log("read-only max:", err)

	// oom_score_adj of this (child) process: raising it needs no privilege.
	if err := ApplyOOMScoreAdj("", 500); err != nil {
		t.Fatal(err)
	}
	if got := readInt(t, "/proc/self/oom_score_adj"); got != 500 {
		t.Errorf("oom_score_adj = %d, want 500", got)
	}
	if err := ApplyOOMScoreAdj("", 1001); err == nil {
		t.Errorf("oom_score_adj 1001 accepted")
	}
	fmt.Println("CHILD OK " + strconv.Itoa(cur))
}
