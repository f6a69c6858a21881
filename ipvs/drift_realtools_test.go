package ipvs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// hostNetns creates a network namespace (no IPVS needed) deleted at
// cleanup.
func hostNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "swy-ipvsd-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name
}

// TestRealToolsRulesAndSetsDrift (not named Kernel: the VM suite, which
// runs -test.run Kernel, need not repeat it slowly) runs the IPVS backend with the fake IPVS
// kernel but the real ipset and iptables (nft and legacy) in a namespace:
// what iptables-save prints back fingerprints like what was written (an
// idle periodic sync writes nothing), and chains, hooks and set entries
// deleted by hand come back at the next periodic sync.
func TestRealToolsRulesAndSetsDrift(t *testing.T) {
	for _, m := range []iptables.Mode{iptables.ModeNFT, iptables.ModeLegacy} {
		t.Run(string(m), func(t *testing.T) {
			ns := hostNetns(t)
			ex := &countingExec{Executor: iptables.NetnsExecutor(ns)}
			k := newFakeKernel()
			b, err := New(Config{Kernel: k, Executor: ex, Sysctl: newFakeSysctl("6.1.0-26-amd64"), IPTablesMode: m,
				Logger: discard(), LocalAddresses: noLocalAddresses})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			// TCP and UDP only: the host kernel may lack xt_sctp.
			snap := richSnapshot()
			snap.Services = snap.Services[:len(snap.Services)-2]
			snap.Services = append(snap.Services, richSnapshot().Lookup(spn("default", "web", "http", proxier.TCP)))
			if _, err := b.Sync(ctx, []*proxier.Snapshot{snap}); err != nil {
				t.Fatalf("first sync: %v", err)
			}
			periodic := *snap
			periodic.FullSync, periodic.Verify = false, true
			idle := func(when string) {
				t.Helper()
				ex.writes = 0
				res, err := b.Sync(ctx, []*proxier.Snapshot{&periodic})
				if err != nil || res.Wrote || res.Repaired != nil || ex.writes != 0 {
					t.Fatalf("%s: idle periodic sync: %+v, %v, %d restores", when, res, err, ex.writes)
				}
			}
			idle("after the first sync")
			ipt := "iptables-" + string(m)
			for _, tc := range []struct {
				name string
				cmd  []string
				want map[string]int
			}{
				{"flush nat SWY-IPVS-SERVICES", []string{ipt, "-w", "-t", "nat", "-F", chainServices}, map[string]int{"chain": 1}},
				{"delete the nat OUTPUT hook", []string{ipt, "-w", "-t", "nat", "-D", "OUTPUT", "-m", "comment", "--comment", "switchyard ipvs services", "-j", chainServices}, map[string]int{"jump": 1}},
				{"flush filter SWY-IPVS-INPUT", []string{ipt, "-w", "-t", "filter", "-F", chainInput}, map[string]int{"chain": 1}},
				{"delete a cluster IP from its set", []string{"ipset", "del", "SWY-CLUSTER-IP", "10.96.0.10,tcp:80"}, map[string]int{"ipset-entries": 1}},
				{"flush SWY-LOOP-BACK", []string{"ipset", "flush", "SWY-LOOP-BACK"}, map[string]int{"ipset-entries": 1}},
			} {
				if out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, tc.cmd...)...).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v: %s", tc.name, err, out)
				}
				res, err := b.Sync(ctx, []*proxier.Snapshot{&periodic})
				if err != nil || !reflect.DeepEqual(res.Repaired, tc.want) {
					t.Fatalf("%s: periodic sync: %+v, %v; want %v repaired", tc.name, res, err, tc.want)
				}
				idle("after repairing: " + tc.name)
			}
			// Everything is back as written.
			sets, err := ipsetSave(ctx, ex)
			if err != nil {
				t.Fatal(err)
			}
			if ops, _ := Diff(mustRender(t, snap), &Dump{Sets: sets, Servers: mustRender(t, snap).Servers, Addresses: mustRender(t, snap).Addresses}, opts(nil)); len(ops) != 0 {
				t.Fatalf("sets differ after repair: %v", opStrings(ops))
			}
			if err := b.Cleanup(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// countingExec counts the restores that write (iptables-restore, ipset
// restore).
type countingExec struct {
	iptables.Executor
	writes int
}

func (c *countingExec) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, []byte, error) {
	if strings.HasSuffix(name, "-restore") || name == "ipset" && len(args) > 0 && args[0] == "restore" {
		c.writes++
	}
	return c.Executor.Run(ctx, stdin, name, args...)
}
