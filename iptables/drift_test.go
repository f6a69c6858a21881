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

// countCalls counts the calls whose tool name ends with suffix.
func (k *fakeKernel) countCalls(suffix string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, c := range k.calls {
		if strings.HasSuffix(c.name, suffix) {
			n++
		}
	}
	return n
}

func TestVerifyRepairsDrift(t *testing.T) {
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
		{"unexpected SWY- chain", func(nat, _ *fakeTable) {
			nat.order = append(nat.order, "SWY-SVC-SOMEONEELSE")
			nat.rules["SWY-SVC-SOMEONEELSE"] = []string{"-j ACCEPT"}
		}, map[string]int{"unexpected-chain": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeKernel()
			b, _ := newFakeBackend(t, k, ModeNFT)
			mustSync(t, b, web)
			want := k.dump("iptables-nft")
			tables := k.tables["iptables-nft"]
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
			if n := k.countCalls("-restore"); n != 1 {
				t.Fatalf("%d restores, want 1", n)
			}
			if got := k.dump("iptables-nft"); !reflect.DeepEqual(got, want) {
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

func TestVerifyIdleReadsOnlySaves(t *testing.T) {
	k := newFakeKernel()
	b, _ := newFakeBackend(t, k, ModeNFT)
	s := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s)
	k.resetCalls()
	if res := mustSync(t, b, verify(s)); res.Wrote || res.Full {
		t.Fatalf("idle verifying sync: %+v", res)
	}
	var got []string
	for _, c := range k.calls {
		got = append(got, c.name+" "+strings.Join(c.args, " "))
	}
	want := []string{"iptables-nft-save -t filter", "iptables-nft-save -t nat"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("idle verifying sync ran %q, want %q", got, want)
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
	if res.Full || res.Repaired["jump"] != 1 || k.countCalls("-restore") != 1 {
		t.Fatalf("result %+v with %d restores, want one partial restore repairing the jump", res, k.countCalls("-restore"))
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
	b, _ := newFakeBackend(t, k, ModeNFT)
	s := webSnapshot(ep("10.244.1.5:8080", true))
	mustSync(t, b, s)
	if err := k.restore("iptables-nft", "*nat\n:SWY-OTHER - [0:0]\n:MY-NAT - [0:0]\n-A MY-NAT -j SWY-OTHER\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if res := mustSync(t, b, verify(s)); res.Wrote {
		t.Fatalf("result %+v, want nothing written", res)
	}
	if _, ok := k.tables["iptables-nft"][tableNAT].rules["SWY-OTHER"]; !ok {
		t.Fatal("referenced chain deleted")
	}
}
