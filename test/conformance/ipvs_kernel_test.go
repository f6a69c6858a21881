package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/ipvs"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// TestTracerIPVSKernelRules runs the table over what the real IPVS backend
// (ipvs.Backend.Sync) programs into a network namespace: the iptables
// rules (iptables-nft) and ipsets read back with iptables-nft-save and
// ipset save, jump rules included. The IPVS table and swy-ipvs0 come from
// an in-memory Kernel (this machine may have no IPVS; the VM tests cover
// the netlink side). One namespace and one Backend serve every scenario,
// so successive scenarios also exercise syncs over a previous state.
// Root only.
func TestTracerIPVSKernelRules(t *testing.T) {
	requireIPVSTools(t)
	runTracerExempt(t, newIPVSKernelMode(t), ipvsExemptions, ipvsExtraPackets)
}

// TestIPVSKernelMatchesRender checks that the jump rules the tracer adds
// to the rendered rules (ipvsJumps) are exactly the rules the real backend
// leaves in the built-in chains of a fresh namespace.
func TestIPVSKernelMatchesRender(t *testing.T) {
	requireIPVSTools(t)
	m := newIPVSKernelMode(t)
	snaps, err := Plan(scenarios.All()[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Load(snaps); err != nil {
		t.Fatal(err)
	}
	save, err := m.save()
	if err != nil {
		t.Fatal(err)
	}
	builtin := func(text string) []string {
		var out []string
		table := ""
		for _, line := range strings.Split(text, "\n") {
			if strings.HasPrefix(line, "*") {
				table = line[1:]
			}
			f := strings.Fields(line)
			if len(f) > 1 && f[0] == "-A" && !strings.HasPrefix(f[1], "SWY-") {
				out = append(out, table+" "+line)
			}
		}
		sort.SliceStable(out, func(i, j int) bool { return strings.Fields(out[i])[0] < strings.Fields(out[j])[0] })
		return out
	}
	if got, want := builtin(save), builtin(ipvsJumps); !slices.Equal(got, want) {
		t.Errorf("built-in chain rules after Sync:\n  %s\nthe tracer assumes:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func requireIPVSTools(t *testing.T) {
	t.Helper()
	requireRoot(t)
	if _, err := exec.LookPath("ipset"); err != nil {
		t.Fatalf("tool ipset is required: %v", err)
	}
}

// ipvsKernelMode syncs with the real backend into a namespace.
type ipvsKernelMode struct {
	ns      string
	kernel  *memKernel
	backend *ipvs.Backend
}

func newIPVSKernelMode(t *testing.T) *ipvsKernelMode {
	t.Helper()
	ns := newNetns(t, "swy-conf-ipvs")
	k := &memKernel{servers: map[ipvs.Key]*ipvs.VirtualServer{}, addrs: map[netip.Addr]bool{}}
	b, err := ipvs.New(ipvs.Config{
		IPTablesMode: iptables.ModeNFT, Executor: iptables.NetnsExecutor(ns), Kernel: k,
		Sysctl: memSysctl{}, Logger: quietLogger(),
		// The lab node's addresses, not this machine's: node ports answer
		// on every local address of the node.
		LocalAddresses: func() ([]netip.Addr, error) { return scenarios.Topology.NodeAddrs, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	return &ipvsKernelMode{ns: ns, kernel: k, backend: b}
}

func (m *ipvsKernelMode) Name() string { return "ipvs-kernel" }

func (m *ipvsKernelMode) Load(snaps []*proxier.Snapshot) (Tracer, error) {
	if _, err := m.backend.Sync(context.Background(), snaps); err != nil {
		return nil, fmt.Errorf("sync into namespace %s: %w", m.ns, err)
	}
	save, err := m.save()
	if err != nil {
		return nil, err
	}
	sets, err := m.run("ipset", "save")
	if err != nil {
		return nil, err
	}
	servers, _ := m.kernel.VirtualServers()
	addrs, _ := m.kernel.DummyAddresses()
	return newIPVSTracerFrom(servers, addrs, sets, save)
}

func (m *ipvsKernelMode) run(args ...string) (string, error) {
	b, err := exec.Command("ip", append([]string{"netns", "exec", m.ns}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), m.ns, err, b)
	}
	return string(b), nil
}

func (m *ipvsKernelMode) save() (string, error) {
	var out strings.Builder
	for _, table := range []string{"mangle", "nat", "filter"} {
		s, err := m.run("iptables-nft-save", "-t", table)
		if err != nil {
			return "", err
		}
		out.WriteString(s)
	}
	return out.String(), nil
}

// memKernel is an in-memory ipvs.Kernel: the virtual servers and the
// addresses of swy-ipvs0.
type memKernel struct {
	servers map[ipvs.Key]*ipvs.VirtualServer
	addrs   map[netip.Addr]bool
}

func (k *memKernel) VirtualServers() ([]*ipvs.VirtualServer, error) {
	var out []*ipvs.VirtualServer
	for _, v := range k.servers {
		c := *v
		c.Dests = slices.Clone(v.Dests)
		c.Service, c.ServiceProtocol = "", ""
		out = append(out, &c)
	}
	return out, nil
}

func (k *memKernel) AddService(v *ipvs.VirtualServer) error {
	if _, ok := k.servers[v.Key]; ok {
		return fmt.Errorf("add %s: exists", v.Key)
	}
	c := *v
	c.Dests = nil
	k.servers[v.Key] = &c
	return nil
}

func (k *memKernel) UpdateService(v *ipvs.VirtualServer) error {
	s, ok := k.servers[v.Key]
	if !ok {
		return fmt.Errorf("update %s: missing", v.Key)
	}
	s.Scheduler, s.Persistent, s.Timeout = v.Scheduler, v.Persistent, v.Timeout
	return nil
}

func (k *memKernel) DelService(key ipvs.Key) error {
	if _, ok := k.servers[key]; !ok {
		return fmt.Errorf("delete %s: missing", key)
	}
	delete(k.servers, key)
	return nil
}

func (k *memKernel) dest(key ipvs.Key, a netip.AddrPort) (*ipvs.VirtualServer, int, error) {
	s, ok := k.servers[key]
	if !ok {
		return nil, -1, fmt.Errorf("%s: no such service", key)
	}
	return s, slices.IndexFunc(s.Dests, func(d ipvs.RealServer) bool { return d.Addr == a }), nil
}

func (k *memKernel) AddDest(key ipvs.Key, d ipvs.RealServer) error {
	s, i, err := k.dest(key, d.Addr)
	if err != nil || i >= 0 {
		return fmt.Errorf("add dest %s to %s: %v (exists: %v)", d.Addr, key, err, i >= 0)
	}
	s.Dests = append(s.Dests, d)
	return nil
}

func (k *memKernel) UpdateDest(key ipvs.Key, d ipvs.RealServer) error {
	s, i, err := k.dest(key, d.Addr)
	if err != nil || i < 0 {
		return fmt.Errorf("update dest %s of %s: %v (missing)", d.Addr, key, err)
	}
	s.Dests[i].Weight = d.Weight
	return nil
}

func (k *memKernel) DelDest(key ipvs.Key, d ipvs.RealServer) error {
	s, i, err := k.dest(key, d.Addr)
	if err != nil || i < 0 {
		return fmt.Errorf("delete dest %s of %s: %v (missing)", d.Addr, key, err)
	}
	s.Dests = slices.Delete(s.Dests, i, i+1)
	return nil
}

func (k *memKernel) EnsureDummy() (bool, error) { return false, nil }

func (k *memKernel) DummyAddresses() ([]netip.Addr, error) {
	var out []netip.Addr
	for a := range k.addrs {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

func (k *memKernel) AddAddress(a netip.Addr) error { k.addrs[a] = true; return nil }
func (k *memKernel) DelAddress(a netip.Addr) error { delete(k.addrs, a); return nil }
func (k *memKernel) DeleteDummy() error            { k.addrs = map[netip.Addr]bool{}; return nil }

// memSysctl answers every sysctl with the value the backend wants, so it
// never writes the host's /proc/sys.
type memSysctl struct{}

func (memSysctl) Get(name string) (string, error) {
	switch name {
	case "kernel/osrelease":
		return "6.1.0", nil
	case "net/ipv4/conf/all/arp_announce":
		return "2", nil
	}
	return "1", nil
}

func (memSysctl) Set(name, value string) error {
	return fmt.Errorf("sysctl %s=%s: unexpected write", name, value)
}
