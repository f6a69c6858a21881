package iptables

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// verify returns a copy of s for a periodic sync: nothing changed, Verify
// set.
func verify(s *proxier.Snapshot) *proxier.Snapshot {
	c := next(s)
	c.Verify = true
	return c
}

// isListing reports whether restore input only lists chains ("-S CHAIN").
func isListing(in string) bool {
	for _, l := range strings.Split(in, "\n") {
		if l != "" && l != "COMMIT" && !strings.HasPrefix(l, "*") && !strings.HasPrefix(l, "-S ") {
			return false
		}
	}
	return true
}

// countWrites counts the restores that write (not the listings).
func (k *fakeKernel) countWrites() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, c := range k.calls {
		if strings.HasSuffix(c.name, "-restore") && !isListing(c.stdin) {
			n++
		}
	}
	return n
}

func TestVerifyRepairsDrift(t *testing.T) {
	for _, m := range []Mode{ModeNFT, ModeLegacy} {
		t.Run(string(m), func(t *testing.T) { testVerifyRepairsDrift(t, m) })
	}
}

func testVerifyRepairsDrift(t *testing.T, mode Mode) {
	base := "iptables-" + string(mode)
	web := webSnapshot(ep("10.244.1.5:8080", true), ep("10.244.2.5:8080", false))
	svcChain := ServiceChain(webName)
	sepChain := EndpointChain(webName, ep("10.244.1.5:8080", true))
	for _, tc := range []struct {
		name   string
		tamper func(nat, filter *fakeTable)
		want   map[string]int
	}{
		{"SWY-SERVICES flushed", func(nat, _ *fakeTable) { nat.rules[chainServices] = nil }, map[string]int{"chain": 1}},
		{"one SWY-SVC chain flushed", func(nat, _ *fakeTable) { nat.rules[svcChain] = nil }, map[string]int{"chain": 1}},
		{"jump from PREROUTING deleted", func(nat, _ *fakeTable) { nat.rules["PREROUTING"] = nil }, map[string]int{"jump": 1}},
		{"jump from OUTPUT deleted", func(nat, _ *fakeTable) { nat.rules["OUTPUT"] = nil }, map[string]int{"jump": 1}},
		{"both nat jumps and a filter jump deleted", func(nat, filter *fakeTable) {
			nat.rules["PREROUTING"], nat.rules["OUTPUT"] = nil, nil
			filter.rules["FORWARD"] = filter.rules["FORWARD"][1:]
		}, map[string]int{"jump": 3}},
		{"a DNAT rewritten", func(nat, _ *fakeTable) {
			r := slices.Clone(nat.rules[sepChain])
			r[len(r)-1] = strings.Replace(r[len(r)-1], "10.244.1.5:8080", "192.0.2.66:8080", 1)
			nat.rules[sepChain] = r
		}, map[string]int{"chain": 1}},
		{"a rule added to a chain", func(nat, _ *fakeTable) {
			nat.rules[chainServices] = append([]string{"-d 10.96.0.10 -j SWY-MARK-MASQ"}, nat.rules[chainServices]...)
		}, map[string]int{"chain": 1}},
		{"filter chain flushed", func(_, filter *fakeTable) { filter.rules[chainForward] = nil }, map[string]int{"chain": 1}},
		{"SEP chain flushed and deleted", func(nat, _ *fakeTable) {
			nat.rules[svcChain] = nil
			delete(nat.rules, sepChain)
			nat.order = slices.DeleteFunc(nat.order, func(c string) bool { return c == sepChain })
		}, map[string]int{"chain": 2}},
		{"unexpected SWY- chain (only a full save shows it)", func(nat, _ *fakeTable) {
			nat.order = append(nat.order, "SWY-SVC-SOMEONEELSE")
			nat.rules["SWY-SVC-SOMEONEELSE"] = []string{"-j ACCEPT"}
		}, map[string]int{"unexpected-chain": 1}},
	} {
		if mode == ModeNFT && tc.want["unexpected-chain"] > 0 {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeKernel()
			b, _ := newFakeBackend(t, k, mode)
			mustSync(t, b, web)
			want := k.dump(base)
			tables := k.tables[base]
			tc.tamper(tables[tableNAT], tables[tableFilter])

			// A partial sync without Verify trusts its memory (cheap).
			k.resetCalls()
			if res := mustSync(t, b, next(web)); res.Wrote {
				t.Fatalf("non-verifying sync wrote: %+v", res)
			}
			// The periodic (verifying) sync repairs in one partial restore.
			k.resetCalls()
			res := mustSync(t, b, verify(web))
			if res.Full || !res.Wrote || !reflect.DeepEqual(res.Repaired, tc.want) {
				t.Fatalf("verifying sync: %+v, want a partial write repairing %v", res, tc.want)
			}
			if n := k.countWrites(); n != 1 {
				t.Fatalf("%d restores, want 1", n)
			}
			if got := k.dump(base); !reflect.DeepEqual(got, want) {
				t.Fatalf("after repair:\n%v\nwant\n%v", got, want)
			}
			// Nothing drifted any more: the next verifying sync only reads.
			k.resetCalls()
			if res := mustSync(t, b, verify(web)); res.Wrote || res.Repaired != nil {
				t.Fatalf("second verifying sync: %+v, want nothing written", res)
			}
		})
	}
}

// An idle verifying sync only reads: iptables-legacy one iptables-save,
// iptables-nft one listing of named chains per table.
func TestVerifyIdleOnlyReads(t *testing.T) {
	for _, tc := range []struct {
		mode Mode
		want []string
	}{
		{ModeLegacy, []string{"iptables-legacy-save "}},
		{ModeNFT, []string{"iptables-nft-restore --noflush --wait", "iptables-nft-restore --noflush --wait"}},
	} {
		k := newFakeKernel()
		b, _ := newFakeBackend(t, k, tc.mode)
		s := webSnapshot(ep("10.244.1.5:8080", true))
		mustSync(t, b, s)
		k.resetCalls()
		if res := mustSync(t, b, verify(s)); res.Wrote || res.Full {
			t.Fatalf("%s: idle verifying sync: %+v", tc.mode, res)
		}
		var got []string
		for _, c := range k.calls {
			got = append(got, c.name+" "+strings.Join(c.args, " "))
			if strings.HasSuffix(c.name, "-restore") && !isListing(c.stdin) {
				t.Errorf("%s: restore writes: %q", tc.mode, c.stdin)
			}
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: idle verifying sync ran %q, want %q", tc.mode, got, tc.want)
		}
	}
}

// iptables-nft lists the per-service chains in rounds: every chain is
// checked within ceil(chains/verifyWindow) verifying syncs.
func TestVerifyNFTRoundsCoverEveryChain(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	s := bigSnapshot(1500, 10) // ~16.5k service chains: 3 rounds
	mustSync(t, b, s)
	listed := map[string]int{}
	for range 3 {
		k.resetCalls()
		if res := mustSync(t, b, verify(s)); res.Wrote {
			t.Fatalf("idle verifying sync wrote: %+v", res)
		}
		n := 0
		for _, c := range k.calls {
			for _, l := range strings.Split(c.stdin, "\n") {
				if name, ok := strings.CutPrefix(l, "-S "); ok {
					listed[name]++
					n++
				}
			}
		}
		if n > verifyWindow+100 {
			t.Errorf("one check listed %d chains, want about %d", n, verifyWindow)
		}
	}
	for id := range b.state[proxier.IPv4].chains {
		if listed[id.name] == 0 {
			t.Fatalf("chain %s never checked in 3 rounds", id.name)
		}
	}
	if listed[chainServices] != 2*3 { // nat and filter, every round
		t.Errorf("SWY-SERVICES listed %d times, want 6", listed[chainServices])
	}
}

func TestVerifyWithChangeWritesBothInOneRestore(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	s1 := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s1)
	k.tables["iptables-nft"][tableNAT].rules["PREROUTING"] = nil
	s2 := next(webSnapshot(ep("10.244.1.5:8080", true), ep("10.244.2.5:8080", false)), webName)
	s2.Verify = true
	k.resetCalls()
	res := mustSync(t, b, s2)
	if res.Full || res.Repaired["jump"] != 1 || k.countWrites() != 1 {
		t.Fatalf("result %+v with %d restores, want one partial restore repairing the jump", res, k.countWrites())
	}
	assertConverged(t, k, reference(t, s2))
}

func TestVerifyCanaryMissingIsFull(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	s := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s)
	k.tables["iptables-nft"][tableFilter] = nil
	if res := mustSync(t, b, verify(s)); !res.Full {
		t.Fatalf("result %+v, want full", res)
	}
	assertConverged(t, k, reference(t, s))
}

// A foreign rule jumping to a SWY- chain we did not write keeps that chain
// (deleting it would fail the restore).
func TestVerifyKeepsReferencedUnexpectedChain(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeLegacy)
	s := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s)
	if err := k.restore("iptables-legacy", "*nat\n:SWY-OTHER - [0:0]\n:MY-NAT - [0:0]\n-A MY-NAT -j SWY-OTHER\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if res := mustSync(t, b, verify(s)); res.Wrote {
		t.Fatalf("result %+v, want nothing written", res)
	}
	if _, ok := k.tables["iptables-legacy"][tableNAT].rules["SWY-OTHER"]; !ok {
		t.Fatal("referenced chain deleted")
	}
}
