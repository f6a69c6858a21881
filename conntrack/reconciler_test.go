package conntrack

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
)

const (
	UDP  = proxier.UDP
	TCP  = proxier.TCP
	SCTP = proxier.SCTP
)

// TestStale is the reconciler's decision table, against one snapshot.
func TestStale(t *testing.T) {
	dns := svc("dns", UDP, "10.96.0.10", 53, 30053, "10.244.0.2:53")
	dns.ExternalIPs = []netip.Addr{netip.MustParseAddr("192.0.2.50")}
	dns.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("192.0.2.60")}
	// A serving, terminating endpoint outside the cluster endpoints keeps
	// its flows (as in kube-proxy); a non-serving one does not.
	dns.AllEndpoints = append(dns.AllEndpoints,
		proxier.Endpoint{Addr: ap("10.244.0.7:53"), Serving: true, Terminating: true},
		proxier.Endpoint{Addr: ap("10.244.0.8:53"), Terminating: true})
	sctp := svc("sig", SCTP, "10.96.0.11", 9000, 0, "10.244.0.4:9000")
	empty := svc("empty", UDP, "10.96.0.12", 53, 30054)
	web := svc("web", TCP, "10.96.0.13", 80, 30080, "10.244.0.5:80")
	local := svc("local", UDP, "10.96.0.14", 53, 0)
	local.ClusterEndpoints = nil
	local.LocalEndpoints = eps("10.244.0.6:53")
	x := newIndex(snapshot(proxier.IPv4, true, nil, dns, sctp, empty, web, local), nil)

	for _, c := range []struct {
		name  string
		f     Flow
		stale bool
	}{
		{"cluster IP to serving endpoint", flow(UDP, "10.0.0.5:5353", "10.96.0.10:53", "10.244.0.2:53"), false},
		{"cluster IP to removed endpoint", flow(UDP, "10.0.0.5:5353", "10.96.0.10:53", "10.244.0.9:53"), true},
		{"cluster IP to right IP, wrong port", flow(UDP, "10.0.0.5:5353", "10.96.0.10:53", "10.244.0.2:54"), true},
		{"cluster IP never DNATed", flow(UDP, "10.0.0.5:5353", "10.96.0.10:53", ""), true},
		{"cluster IP, other port", flow(UDP, "10.0.0.5:5353", "10.96.0.10:54", "10.244.0.9:53"), false},
		{"external IP to removed endpoint", flow(UDP, "192.0.2.100:5353", "192.0.2.50:53", "10.244.0.9:53"), true},
		{"load-balancer IP to serving endpoint", flow(UDP, "192.0.2.100:5353", "192.0.2.60:53", "10.244.0.2:53"), false},
		{"load-balancer IP never DNATed", flow(UDP, "192.0.2.100:5353", "192.0.2.60:53", ""), true},
		{"node port to serving endpoint", flow(UDP, "192.0.2.100:5353", "10.0.0.10:30053", "10.244.0.2:53"), false},
		{"node port to removed endpoint", flow(UDP, "192.0.2.100:5353", "10.0.0.10:30053", "10.244.0.9:53"), true},
		{"node port never DNATed", flow(UDP, "192.0.2.100:5353", "10.0.0.10:30053", ""), true},
		{"serving terminating endpoint kept", flow(UDP, "10.0.0.5:5353", "10.96.0.10:53", "10.244.0.7:53"), false},
		{"non-serving terminating endpoint", flow(UDP, "10.0.0.5:5353", "10.96.0.10:53", "10.244.0.8:53"), true},
		{"SCTP to serving endpoint", flow(SCTP, "10.0.0.5:5000", "10.96.0.11:9000", "10.244.0.4:9000"), false},
		{"SCTP to removed endpoint", flow(SCTP, "10.0.0.5:5000", "10.96.0.11:9000", "10.244.0.9:9000"), true},
		{"UDP flow to an SCTP service", flow(UDP, "10.0.0.5:5000", "10.96.0.11:9000", "10.244.0.9:9000"), false},
		{"no endpoints: cluster IP entries go", flow(UDP, "10.0.0.5:5353", "10.96.0.12:53", ""), true},
		{"no endpoints: node port left alone", flow(UDP, "192.0.2.100:5353", "10.0.0.10:30054", ""), false},
		{"TCP is never touched", flow(TCP, "10.0.0.5:4000", "10.96.0.13:80", "10.244.0.9:80"), false},
		{"protocol we do not handle", Flow{Orig: Tuple{ap("10.0.0.5:1"), ap("10.96.0.10:53")}, Reply: Tuple{ap("10.96.0.10:53"), ap("10.0.0.5:1")}}, false},
		{"unrelated destination", flow(UDP, "10.0.0.5:5353", "192.0.2.7:53", ""), false},
		{"local endpoint (policy Local) kept", flow(UDP, "10.0.0.5:5353", "10.96.0.14:53", "10.244.0.6:53"), false},
	} {
		if got := x.stale(&c.f); got != c.stale {
			t.Errorf("%s (%s): stale = %v, want %v", c.name, c.f, got, c.stale)
		}
	}
}

func newTestReconciler(table *fakeTable) (*Reconciler, *fakeBackend, *fakeRecorder) {
	b := &fakeBackend{}
	rec := &fakeRecorder{}
	return Wrap(b, Config{Table: table, Logger: quiet(), Recorder: rec}), b, rec
}

// TestReconcilerEndpointMoves walks a UDP service through its life: the
// first sync keeps valid entries (no flush on restart), replacing the
// endpoint deletes the old flow, a first endpoint deletes the un-DNATed
// entry, and removing the service deletes its flows.
func TestReconcilerEndpointMoves(t *testing.T) {
	ctx := context.Background()
	table := &fakeTable{flows: map[proxier.IPFamily][]Flow{proxier.IPv4: {
		flow(UDP, "10.0.0.5:5353", "10.96.0.10:53", "10.244.0.2:53"),      // valid
		flow(UDP, "10.0.0.6:5353", "10.96.0.10:53", "10.244.0.99:53"),     // to a pod gone while we were down
		flow(TCP, "10.0.0.5:4000", "10.96.0.10:53", "10.244.0.99:53"),     // TCP: not ours
		flow(UDP, "192.0.2.1:5000", "198.51.100.1:53", "198.51.100.1:53"), // not a service
	}}}
	r, _, rec := newTestReconciler(table)
	dns := svc("dns", UDP, "10.96.0.10", 53, 0, "10.244.0.2:53")
	if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, true, nil, dns)}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"TCP 10.0.0.5:4000 -> 10.96.0.10:53 reply 10.244.0.99:53 -> 10.0.0.5:4000",
		"UDP 10.0.0.5:5353 -> 10.96.0.10:53 reply 10.244.0.2:53 -> 10.0.0.5:5353",
		"UDP 192.0.2.1:5000 -> 198.51.100.1:53 reply 198.51.100.1:53 -> 192.0.2.1:5000",
	}
	if got := table.strings(proxier.IPv4); !slices.Equal(got, want) {
		t.Fatalf("after the first sync:\n got %q\nwant %q", got, want)
	}
	if !slices.Equal(rec.records, []record{{proxier.IPv4, 1}}) {
		t.Errorf("metrics: %v", rec.records)
	}

	// A TCP-only change: no dump.
	web := svc("web", TCP, "10.96.0.13", 80, 0, "10.244.0.5:80")
	dumps := table.dumps
	if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, false, []*proxier.ServicePort{web}, dns, web)}); err != nil {
		t.Fatal(err)
	}
	if table.dumps != dumps {
		t.Errorf("a TCP-only change dumped the table")
	}

	// The endpoint is replaced.
	dns2 := svc("dns", UDP, "10.96.0.10", 53, 0, "10.244.0.3:53")
	if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, false, []*proxier.ServicePort{dns2}, dns2, web)}); err != nil {
		t.Fatal(err)
	}
	if got := table.strings(proxier.IPv4); slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "10.244.0.2:53") }) {
		t.Errorf("the flow to the replaced endpoint survived: %q", got)
	}

	// A service without endpoints gets its first one: the un-DNATed entry
	// made meanwhile goes.
	table.flows[proxier.IPv4] = append(table.flows[proxier.IPv4], flow(UDP, "10.0.0.7:6000", "10.96.0.20:53", ""))
	late := svc("late", UDP, "10.96.0.20", 53, 0, "10.244.0.4:53")
	if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, false, []*proxier.ServicePort{late}, dns2, late, web)}); err != nil {
		t.Fatal(err)
	}
	if got := table.strings(proxier.IPv4); slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "10.96.0.20") }) {
		t.Errorf("the un-DNATed entry survived the first endpoint: %q", got)
	}

	// The service is removed: its flows go too.
	table.flows[proxier.IPv4] = append(table.flows[proxier.IPv4], flow(UDP, "10.0.0.5:5353", "10.96.0.10:53", "10.244.0.3:53"))
	if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, false, []*proxier.ServicePort{dns2}, late, web)}); err != nil {
		t.Fatal(err)
	}
	if got := table.strings(proxier.IPv4); slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "UDP 10.0.0.5:5353 -> 10.96.0.10:53") }) {
		t.Errorf("the flow of a removed service survived: %q", got)
	}
}

// TestReconcilerFailures: a failed backend sync reconciles nothing; a
// failed reconcile does not fail the sync and is retried at the next one
// even if nothing changed.
func TestReconcilerFailures(t *testing.T) {
	ctx := context.Background()
	table := &fakeTable{flows: map[proxier.IPFamily][]Flow{proxier.IPv4: {
		flow(UDP, "10.0.0.6:5353", "10.96.0.10:53", "10.244.0.99:53"),
	}}}
	r, b, _ := newTestReconciler(table)
	dns := svc("dns", UDP, "10.96.0.10", 53, 0, "10.244.0.2:53")
	b.fail = errBoom
	if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, true, nil, dns)}); !errors.Is(err, errBoom) {
		t.Fatalf("Sync error = %v, want the backend's", err)
	}
	if table.dumps != 0 {
		t.Fatalf("reconciled after a failed backend sync")
	}
	b.fail = nil
	table.fail = errBoom
	if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, true, nil, dns)}); err != nil {
		t.Fatalf("a reconcile failure failed the sync: %v", err)
	}
	table.fail = nil
	if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, false, nil, dns)}); err != nil {
		t.Fatal(err)
	}
	if table.dumps != 2 || len(table.flows[proxier.IPv4]) != 0 {
		t.Errorf("the failed reconcile was not retried: %d dumps, flows %q", table.dumps, table.strings(proxier.IPv4))
	}
	// Now nothing is pending and nothing changed: no dump.
	if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, false, nil, dns)}); err != nil {
		t.Fatal(err)
	}
	if table.dumps != 2 {
		t.Errorf("an idle sync dumped the table")
	}
}

// TestReconcilerFamilies: each family is reconciled against its own
// snapshot, and a node without UDP/SCTP services never dumps.
func TestReconcilerFamilies(t *testing.T) {
	ctx := context.Background()
	table := &fakeTable{flows: map[proxier.IPFamily][]Flow{
		proxier.IPv4: {flow(UDP, "10.0.0.6:5353", "10.96.0.10:53", "10.244.0.99:53")},
		proxier.IPv6: {flow(UDP, "[fd00::6]:5353", "[fd00:96::10]:53", "[fd00:244::99]:53")},
	}}
	r, _, rec := newTestReconciler(table)
	v4 := svc("dns", UDP, "10.96.0.10", 53, 0, "10.244.0.2:53")
	v6 := svc("dns", UDP, "fd00:96::10", 53, 0, "[fd00:244::2]:53")
	if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, true, nil, v4), snapshot(proxier.IPv6, true, nil, v6)}); err != nil {
		t.Fatal(err)
	}
	if len(table.flows[proxier.IPv4])+len(table.flows[proxier.IPv6]) != 0 {
		t.Errorf("stale flows left: %q %q", table.strings(proxier.IPv4), table.strings(proxier.IPv6))
	}
	if !slices.Equal(rec.records, []record{{proxier.IPv4, 1}, {proxier.IPv6, 1}}) {
		t.Errorf("metrics: %v", rec.records)
	}

	table2 := &fakeTable{flows: map[proxier.IPFamily][]Flow{}}
	r2, _, _ := newTestReconciler(table2)
	web := svc("web", TCP, "10.96.0.13", 80, 0, "10.244.0.5:80")
	if _, err := r2.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, true, nil, web)}); err != nil {
		t.Fatal(err)
	}
	if table2.dumps != 0 {
		t.Errorf("a node without UDP/SCTP services dumped the table")
	}
}

// TestReconcilerForwards: Name, Render and Cleanup reach the backend.
func TestReconcilerForwards(t *testing.T) {
	r, _, _ := newTestReconciler(&fakeTable{})
	if r.Name() != "fake" || r.Cleanup(context.Background()) != nil {
		t.Errorf("Name/Cleanup not forwarded")
	}
	if _, err := r.Render(nil); err == nil || !strings.Contains(err.Error(), "cannot render") {
		t.Errorf("Render of a non-renderer: %v", err)
	}
	if r.Unwrap() == nil {
		t.Errorf("Unwrap returned nil")
	}
}

// TestReconcilerRemovalSurvivesFailure: a service removed in a sync whose
// reconcile failed (or was cut short by a cancelled context) is still
// cleaned at the next sync, even if that one changes nothing.
func TestReconcilerRemovalSurvivesFailure(t *testing.T) {
	for _, how := range []string{"table error", "cancelled context"} {
		t.Run(how, func(t *testing.T) {
			table := &fakeTable{flows: map[proxier.IPFamily][]Flow{proxier.IPv4: {
				flow(UDP, "10.0.0.6:5353", "10.96.0.10:53", "10.244.0.2:53"),
			}}}
			r, _, _ := newTestReconciler(table)
			dns := svc("dns", UDP, "10.96.0.10", 53, 0, "10.244.0.2:53")
			other := svc("other", UDP, "10.96.0.11", 53, 0, "10.244.0.3:53")
			if _, err := r.Sync(context.Background(), []*proxier.Snapshot{snapshot(proxier.IPv4, true, nil, dns, other)}); err != nil {
				t.Fatal(err)
			}
			if len(table.flows[proxier.IPv4]) != 1 {
				t.Fatalf("a valid flow was deleted: %q", table.strings(proxier.IPv4))
			}
			// dns is removed; this reconcile does not happen.
			ctx := context.Background()
			if how == "table error" {
				table.fail = errBoom
			} else {
				c, cancel := context.WithCancel(ctx)
				cancel()
				ctx = c
			}
			if _, err := r.Sync(ctx, []*proxier.Snapshot{snapshot(proxier.IPv4, false, []*proxier.ServicePort{dns}, other)}); err != nil {
				t.Fatal(err)
			}
			table.fail = nil
			if _, err := r.Sync(context.Background(), []*proxier.Snapshot{snapshot(proxier.IPv4, false, nil, other)}); err != nil {
				t.Fatal(err)
			}
			if got := table.strings(proxier.IPv4); len(got) != 0 {
				t.Errorf("the flow of the removed service survived: %q", got)
			}
		})
	}
}

// TestReconcilerProtocols: only the protocols in use are dumped.
func TestReconcilerProtocols(t *testing.T) {
	table := &fakeTable{flows: map[proxier.IPFamily][]Flow{}}
	r, _, _ := newTestReconciler(table)
	sctp := svc("sig", SCTP, "10.96.0.11", 9000, 0, "10.244.0.4:9000")
	if _, err := r.Sync(context.Background(), []*proxier.Snapshot{snapshot(proxier.IPv4, true, nil, sctp)}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(table.protocols, []proxier.Protocol{SCTP}) {
		t.Errorf("dumped %v, want SCTP only", table.protocols)
	}
	dns := svc("dns", UDP, "10.96.0.10", 53, 0, "10.244.0.2:53")
	if _, err := r.Sync(context.Background(), []*proxier.Snapshot{snapshot(proxier.IPv4, false, []*proxier.ServicePort{dns}, dns, sctp)}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(table.protocols, []proxier.Protocol{UDP, SCTP}) {
		t.Errorf("dumped %v, want UDP then SCTP", table.protocols)
	}
}
