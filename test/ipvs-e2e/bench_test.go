package ipvse2e

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/ipvs"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/planner"
)

// benchServices is the service count of BenchmarkIPVSSync
// (SWY_BENCH_SERVICES overrides it); each has benchEndpoints endpoints and
// every tenth a node port.
const benchEndpoints = 10

func benchServices() int {
	if n, err := strconv.Atoi(os.Getenv("SWY_BENCH_SERVICES")); err == nil && n > 0 {
		return n
	}
	return 10000
}

// bigSnapshot returns n TCP services with m endpoints each (the first one
// local), every tenth with a node port.
func bigSnapshot(n, m int) *proxier.Snapshot {
	services := make([]*proxier.ServicePort, 0, n)
	for i := 0; i < n; i++ {
		eps := make([]proxier.Endpoint, 0, m)
		for j := 0; j < m; j++ {
			k := i*m + j
			a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(128 + k>>16), byte(k >> 8), byte(k)}), 8080)
			eps = append(eps, proxier.Endpoint{Addr: a, Ready: true, Serving: true, Local: j == 0})
		}
		sp := &proxier.ServicePort{
			Name:      proxier.ServicePortName{Namespace: fmt.Sprintf("ns%d", i%100), Name: fmt.Sprintf("svc%05d", i), Port: "http", Protocol: proxier.TCP},
			Protocol:  proxier.TCP,
			ClusterIP: netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)}),
			Port:      80,
		}
		if i%10 == 0 {
			sp.NodePort = uint16(30000 + i/10%2700)
		}
		planner.ResolveEndpoints(sp, eps, &planner.NodeInfo{Name: "node-a"})
		services = append(services, sp)
	}
	slices.SortFunc(services, func(a, b *proxier.ServicePort) int {
		if a.Name.Less(b.Name) {
			return -1
		}
		return 1
	})
	return &proxier.Snapshot{
		Family:            proxier.IPv4,
		NodeName:          "node-a",
		NodeIPs:           []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		NodePortAddresses: proxier.NodePortAddresses{All: true},
		Masquerade:        proxier.MasqueradeConfig{MarkBit: 14, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
		Services:          services,
		FullSync:          true,
	}
}

// withOneEndpointChange returns s with service i's first endpoint moved to
// a new address (k makes it unique), as a partial-sync snapshot.
func withOneEndpointChange(s *proxier.Snapshot, i, k int) *proxier.Snapshot {
	c := *s
	c.Services = slices.Clone(s.Services)
	sp := *c.Services[i]
	all := slices.Clone(sp.AllEndpoints)
	all[0].Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 250, byte(k >> 8), byte(k)}), 8080)
	slices.SortFunc(all, func(a, b proxier.Endpoint) int { return a.Addr.Compare(b.Addr) })
	planner.ResolveEndpoints(&sp, all, &planner.NodeInfo{Name: "node-a"})
	c.Services[i] = &sp
	c.FullSync = false
	c.Changed = map[proxier.ServicePortName]bool{sp.Name: true}
	return &c
}

// countingKernel counts the netlink writes that reach the kernel.
type countingKernel struct {
	ipvs.Kernel
	writes atomic.Int64
}

func (c *countingKernel) AddService(v *ipvs.VirtualServer) error {
	c.writes.Add(1)
	return c.Kernel.AddService(v)
}
func (c *countingKernel) UpdateService(v *ipvs.VirtualServer) error {
	c.writes.Add(1)
	return c.Kernel.UpdateService(v)
}
func (c *countingKernel) DelService(k ipvs.Key) error {
	c.writes.Add(1)
	return c.Kernel.DelService(k)
}
func (c *countingKernel) AddDest(k ipvs.Key, d ipvs.RealServer) error {
	c.writes.Add(1)
	return c.Kernel.AddDest(k, d)
}
func (c *countingKernel) UpdateDest(k ipvs.Key, d ipvs.RealServer) error {
	c.writes.Add(1)
	return c.Kernel.UpdateDest(k, d)
}
func (c *countingKernel) DelDest(k ipvs.Key, d ipvs.RealServer) error {
	c.writes.Add(1)
	return c.Kernel.DelDest(k, d)
}
func (c *countingKernel) AddAddress(a netip.Addr) error {
	c.writes.Add(1)
	return c.Kernel.AddAddress(a)
}
func (c *countingKernel) DelAddress(a netip.Addr) error {
	c.writes.Add(1)
	return c.Kernel.DelAddress(a)
}

// inFreshNetns creates a network namespace, runs fn on an OS thread locked
// inside it (netlink sockets and /proc/sys/net follow the thread) and
// deletes the namespace.
func inFreshNetns(tb testing.TB, fn func(ns string)) {
	tb.Helper()
	name := fmt.Sprintf("swy-bench-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add: %v: %s", err, out)
	}
	defer func() { _ = exec.Command("ip", "netns", "del", name).Run() }()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		h, err := netns.GetFromName(name)
		if err != nil {
			tb.Errorf("netns %s: %v", name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			tb.Errorf("setns: %v", err)
			return
		}
		fn(name)
	}()
	<-done
}

// newBenchBackend returns a Backend for namespace ns (run on a thread in
// ns) and its write counter.
func newBenchBackend(tb testing.TB, ns string) (*ipvs.Backend, *countingKernel) {
	tb.Helper()
	k, err := ipvs.NewNetlinkKernel()
	if err != nil {
		tb.Fatal(err)
	}
	ck := &countingKernel{Kernel: k}
	b, err := ipvs.New(ipvs.Config{
		Kernel: ck, Executor: iptables.NetnsExecutor(ns), IPTablesMode: iptables.ModeNFT,
		Logger: benchLogger(), LocalAddresses: func() ([]netip.Addr, error) { return nil, nil },
	})
	if err != nil {
		tb.Fatal(err)
	}
	return b, ck
}

// benchLogger discards logs unless SWY_BENCH_LOG is set (then debug logs,
// with the per-stage timings of each sync, go to stderr).
func benchLogger() *slog.Logger {
	if os.Getenv("SWY_BENCH_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func requireBenchIPVS(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		b.Skipf("no IPVS in this kernel (%v): run it in test/vm", err)
	}
}

// BenchmarkIPVSSync measures the IPVS backend at benchServices() services
// × 10 endpoints in fresh network namespaces of the running kernel (the VM
// when run by make test-vm: everything there is 5-20x slower than on
// hardware, so read the sub-benchmarks as ratios):
//
//   - full: the first Sync into an empty namespace (switchyard's start-up);
//   - one-endpoint-change: a Sync after one endpoint of one service moved;
//   - noop: a Sync with nothing to do (one dump, zero writes);
//   - baseline-ipvsadm-restore: the same virtual servers, real servers and
//     swy-ipvs0 addresses written by `ipvsadm --restore` and `ip -batch`
//     into another empty namespace: what the kernel and the stock tools
//     need for the same IPVS state, with no dump, diff, ipset or iptables.
//
// Metrics: netlink-writes/op (IPVS and address writes the backend made),
// ipvs-ops (virtual + real servers + addresses in the state).
func BenchmarkIPVSSync(b *testing.B) {
	requireBenchIPVS(b)
	n := benchServices()
	snap := bigSnapshot(n, benchEndpoints)
	snaps := []*proxier.Snapshot{snap}
	st, err := ipvs.Render(snaps, ipvs.RenderOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ops := len(st.Addresses) + len(st.Servers)
	for _, v := range st.Servers {
		ops += len(v.Dests)
	}
	ctx := context.Background()
	b.Logf("%d services x %d endpoints: %d virtual servers, %d addresses, %d IPVS+address objects", n, benchEndpoints, len(st.Servers), len(st.Addresses), ops)

	b.Run("full", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			inFreshNetns(b, func(ns string) {
				be, ck := newBenchBackend(b, ns)
				b.StartTimer()
				if _, err := be.Sync(ctx, snaps); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				b.ReportMetric(float64(ck.writes.Load()), "netlink-writes/op")
			})
		}
		b.ReportMetric(float64(ops), "ipvs-ops")
	})

	b.Run("one-endpoint-change+noop", func(b *testing.B) {
		b.StopTimer()
		inFreshNetns(b, func(ns string) {
			be, ck := newBenchBackend(b, ns)
			if _, err := be.Sync(ctx, snaps); err != nil {
				b.Fatal(err)
			}
			var change, noop time.Duration
			var changeWrites, noopWrites int64
			for i := 0; i < b.N; i++ {
				cur := snaps
				if i%2 == 0 {
					cur = []*proxier.Snapshot{withOneEndpointChange(snap, n/2, i)}
				}
				before := ck.writes.Load()
				start := time.Now()
				if _, err := be.Sync(ctx, cur); err != nil {
					b.Fatal(err)
				}
				changeWrites += ck.writes.Load() - before
				change += time.Since(start)
				before = ck.writes.Load()
				start = time.Now()
				if _, err := be.Sync(ctx, cur); err != nil {
					b.Fatal(err)
				}
				noop += time.Since(start)
				noopWrites += ck.writes.Load() - before
			}
			b.ReportMetric(float64(change.Milliseconds())/float64(b.N), "change-ms/op")
			b.ReportMetric(float64(changeWrites)/float64(b.N), "change-writes/op")
			b.ReportMetric(float64(noop.Milliseconds())/float64(b.N), "noop-ms/op")
			b.ReportMetric(float64(noopWrites)/float64(b.N), "noop-writes/op")
		})
	})

	b.Run("baseline-ipvsadm-restore", func(b *testing.B) {
		ipvsText, addrText := restoreText(st)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			inFreshNetns(b, func(ns string) {
				if out, err := exec.Command("ip", "-n", ns, "link", "add", ipvs.DummyInterface, "type", "dummy").CombinedOutput(); err != nil {
					b.Fatalf("ip link add: %v: %s", err, out)
				}
				b.StartTimer()
				for _, c := range []struct {
					args  []string
					stdin string
				}{
					{[]string{"ip", "-n", ns, "-batch", "-"}, addrText},
					{[]string{"ip", "netns", "exec", ns, "ipvsadm", "--restore"}, ipvsText},
				} {
					cmd := exec.Command(c.args[0], c.args[1:]...)
					cmd.Stdin = strings.NewReader(c.stdin)
					if out, err := cmd.CombinedOutput(); err != nil {
						b.Fatalf("%s: %v: %s", strings.Join(c.args, " "), err, out)
					}
				}
				b.StopTimer()
			})
		}
		b.ReportMetric(float64(ops), "ipvs-ops")
	})
}

// restoreText returns st's virtual and real servers as `ipvsadm --restore`
// input and its addresses as `ip -batch` input.
func restoreText(st *ipvs.State) (string, string) {
	var v, a strings.Builder
	for _, s := range st.Servers {
		svc := ""
		switch {
		case s.FWMark != 0:
			svc = fmt.Sprintf("-f %d", s.FWMark)
		case s.Protocol == proxier.UDP:
			svc = "-u " + netip.AddrPortFrom(s.Addr, s.Port).String()
		default:
			svc = "-t " + netip.AddrPortFrom(s.Addr, s.Port).String()
		}
		fmt.Fprintf(&v, "-A %s -s %s", svc, s.Scheduler)
		if s.Persistent {
			fmt.Fprintf(&v, " -p %d", s.Timeout)
		}
		v.WriteString("\n")
		for _, d := range s.Dests {
			fmt.Fprintf(&v, "-a %s -r %s -m -w %d\n", svc, d.Addr, d.Weight)
		}
	}
	for _, addr := range st.Addresses {
		fmt.Fprintf(&a, "addr add %s/32 dev %s\n", addr, ipvs.DummyInterface)
	}
	return v.String(), a.String()
}
