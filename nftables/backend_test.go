package nftables

import (
	"context"
	"errors"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/proxier"
)

func partial(s *proxier.Snapshot, changed ...proxier.ServicePortName) *proxier.Snapshot {
	c := *s
	c.FullSync, c.Verify = false, false
	c.Changed = map[proxier.ServicePortName]bool{}
	for _, n := range changed {
		c.Changed[n] = true
	}
	return &c
}

// A sync without changes writes nothing; a one-endpoint change writes
// only that service port's chains and elements, in one transaction, and
// never lists the table.
func TestPartialSyncTouchesOnlyTheChange(t *testing.T) {
	b, fs := fakes(t)
	snap := bigSnapshot(50, 3)
	if _, err := b.Sync(context.Background(), []*proxier.Snapshot{snap}); err != nil {
		t.Fatal(err)
	}
	fake := fs[proxier.IPv4]
	fake.LastTransaction = nil
	res, err := b.Sync(context.Background(), []*proxier.Snapshot{partial(snap)})
	if err != nil || res.Wrote || fake.LastTransaction != nil {
		t.Fatalf("idle sync: %+v, %v, ran %v", res, err, fake.LastTransaction)
	}

	// Move one endpoint of service 7.
	next := bigSnapshot(50, 3)
	sp := next.Services[7]
	orig := sp.AllEndpoints[2]
	sp.AllEndpoints[2] = ep("10.200.0.1:8080", false)
	resolve(sp)
	res, err = b.Sync(context.Background(), []*proxier.Snapshot{partial(next, sp.Name)})
	if err != nil || res.Full || !res.Wrote {
		t.Fatalf("partial sync: %+v, %v", res, err)
	}
	tx := fake.LastTransaction.String()
	h := strings.TrimPrefix(ServiceChain(sp.Name), prefixSVC)
	for _, line := range strings.Split(strings.TrimSpace(tx), "\n") {
		if !strings.Contains(line, h) && !strings.Contains(line, "10.200.0.1") && !strings.Contains(line, orig.Addr.Addr().String()) {
			t.Errorf("partial sync wrote a line of another service: %s", line)
		}
	}
	if !strings.Contains(tx, "dnat to 10.200.0.1:8080") || !strings.Contains(tx, "delete element ip switchyard hairpin-connections { "+orig.Addr.Addr().String()) {
		t.Errorf("partial sync misses the new endpoint or the old hairpin element's deletion:\n%s", tx)
	}
	// The result equals a full sync of the same snapshot.
	b2, fs2 := fakes(t)
	if _, err := b2.Sync(context.Background(), []*proxier.Snapshot{next}); err != nil {
		t.Fatal(err)
	}
	if sortedLines(fake.Dump()) != sortedLines(fs2[proxier.IPv4].Dump()) {
		t.Error("partial sync result differs from a full sync")
	}
}

// sortedLines sorts a dump's lines (element order is insertion order).
func sortedLines(s string) string {
	l := strings.Split(s, "\n")
	sort.Strings(l)
	return strings.Join(l, "\n")
}

// failing wraps a fake and fails the next Run.
type failing struct {
	*knftables.Fake
	fail bool
}

func (f *failing) Run(ctx context.Context, tx *knftables.Transaction) error {
	if f.fail {
		f.fail = false
		return errors.New("injected failure")
	}
	return f.Fake.Run(ctx, tx)
}

// A failed transaction is reported, leaves the previous table, and the
// next sync is full.
func TestFailedTransactionForcesFullSync(t *testing.T) {
	f := &failing{Fake: knftables.NewFake(knftables.IPv4Family, TableName)}
	b, err := New(Config{Logger: quietLogger(), NewInterface: func(proxier.IPFamily) (knftables.Interface, error) { return f, nil }})
	if err != nil {
		t.Fatal(err)
	}
	snap := bigSnapshot(5, 2)
	if _, err := b.Sync(context.Background(), []*proxier.Snapshot{snap}); err != nil {
		t.Fatal(err)
	}
	before := f.Dump()
	next := bigSnapshot(5, 2)
	next.Services[1].AllEndpoints[0] = ep("10.200.0.9:8080", false)
	resolve(next.Services[1])
	f.fail = true
	if _, err := b.Sync(context.Background(), []*proxier.Snapshot{partial(next, next.Services[1].Name)}); err == nil {
		t.Fatal("want the injected error")
	}
	if f.Dump() != before {
		t.Fatal("a failed transaction changed the table")
	}
	res, err := b.Sync(context.Background(), []*proxier.Snapshot{partial(next)})
	if err != nil || !res.Full {
		t.Fatalf("the sync after a failure must be full: %+v %v", res, err)
	}
	if !strings.Contains(f.Dump(), "10.200.0.9:8080") {
		t.Error("the full sync did not write the change")
	}
}

// A removed service port loses every chain, set and element.
func TestRemovedServiceLeavesNothing(t *testing.T) {
	b, fs := fakes(t)
	snaps := goldenCases()["affinity"]
	if _, err := b.Sync(context.Background(), snaps); err != nil {
		t.Fatal(err)
	}
	gone := snaps[0].Services[0].Name
	empty := snapshot(proxier.IPv4)
	if _, err := b.Sync(context.Background(), []*proxier.Snapshot{partial(empty, gone)}); err != nil {
		t.Fatal(err)
	}
	b2, fs2 := fakes(t)
	if _, err := b2.Sync(context.Background(), []*proxier.Snapshot{empty}); err != nil {
		t.Fatal(err)
	}
	if got, want := sortedLines(fs[proxier.IPv4].Dump()), sortedLines(fs2[proxier.IPv4].Dump()); got != want {
		t.Errorf("after removing the service:\n%s\nwant\n%s", got, want)
	}
}

// A verifying sync also catches a service port the change set missed
// (added or removed without being named in Changed).
func TestVerifyCatchesUnnamedChanges(t *testing.T) {
	b, fs := fakes(t)
	snap := bigSnapshot(4, 2)
	if _, err := b.Sync(context.Background(), []*proxier.Snapshot{snap}); err != nil {
		t.Fatal(err)
	}
	next := bigSnapshot(5, 2)
	next.Services = next.Services[1:] // one removed, one added, none named
	v := partial(next)
	if res, err := b.Sync(context.Background(), []*proxier.Snapshot{v}); err != nil || res.Wrote {
		t.Fatalf("a partial sync with an empty change set must write nothing: %+v %v", res, err)
	}
	v.Verify = true
	if res, err := b.Sync(context.Background(), []*proxier.Snapshot{v}); err != nil || !res.Wrote {
		t.Fatalf("verifying sync: %+v %v", res, err)
	}
	b2, fs2 := fakes(t)
	if _, err := b2.Sync(context.Background(), []*proxier.Snapshot{next}); err != nil {
		t.Fatal(err)
	}
	if sortedLines(fs[proxier.IPv4].Dump()) != sortedLines(fs2[proxier.IPv4].Dump()) {
		t.Error("after the verifying sync the table differs from a full sync")
	}
}
