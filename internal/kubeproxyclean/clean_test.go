package kubeproxyclean

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
)

// kubeProxySave is a nat table as kube-proxy's iptables mode and kubelet
// leave it, next to switchyard's chains.
const kubeProxySave = `*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SEP-ABC - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XYZ - [0:0]
:SWY-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j SWY-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-SEP-ABC -s 10.244.0.11/32 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -j KUBE-SVC-XYZ
-A KUBE-SVC-XYZ -j KUBE-SEP-ABC
-A SWY-SERVICES -d 10.96.0.10/32 -j RETURN
COMMIT
`

func TestIsKubeProxyChain(t *testing.T) {
	for name, want := range map[string]bool{
		"KUBE-SERVICES": true, "KUBE-SVC-ABC": true, "KUBE-SEP-1": true, "KUBE-EXT-1": true,
		"KUBE-FW-1": true, "KUBE-SVL-1": true, "KUBE-XLB-1": true, "KUBE-IPVS-FILTER": true,
		"KUBE-LOAD-BALANCER": true, "KUBE-NODE-PORT": true, "KUBE-PROXY-CANARY": true,
		"KUBE-FORWARD": true, "KUBE-PROXY-FIREWALL": true, "KUBE-EXTERNAL-SERVICES": true,
		"KUBE-FIREWALL": false, "KUBE-KUBELET-CANARY": false, "KUBE-IPTABLES-HINT": false,
		"KUBE-MARK-DROP": false, "SWY-SERVICES": false, "PREROUTING": false, "cali-FORWARD": false,
	} {
		if got := IsKubeProxyChain(name); got != want {
			t.Errorf("IsKubeProxyChain(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestPlan(t *testing.T) {
	p := Plan([]byte(kubeProxySave))
	want := []string{"KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-PROXY-CANARY", "KUBE-SEP-ABC", "KUBE-SERVICES", "KUBE-SVC-XYZ"}
	if strings.Join(p.Own, ",") != strings.Join(want, ",") {
		t.Errorf("chains %v, want %v", p.Own, want)
	}
	if len(p.ForeignJumps) != 3 {
		t.Fatalf("jumps %q, want the 3 from PREROUTING, OUTPUT, POSTROUTING", p.ForeignJumps)
	}
	for _, j := range p.ForeignJumps {
		if strings.Contains(j, "SWY-") {
			t.Errorf("switchyard's jump %q planned for deletion", j)
		}
	}
}

// fakeExec answers iptables-save with a canned table per tool and
// records every other command.
type fakeExec struct {
	saves map[string]string // save tool -> output
	ran   []string
	fail  map[string]bool // command name -> fails
}

func (f *fakeExec) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, []byte, error) {
	cmd := strings.Join(append([]string{name}, args...), " ")
	if f.fail[name] {
		return nil, []byte("boom"), errors.New(name + ": exit status 1")
	}
	if strings.HasSuffix(name, "-save") {
		out, ok := f.saves[cmd]
		if !ok {
			return nil, nil, errors.New("not installed")
		}
		return []byte(out), nil, nil
	}
	f.ran = append(f.ran, cmd+"\n"+string(stdin))
	switch cmd {
	case "nft list tables":
		return []byte("table ip filter\ntable ip kube-proxy\ntable ip6 kube-proxy\ntable inet switchyard\ntable ip6 nat\n"), nil, nil
	case "ipset list -n":
		return []byte("KUBE-CLUSTER-IP\nSWY-CLUSTER-IP\nKUBE-6-LOOP-BACK\nKUBE-SRC-ABCD\n"), nil, nil
	}
	return nil, nil, nil
}

type fakeIPVS struct {
	servers []VirtualServer
	deleted []VirtualServer
}

func (f *fakeIPVS) VirtualServers() ([]VirtualServer, error) { return f.servers, nil }
func (f *fakeIPVS) Delete(v VirtualServer) error             { f.deleted = append(f.deleted, v); return nil }

type fakeLinks struct {
	addrs   map[string][]netip.Addr
	deleted []string
}

func (f *fakeLinks) Addresses(name string) ([]netip.Addr, bool, error) {
	a, ok := f.addrs[name]
	return a, ok, nil
}
func (f *fakeLinks) Delete(name string) error { f.deleted = append(f.deleted, name); return nil }

func TestClean(t *testing.T) {
	ex := &fakeExec{saves: map[string]string{"iptables-nft-save": kubeProxySave + "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n"}}
	vip, nodeIP := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.0.0.10")
	iv := &fakeIPVS{servers: []VirtualServer{
		{Addr: vip, Protocol: "TCP", Port: 53},
		{Addr: nodeIP, Protocol: "TCP", Port: 30080},
		{Addr: netip.MustParseAddr("10.96.0.99"), Protocol: "TCP", Port: 80}, // switchyard's
	}}
	links := &fakeLinks{addrs: map[string][]netip.Addr{IPVSLink: {vip}}}
	keep := func(v VirtualServer) bool { return v.Addr == netip.MustParseAddr("10.96.0.99") }
	rep, err := Clean(context.Background(), Config{Executor: ex, OpenIPVS: func() (IPVS, error) { return iv, nil }, Links: links, KeepVirtualServer: keep})
	if err != nil {
		t.Fatal(err)
	}
	want := Report{Chains: 7, JumpRules: 3, NFTables: 2, VirtualServers: 2, IPSets: 2, IPVSLinkDeleted: true}
	if rep != want {
		t.Errorf("report %+v, want %+v", rep, want)
	}
	all := strings.Join(ex.ran, "\n")
	for _, s := range []string{"-X KUBE-SVC-XYZ", "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
		"nft delete table ip kube-proxy", "nft delete table ip6 kube-proxy", "ipset destroy KUBE-CLUSTER-IP", "ipset destroy KUBE-6-LOOP-BACK"} {
		if !strings.Contains(all, s) {
			t.Errorf("no %q in the commands:\n%s", s, all)
		}
	}
	for _, s := range []string{"SWY-", "KUBE-SRC-ABCD", "KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "inet switchyard", "ip6 nat"} {
		if strings.Contains(all, s) {
			t.Errorf("%q touched:\n%s", s, all)
		}
	}
	if len(links.deleted) != 1 || links.deleted[0] != IPVSLink {
		t.Errorf("links deleted %v", links.deleted)
	}
}

func TestCleanIPVSModes(t *testing.T) {
	vip, nodeIP := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.0.0.10")
	servers := []VirtualServer{{Addr: vip, Protocol: "TCP", Port: 53}, {Addr: nodeIP, Protocol: "TCP", Port: 30080}, {FWMark: 7}}
	for _, tc := range []struct {
		name  string
		links map[string][]netip.Addr
		keep  bool
		want  int
	}{
		{"no kube-ipvs0: nothing touched", nil, false, 0},
		{"switchyard in IPVS mode: only kube-ipvs0 addresses", map[string][]netip.Addr{IPVSLink: {vip}}, true, 1},
		{"other mode: all but fwmark", map[string][]netip.Addr{IPVSLink: {vip}}, false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iv := &fakeIPVS{servers: servers}
			_, err := Clean(context.Background(), Config{Executor: &fakeExec{}, OpenIPVS: func() (IPVS, error) { return iv, nil },
				Links: &fakeLinks{addrs: tc.links}, KeepVirtualServers: tc.keep})
			if err != nil {
				t.Fatal(err)
			}
			if len(iv.deleted) != tc.want {
				t.Errorf("deleted %v, want %d", iv.deleted, tc.want)
			}
		})
	}
}

func TestCleanNoIPVSKernel(t *testing.T) {
	links := &fakeLinks{addrs: map[string][]netip.Addr{IPVSLink: nil}}
	_, err := Clean(context.Background(), Config{Executor: &fakeExec{}, Links: links,
		OpenIPVS: func() (IPVS, error) { return nil, ErrNoIPVS }})
	if err != nil {
		t.Fatalf("no IPVS must not be an error: %v", err)
	}
	if len(links.deleted) != 1 {
		t.Errorf("kube-ipvs0 not deleted: %v", links.deleted)
	}
}

func TestCleanRestoreFailureIsReported(t *testing.T) {
	ex := &fakeExec{saves: map[string]string{"iptables-nft-save": kubeProxySave}, fail: map[string]bool{"iptables-nft-restore": true}}
	_, err := Clean(context.Background(), Config{Executor: ex, Links: &fakeLinks{}})
	if err == nil || !strings.Contains(err.Error(), "iptables-nft nat") {
		t.Fatalf("err = %v, want the failed restore named", err)
	}
}

// TestKernel loads kube-proxy-like state (both families, nat, filter and
// mangle, kubelet's chains, an nft kube-proxy table and ipsets matched by
// a rule) into a fresh network namespace with the real tools, cleans it,
// and checks that only kube-proxy's part is gone.
func TestKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range []string{"iptables-nft-restore", "nft", "ipset"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	ns := "swy-kpc-" + strings.ReplaceAll(t.Name(), "/", "-")[:6] + "-" + randSuffix()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	ex := iptexec.NetnsExecutor(ns)
	ctx := context.Background()
	run := func(stdin string, args ...string) string {
		t.Helper()
		out, stderr, err := ex.Run(ctx, []byte(stdin), args[0], args[1:]...)
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, stderr)
		}
		return string(out)
	}
	run("", "ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port")
	run("", "ipset", "create", "SWY-KEEP", "hash:ip")
	run("", "ipset", "create", "KUBE-SRC-KUBEROUTER", "hash:ip") // kube-router's: kept
	for _, fam := range []string{"iptables-nft-restore", "ip6tables-nft-restore"} {
		nat := kubeProxySave
		if strings.HasPrefix(fam, "ip6") {
			nat = strings.ReplaceAll(strings.ReplaceAll(nat, "10.244.0.11/32", "fd00::11/128"), "10.96.0.10/32", "fd00::10/128")
		}
		run(nat+`*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
COMMIT
*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
`, fam, "--noflush")
	}
	run("*nat\n-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\nCOMMIT\n", "iptables-nft-restore", "--noflush")
	run("", "iptables-legacy", "-t", "nat", "-N", "KUBE-SVC-LEGACY")
	run("add table ip kube-proxy\nadd chain ip kube-proxy x\nadd table ip6 kube-proxy\nadd table inet keep\n", "nft", "-f", "-")

	rep, err := Clean(ctx, Config{Executor: ex, Links: &fakeLinks{}})
	if err != nil {
		t.Fatalf("clean: %v", err)
	}
	t.Logf("report %+v", rep)
	// Looking for leftovers creates no legacy table (only nat was made).
	if names := run("", "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"); strings.TrimSpace(names) != "nat" {
		t.Errorf("legacy tables after clean: %q, want only nat", names)
	}
	var left []string
	for _, save := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save"} {
		for _, line := range strings.Split(run("", save), "\n") {
			if strings.Contains(line, "KUBE-") {
				left = append(left, save+": "+line)
			}
		}
	}
	want := []string{
		"iptables-nft-save: :KUBE-KUBELET-CANARY - [0:0]", "iptables-nft-save: :KUBE-IPTABLES-HINT - [0:0]",
		"iptables-nft-save: :KUBE-FIREWALL - [0:0]", "iptables-nft-save: -A INPUT -j KUBE-FIREWALL",
	}
	got := strings.Join(left, "\n")
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("kubelet's %q is gone", w)
		}
	}
	for _, l := range left {
		if strings.Contains(l, "KUBE-PROXY") || strings.Contains(l, "KUBE-SVC") || strings.Contains(l, "KUBE-SERVICES") || strings.Contains(l, "KUBE-FORWARD") || strings.Contains(l, "KUBE-POSTROUTING") {
			t.Errorf("kube-proxy's state left: %s", l)
		}
	}
	if nft := run("", "nft", "list", "tables"); strings.Contains(nft, "kube-proxy") || !strings.Contains(nft, "inet keep") {
		t.Errorf("nft tables after clean:\n%s", nft)
	}
	if sets := run("", "ipset", "list", "-n"); strings.Contains(sets, "KUBE-CLUSTER-IP") || !strings.Contains(sets, "SWY-KEEP") || !strings.Contains(sets, "KUBE-SRC-KUBEROUTER") {
		t.Errorf("ipsets after clean:\n%s", sets)
	}
	// A second run finds nothing.
	if rep2, err := Clean(ctx, Config{Executor: ex, Links: &fakeLinks{}}); err != nil || rep2 != (Report{}) {
		t.Errorf("second clean: %+v, %v", rep2, err)
	}
}

func randSuffix() string {
	b := make([]byte, 4)
	f, _ := os.Open("/dev/urandom")
	defer f.Close()
	_, _ = f.Read(b)
	const hex = "0123456789abcdef"
	out := make([]byte, 0, 8)
	for _, c := range b {
		out = append(out, hex[c>>4], hex[c&15])
	}
	return string(out)
}

func TestIsKubeProxySet(t *testing.T) {
	for name, want := range map[string]bool{
		"KUBE-CLUSTER-IP": true, "KUBE-6-CLUSTER-IP": true, "KUBE-IPVS-IPS": true, "KUBE-NODE-PORT-LOCAL-SCTP-HASH": true,
		"KUBE-SRC-ABC": false, "KUBE-DST-ABC": false, "SWY-CLUSTER-IP": false, "KUBE-6-SRC-X": false,
	} {
		if got := IsKubeProxySet(name); got != want {
			t.Errorf("IsKubeProxySet(%q) = %v, want %v", name, got, want)
		}
	}
}
