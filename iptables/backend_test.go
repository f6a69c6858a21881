package iptables

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newFakeBackend(t *testing.T, k *fakeKernel, mode Mode) (*Backend, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	b, err := New(Config{Mode: mode, Executor: k, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	return b, c
}

// next returns a copy of s marking names as changed (a partial sync).
func next(s *proxier.Snapshot, names ...proxier.ServicePortName) *proxier.Snapshot {
	c := *s
	c.FullSync = false
	c.Changed = map[proxier.ServicePortName]bool{}
	for _, n := range names {
		c.Changed[n] = true
	}
	return &c
}

func mustSync(t *testing.T, b *Backend, snaps ...*proxier.Snapshot) proxier.SyncResult {
	t.Helper()
	res, err := b.Sync(context.Background(), snaps)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return res
}

// reference applies snaps with a full sync to an empty fake kernel and
// returns the resulting tables: what any sequence of syncs must converge to.
func reference(t *testing.T, snaps ...*proxier.Snapshot) map[string]map[string][]string {
	t.Helper()
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	for _, s := range snaps {
		c := *s
		c.FullSync = true
		mustSync(t, b, &c)
	}
	return k.dump("iptables-nft")
}

func assertConverged(t *testing.T, k *fakeKernel, want map[string]map[string][]string) {
	t.Helper()
	got := k.dump("iptables-nft")
	if !reflect.DeepEqual(got, want) {
		for table := range want {
			for c, r := range want[table] {
				if !reflect.DeepEqual(got[table][c], r) {
					t.Errorf("%s %s: got %q, want %q", table, c, got[table][c], r)
				}
			}
			for c := range got[table] {
				if _, ok := want[table][c]; !ok {
					t.Errorf("%s: stale chain %s left", table, c)
				}
			}
		}
		t.FailNow()
	}
}

func webSnapshot(eps ...proxier.Endpoint) *proxier.Snapshot {
	web := svc("default", "web", "http", proxier.TCP, "10.96.0.10", 80, eps...)
	web.NodePort = 30010
	dns := svc("kube-system", "dns", "dns", proxier.UDP, "10.96.0.53", 53, ep("10.244.1.2:53", true))
	return snapshot(proxier.IPv4, web, dns)
}

var webName = proxier.ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: proxier.TCP}

func TestFirstSyncIsFullAndSecondWritesNothing(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	s := webSnapshot(ep("10.244.1.5:8080", true), ep("10.244.2.5:8080", false))
	res := mustSync(t, b, s)
	if !res.Full || !res.Wrote || res.Bytes == 0 || res.Rules == 0 {
		t.Fatalf("first sync result %+v, want a full write", res)
	}
	calls := k.restoreCalls()
	if len(calls) != 1 {
		t.Fatalf("first sync made %d restore calls, want 1", len(calls))
	}
	// The full sync writes Render's text plus, in each table, the jump
	// rules (into an empty kernel: appended) after their targets'
	// declarations, then "-S" (nft), then the other declarations.
	want, _ := Render([]*proxier.Snapshot{s})
	var sent []string
	for _, l := range strings.SplitAfter(calls[0], "\n") {
		f := strings.Fields(l)
		if l != "-S\n" && !(len(f) > 1 && (f[0] == "-A" || f[0] == "-I") && !strings.HasPrefix(f[1], ChainPrefix)) {
			sent = append(sent, l)
		}
	}
	sorted := func(text string) string {
		// Declarations may move within their table; nothing else may.
		var out []string
		var decls []string
		for _, l := range strings.SplitAfter(text, "\n") {
			if strings.HasPrefix(l, ":") {
				decls = append(decls, l)
				continue
			}
			if len(decls) > 0 {
				slices.Sort(decls)
				out = append(out, decls...)
				decls = nil
			}
			out = append(out, l)
		}
		return strings.Join(out, "")
	}
	if got := sorted(strings.Join(sent, "")); got != sorted(want) {
		t.Errorf("full sync input differs from Render:\n%s", lineDiff(sorted(want), got))
	}
	for _, l := range []string{"\n-S\n:SWY-CANARY - [0:0]\n", "*nat\n:SWY-POSTROUTING - [0:0]\n:SWY-SERVICES - [0:0]\n-A PREROUTING -m comment --comment \"switchyard service portals\" -j SWY-SERVICES\n"} {
		if !strings.Contains(calls[0], l) {
			t.Errorf("full sync input lacks %q:\n%s", l, calls[0])
		}
	}
	assertConverged(t, k, reference(t, s))
	// Jump rules are in place.
	nat := k.dump("iptables-nft")[tableNAT]
	if len(nat["PREROUTING"]) != 1 || !strings.Contains(nat["PREROUTING"][0], "-j SWY-SERVICES") {
		t.Errorf("PREROUTING = %q, want one jump to SWY-SERVICES", nat["PREROUTING"])
	}
	if got := len(k.dump("iptables-nft")[tableFilter]["FORWARD"]); got != 4 {
		t.Errorf("filter FORWARD has %d jump rules, want 4", got)
	}

	for i := 0; i < 2; i++ {
		k.resetCalls()
		res = mustSync(t, b, next(s))
		if res.Wrote || res.Full {
			t.Fatalf("identical sync %d: result %+v, want nothing written", i, res)
		}
		if n := len(k.restoreCalls()); n != 0 {
			t.Fatalf("identical sync %d made %d restore calls, want 0", i, n)
		}
	}
	// Marking a service changed without changing it writes nothing either.
	k.resetCalls()
	mustSync(t, b, next(s, webName))
	if n := len(k.restoreCalls()); n != 0 {
		t.Fatalf("no-op change made %d restore calls, want 0", n)
	}
	// Jumps are not duplicated.
	if got := len(k.dump("iptables-nft")[tableNAT]["PREROUTING"]); got != 1 {
		t.Errorf("PREROUTING has %d rules after resyncs, want 1", got)
	}
}

func TestPartialSyncWritesOnlyChangedChains(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	gone := ep("10.244.2.5:8080", false)
	s1 := webSnapshot(ep("10.244.1.5:8080", true), gone)
	mustSync(t, b, s1)

	// Endpoint 10.244.2.5 goes away, 10.244.3.5 arrives.
	s2 := next(webSnapshot(ep("10.244.1.5:8080", true), ep("10.244.3.5:8080", false)), webName)
	k.resetCalls()
	res := mustSync(t, b, s2)
	if res.Full || !res.Wrote {
		t.Fatalf("result %+v, want a partial write", res)
	}
	calls := k.restoreCalls()
	if len(calls) != 1 {
		t.Fatalf("%d restore calls, want 1", len(calls))
	}
	in := calls[0]
	svcChain := ServiceChain(webName)
	goneChain := EndpointChain(webName, gone)
	newChain := EndpointChain(webName, ep("10.244.3.5:8080", false))
	keptChain := EndpointChain(webName, ep("10.244.1.5:8080", true))
	for _, want := range []string{":" + svcChain + " ", ":" + newChain + " ", "-X " + goneChain} {
		if !strings.Contains(in, want) {
			t.Errorf("partial input lacks %q:\n%s", want, in)
		}
	}
	for _, notWant := range []string{":" + keptChain, "SWY-SERVICES", "SWY-NODEPORTS", "kube-system/dns", "*filter"} {
		if strings.Contains(in, notWant) {
			t.Errorf("partial input rewrites unchanged %q:\n%s", notWant, in)
		}
	}
	assertConverged(t, k, reference(t, s2))

	// Removing a whole service deletes all its chains and its dispatch rules.
	s3 := next(snapshot(proxier.IPv4, svc("kube-system", "dns", "dns", proxier.UDP, "10.96.0.53", 53, ep("10.244.1.2:53", true))), webName)
	k.resetCalls()
	mustSync(t, b, s3)
	in = k.restoreCalls()[0]
	for _, want := range []string{"-X " + svcChain, "-X " + keptChain, "-X " + newChain, "-X " + prefixEXT} {
		if !strings.Contains(in, want) {
			t.Errorf("removal input lacks %q:\n%s", want, in)
		}
	}
	assertConverged(t, k, reference(t, s3))

	// A service the planner forgot to mark changed is still picked up
	// because our state does not know it.
	s4 := next(webSnapshot(ep("10.244.1.5:8080", true)))
	mustSync(t, b, s4)
	assertConverged(t, k, reference(t, s4))
}

func TestPartialSyncDispatchChanges(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	s1 := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s1)
	// web loses all endpoints: its nat chains go, the filter table gets REJECTs.
	s2 := next(webSnapshot(), webName)
	k.resetCalls()
	mustSync(t, b, s2)
	in := k.restoreCalls()[0]
	for _, want := range []string{"*filter", ":SWY-SERVICES - [0:0]", "-j REJECT", ":SWY-EXTERNAL-SERVICES", "-X " + ServiceChain(webName)} {
		if !strings.Contains(in, want) {
			t.Errorf("input lacks %q:\n%s", want, in)
		}
	}
	dns := proxier.ServicePortName{Namespace: "kube-system", Name: "dns", Port: "dns", Protocol: proxier.UDP}
	if strings.Contains(in, ":SWY-FORWARD") || strings.Contains(in, ":"+ServiceChain(dns)) {
		t.Errorf("input rewrites unchanged chains:\n%s", in)
	}
	assertConverged(t, k, reference(t, s2))
}

func TestFailedRestoreKeepsRulesAndNextSyncIsFull(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	s1 := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s1)
	before := k.dump("iptables-nft")

	s2 := next(webSnapshot(ep("10.244.9.9:8080", false)), webName)
	k.failRestore = 4 // line 3 is the canary check
	_, err := b.Sync(context.Background(), []*proxier.Snapshot{s2})
	var re *RestoreError
	if !errors.As(err, &re) {
		t.Fatalf("Sync error %v, want a RestoreError", err)
	}
	lines := strings.Split(k.restoreCalls()[len(k.restoreCalls())-1], "\n")
	if re.Line != 4 || re.Text != lines[3] || !strings.Contains(err.Error(), lines[3]) {
		t.Errorf("error names line %d %q, want line 4 %q (err: %v)", re.Line, re.Text, lines[3], err)
	}
	if got := k.dump("iptables-nft"); !reflect.DeepEqual(got, before) {
		t.Fatal("a failed restore changed the rules")
	}
	// Same snapshot again, no FullSync requested: the backend goes full.
	k.resetCalls()
	res := mustSync(t, b, next(s2))
	if !res.Full {
		t.Fatalf("sync after failure: %+v, want full", res)
	}
	if in := k.restoreCalls()[0]; !strings.Contains(in, ":SWY-POSTROUTING") || !strings.Contains(in, "kube-system/dns") {
		t.Errorf("sync after failure is not full:\n%s", in)
	}
	assertConverged(t, k, reference(t, s2))
}

func TestRealRestoreErrorIsMapped(t *testing.T) {
	// The fake rejects a jump to a missing chain the way the kernel does.
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	err := b.restore(context.Background(), toolsFor(ModeNFT, proxier.IPv4),
		[]byte("*nat\n:SWY-A - [0:0]\n-A SWY-A -j SWY-NOPE\nCOMMIT\n"))
	var re *RestoreError
	if !errors.As(err, &re) || re.Line != 3 || re.Text != "-A SWY-A -j SWY-NOPE" {
		t.Fatalf("got %v, want line 3 named", err)
	}
}

func TestCanaryMissingForcesFullSync(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	s := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s)
	// Someone flushes and deletes our nat chains (e.g. a firewall reload).
	k.tables["iptables-nft"][tableNAT] = nil
	k.resetCalls()
	res := mustSync(t, b, next(s))
	if !res.Full || !res.Wrote {
		t.Fatalf("result %+v, want a full write", res)
	}
	assertConverged(t, k, reference(t, s))
}

func TestCanaryMissingAtPartialWriteForcesFullSync(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	s1 := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s1)
	k.tables["iptables-nft"][tableNAT] = nil
	k.resetCalls()
	// A change: the partial restore opens nat with the canary check, fails
	// there, and the same Sync rewrites everything.
	s2 := next(webSnapshot(ep("10.244.1.5:8080", true), ep("10.244.2.5:8080", false)), webName)
	res := mustSync(t, b, s2)
	if !res.Full || !res.Wrote {
		t.Fatalf("result %+v, want a full write", res)
	}
	calls := k.restoreCalls()
	if len(calls) != 2 || !strings.Contains(calls[0], "*nat\n"+canaryCheck+"\n") {
		t.Fatalf("restores %q, want a partial one with the canary check, then a full one", calls)
	}
	assertConverged(t, k, reference(t, s2))
	// The jump rules came back with the full sync.
	if got := k.dump("iptables-nft")[tableNAT]["PREROUTING"]; len(got) != 1 {
		t.Errorf("PREROUTING = %q, want our jump once", got)
	}
}

func TestFullSyncRestoresOnlyMissingJumps(t *testing.T) {
	k := newFakeKernel()
	b, c := newFakeBackend(t, k, ModeNFT)
	s := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s)
	want := k.dump("iptables-nft")
	// Someone deletes one jump rule; the next (periodic) full sync puts
	// it back and leaves the others alone.
	k.tables["iptables-nft"][tableFilter].rules["FORWARD"] = k.tables["iptables-nft"][tableFilter].rules["FORWARD"][1:]
	c.t = c.t.Add(2 * time.Hour)
	k.resetCalls()
	if res := mustSync(t, b, next(s)); !res.Full {
		t.Fatal("want a periodic full sync")
	}
	in := k.restoreCalls()[0]
	if n := strings.Count(in, "\n-I "); n != 1 || !strings.Contains(in, "\n-I FORWARD 1 ") {
		t.Errorf("full sync inserts %d jumps, want the one FORWARD jump:\n%s", n, in)
	}
	if got := k.dump("iptables-nft"); !reflect.DeepEqual(got, want) {
		t.Errorf("tables after repair differ:\n%v\nwant\n%v", got, want)
	}
}

func TestPeriodicAndGlobalFullSync(t *testing.T) {
	k := newFakeKernel()
	b, c := newFakeBackend(t, k, ModeNFT)
	s := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s)
	c.t = c.t.Add(59 * time.Minute)
	if res := mustSync(t, b, next(s)); res.Full {
		t.Fatal("full sync before the interval")
	}
	c.t = c.t.Add(2 * time.Minute)
	if res := mustSync(t, b, next(s)); !res.Full {
		t.Fatal("no full sync after the interval")
	}
	g := next(s)
	g.Masquerade.MarkBit = 15
	if res := mustSync(t, b, g); !res.Full {
		t.Fatal("no full sync after the mark bit changed")
	}
	assertConverged(t, k, reference(t, g))
	if res := mustSync(t, b, next(g)); res.Wrote {
		t.Fatal("sync after the settings change wrote again")
	}
}

func TestFullSyncDeletesStaleChains(t *testing.T) {
	k := newFakeKernel()
	// A previous run left chains of a service that is gone now.
	old := webSnapshot(ep("10.244.1.5:8080", true), ep("10.244.2.5:8080", false))
	b0, _ := newFakeBackend(t, k, ModeNFT)
	mustSync(t, b0, old)

	b, _ := newFakeBackend(t, k, ModeNFT) // a restart: no memory
	s := snapshot(proxier.IPv4, svc("kube-system", "dns", "dns", proxier.UDP, "10.96.0.53", 53, ep("10.244.1.2:53", true)))
	k.resetCalls()
	mustSync(t, b, s)
	if in := k.restoreCalls()[0]; !strings.Contains(in, "-X "+ServiceChain(webName)) {
		t.Errorf("full sync does not delete the stale chain:\n%s", in)
	}
	assertConverged(t, k, reference(t, s))
}

func TestCleanupLeavesForeignRules(t *testing.T) {
	k := newFakeKernel()
	foreign := "*filter\n:KUBE-FOO - [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\n-A KUBE-FOO -j DROP\n-A FORWARD -j KUBE-FOO\nCOMMIT\n" +
		"*nat\n:MY-NAT - [0:0]\n-A PREROUTING -j MY-NAT\n-A MY-NAT -d 10.0.0.1 -j RETURN\nCOMMIT\n"
	for _, base := range []string{"iptables-nft", "iptables-legacy"} {
		if err := k.restore(base, foreign); err != nil {
			t.Fatal(err)
		}
	}
	beforeNFT, beforeLegacy := k.dump("iptables-nft"), k.dump("iptables-legacy")
	b, _ := newFakeBackend(t, k, ModeNFT)
	s := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s)
	// A foreign chain that jumps into ours must lose that rule too.
	if err := k.restore("iptables-nft", "*nat\n-A MY-NAT -j SWY-SERVICES\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if err := b.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := k.dump("iptables-nft"); !reflect.DeepEqual(got, beforeNFT) {
		t.Errorf("cleanup left\n%v\nwant\n%v", got, beforeNFT)
	}
	if got := k.dump("iptables-legacy"); !reflect.DeepEqual(got, beforeLegacy) {
		t.Errorf("cleanup touched the legacy tables")
	}
	// The next sync after Cleanup starts over with a full sync.
	if res := mustSync(t, b, next(s)); !res.Full {
		t.Error("sync after cleanup is not full")
	}
}

func TestAutoModePicksFlavourWithMoreRules(t *testing.T) {
	for _, tc := range []struct {
		legacyRules, nftRules int
		want                  Mode
	}{{0, 0, ModeNFT}, {3, 1, ModeLegacy}, {1, 3, ModeNFT}, {2, 2, ModeNFT}} {
		k := newFakeKernel()
		for base, n := range map[string]int{"iptables-legacy": tc.legacyRules, "iptables-nft": tc.nftRules} {
			var sb strings.Builder
			sb.WriteString("*filter\n")
			for i := 0; i < n; i++ {
				sb.WriteString("-A INPUT -j ACCEPT\n")
			}
			sb.WriteString("COMMIT\n")
			if err := k.restore(base, sb.String()); err != nil {
				t.Fatal(err)
			}
		}
		b, _ := newFakeBackend(t, k, ModeAuto)
		got, err := b.Mode(context.Background())
		if err != nil || got != tc.want {
			t.Errorf("legacy %d nft %d: got %q %v, want %q", tc.legacyRules, tc.nftRules, got, err, tc.want)
		}
	}
}

func TestDualStackUsesBothTools(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeLegacy)
	snaps := goldenCases()["dual-stack"]
	mustSync(t, b, snaps...)
	var tools []string
	for _, c := range k.calls {
		if strings.HasSuffix(c.name, "-restore") {
			tools = append(tools, c.name)
		}
	}
	if !reflect.DeepEqual(tools, []string{"iptables-legacy-restore", "ip6tables-legacy-restore"}) {
		t.Fatalf("restore tools %v", tools)
	}
	if _, ok := k.dump("ip6tables-legacy")[tableNAT][ServiceChain(snaps[1].Services[0].Name)]; !ok {
		t.Error("IPv6 service chain missing")
	}
}

func TestNewRejectsUnknownMode(t *testing.T) {
	if _, err := New(Config{Mode: "iptables-xyz"}); err == nil {
		t.Fatal("New accepted an unknown mode")
	}
}

// The per-table counts behind kube-proxy's sync_proxy_rules_iptables_total
// and _last: a full sync writes every rule it owns; an idle sync writes
// none and still reports the totals.
func TestTableRuleCounts(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	s := webSnapshot(ep("10.244.1.5:8080", true), ep("10.244.2.5:8080", false))
	first := mustSync(t, b, s)
	text, _ := Render([]*proxier.Snapshot{s})
	want := map[string]int{}
	table := ""
	for _, l := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case strings.HasPrefix(l, "-A "):
			want[table]++
		}
	}
	if len(first.IPTables) != 2 {
		t.Fatalf("counts %+v, want filter and nat", first.IPTables)
	}
	for _, tr := range first.IPTables {
		if tr.Total != want[tr.Table] || tr.Written < tr.Total {
			t.Errorf("first sync %s: total %d written %d, want total %d (all written)", tr.Table, tr.Total, tr.Written, want[tr.Table])
		}
	}
	idle := s
	idle.FullSync, idle.Changed = false, map[proxier.ServicePortName]bool{}
	again := mustSync(t, b, idle)
	for _, tr := range again.IPTables {
		if tr.Written != 0 || tr.Total != want[tr.Table] {
			t.Errorf("idle sync %s: total %d written %d, want %d and 0", tr.Table, tr.Total, tr.Written, want[tr.Table])
		}
	}
}
