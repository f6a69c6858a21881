package ipvs

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// countingKernel counts the write calls that reach the real kernel.
type countingKernel struct {
	Kernel
	writes []string
}

func (c *countingKernel) note(s string) { c.writes = append(c.writes, s) }
func (c *countingKernel) AddService(v *VirtualServer) error {
	c.note("add-service")
	return c.Kernel.AddService(v)
}
func (c *countingKernel) UpdateService(v *VirtualServer) error {
	c.note("update-service")
	return c.Kernel.UpdateService(v)
}
func (c *countingKernel) DelService(k Key) error {
	c.note("del-service")
	return c.Kernel.DelService(k)
}
func (c *countingKernel) AddDest(k Key, d RealServer) error {
	c.note("add-dest")
	return c.Kernel.AddDest(k, d)
}
func (c *countingKernel) UpdateDest(k Key, d RealServer) error {
	c.note("update-dest")
	return c.Kernel.UpdateDest(k, d)
}
func (c *countingKernel) DelDest(k Key, d RealServer) error {
	c.note("del-dest")
	return c.Kernel.DelDest(k, d)
}
func (c *countingKernel) AddAddress(a netip.Addr) error {
	c.note("add-address")
	return c.Kernel.AddAddress(a)
}
func (c *countingKernel) DelAddress(a netip.Addr) error {
	c.note("del-address")
	return c.Kernel.DelAddress(a)
}

// inNetns runs the test body on a locked OS thread inside a new network
// namespace (so IPVS, ipsets, iptables and sysctls are private), and skips
// when the kernel has no IPVS. Everything is removed afterwards.
func inNetns(t *testing.T, body func(t *testing.T, ns string, k *NetlinkKernel)) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"ip", "ipset", "ipvsadm", "iptables-nft-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: %v", tool, err)
		}
	}
	name := fmt.Sprintf("swy-ipvs-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	done := make(chan struct{})
	var noIPVS error
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread dies with the goroutine: never unlocked
		h, err := netns.GetFromName(name)
		if err != nil {
			t.Errorf("netns %s: %v", name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			t.Errorf("setns: %v", err)
			return
		}
		k, err := NewNetlinkKernel()
		if err != nil {
			noIPVS = err
			return
		}
		defer k.Close()
		body(t, name, k)
	}()
	<-done
	if noIPVS != nil {
		t.Skipf("no IPVS in this kernel (%v): run it with test/vm/run go test ./ipvs/...", noIPVS)
	}
}

func run(t *testing.T, ex iptables.Executor, name string, args ...string) string {
	t.Helper()
	out, stderr, err := ex.Run(context.Background(), nil, name, args...)
	if err != nil {
		t.Errorf("%s %v: %v: %s", name, args, err, stderr)
	}
	return string(out)
}

// ipvsadmBlocks parses `ipvsadm -Ln` into "service line" → sorted
// destination lines (weights and forward kept, counters dropped).
func ipvsadmBlocks(text string) map[string][]string {
	out := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0 || strings.HasPrefix(line, "IP Virtual") || strings.HasPrefix(line, "Prot ") || strings.Contains(line, "RemoteAddress"):
		case f[0] == "->":
			out[cur] = append(out[cur], strings.Join(f[1:4], " "))
			slices.Sort(out[cur])
		default:
			cur = strings.Join(f, " ")
			out[cur] = out[cur][:0:0]
		}
	}
	return out
}

func TestKernelSyncIdempotentCleanup(t *testing.T) {
	inNetns(t, func(t *testing.T, ns string, nk *NetlinkKernel) {
		ex := iptables.NetnsExecutor(ns)
		ck := &countingKernel{Kernel: nk}
		newBackend := func() *Backend {
			b, err := New(Config{Kernel: ck, Executor: ex, Sysctl: ProcSysctl{}, Logger: discard()})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		ctx := context.Background()
		// The node's addresses (node ports answer on them).
		for _, a := range []string{"192.168.50.10/32", "10.0.2.15/32"} {
			run(t, ex, "ip", "addr", "add", a, "dev", "lo")
		}
		run(t, ex, "ip", "link", "set", "lo", "up")
		// A foreign virtual server that must survive everything.
		run(t, ex, "ipvsadm", "-A", "-t", "172.30.0.1:8080", "-s", "wlc")

		snap := richSnapshot()
		b := newBackend()
		start := time.Now()
		defer func() { t.Logf("test body took %s", time.Since(start)) }()
		if _, err := b.Sync(ctx, []*proxier.Snapshot{snap}); err != nil {
			t.Fatalf("first sync: %v", err)
		}
		want := ipvsadmBlocks(FormatIPVS(mustRender(t, snap).Servers))
		got := ipvsadmBlocks(run(t, ex, "ipvsadm", "-Ln"))
		for svc, dests := range want {
			if !slices.Equal(got[svc], dests) {
				t.Errorf("ipvsadm: %q has %v, want %v", svc, got[svc], dests)
			}
		}
		if len(got) != len(want)+1 {
			t.Errorf("ipvsadm lists %d services, want %d (+1 foreign)", len(got), len(want))
		}
		if addrs := run(t, ex, "ip", "-o", "addr", "show", "dev", DummyInterface); !strings.Contains(addrs, "203.0.113.7/32") {
			t.Errorf("LB IP not on %s: %s", DummyInterface, addrs)
		}
		if sets := run(t, ex, "ipset", "list", "SWY-LOAD-BALANCER-SOURCE-CIDR"); !strings.Contains(sets, "203.0.113.7,tcp:443,198.51.100.0/24") {
			t.Errorf("ipset: %s", sets)
		}
		if v, _ := (ProcSysctl{}).Get("net/ipv4/vs/conntrack"); v != "1" {
			t.Errorf("net/ipv4/vs/conntrack = %s", v)
		}
		// The dump parses back to exactly the desired state.
		t.Logf("first sync done after %s", time.Since(start))
		ck.writes = nil
		if res, err := b.Sync(ctx, []*proxier.Snapshot{snap}); err != nil || res.Wrote || len(ck.writes) != 0 {
			t.Fatalf("second sync: err=%v wrote=%v netlink writes=%v", err, res.Wrote, ck.writes)
		}

		// kubernetes#92019: weight 0 left by a previous run is restored.
		run(t, ex, "ipvsadm", "-e", "-t", "10.96.0.20:443", "-r", "10.244.3.3:8443", "-m", "-w", "0")
		b = newBackend()
		ck.writes = nil
		if _, err := b.Sync(ctx, []*proxier.Snapshot{snap}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ck.writes, []string{"update-dest"}) {
			t.Errorf("restart writes %v, want one update-dest", ck.writes)
		}
		if out := run(t, ex, "ipvsadm", "-Ln", "-t", "10.96.0.20:443"); !strings.Contains(out, "10.244.3.3:8443              Masq    1") {
			t.Errorf("weight not restored:\n%s", out)
		}

		if err := b.Cleanup(ctx); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
		got = ipvsadmBlocks(run(t, ex, "ipvsadm", "-Ln"))
		if _, ok := got["TCP 172.30.0.1:8080 wlc"]; len(got) != 1 || !ok {
			t.Errorf("after cleanup: %v", got)
		}
		if out, _, _ := ex.Run(ctx, nil, "ip", "link", "show", DummyInterface); len(out) != 0 {
			t.Errorf("%s still exists", DummyInterface)
		}
		if out := run(t, ex, "ipset", "list", "-n"); strings.Contains(out, SetPrefix) {
			t.Errorf("sets left: %s", out)
		}
		for _, table := range tables {
			for _, tool := range []string{"iptables-nft-save", "iptables-legacy-save"} {
				if out, _, _ := ex.Run(ctx, nil, tool, "-t", table); strings.Contains(string(out), ChainPrefix) {
					t.Errorf("%s %s: chains left:\n%s", tool, table, out)
				}
			}
		}
	})
}

// NetlinkKernel reads and sets IPVS's timeouts as `ipvsadm -L --timeout`
// shows them; a zero field keeps the kernel's value.
func TestKernelTimeouts(t *testing.T) {
	inNetns(t, func(t *testing.T, ns string, nk *NetlinkKernel) {
		ex := iptables.NetnsExecutor(ns)
		before, err := nk.Timeouts()
		if err != nil {
			t.Fatal(err)
		}
		if err := nk.SetTimeouts(Timeouts{TCP: 3600 * time.Second, UDP: 45 * time.Second}); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("Timeout (tcp tcpfin udp): 3600 %d 45", int(before.TCPFin.Seconds()))
		if got := strings.TrimSpace(run(t, ex, "ipvsadm", "-L", "--timeout")); got != want {
			t.Errorf("ipvsadm -L --timeout: %q, want %q (before: %+v)", got, want, before)
		}
		after, err := nk.Timeouts()
		if err != nil || after != (Timeouts{TCP: 3600 * time.Second, TCPFin: before.TCPFin, UDP: 45 * time.Second}) {
			t.Errorf("Timeouts() = %+v, %v", after, err)
		}
	})
}
