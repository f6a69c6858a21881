// Package conformance checks proxy modes against the mode-neutral scenario
// table of package test/scenarios, twice:
//
//   - through a packet tracer over the rules a mode renders (no kernel
//     needed): every scenario is planned, rendered by the mode, loaded into
//     the mode's tracer, and each packet's possible outcomes are compared
//     with its expectation;
//   - with real TCP and UDP traffic in the network-namespace lab (root
//     only), against the real switchyard binary.
//
// A proxy mode joins the tracer half by implementing Mode (see the
// iptables one in iptables_mode_test.go) and adding itself to the modes
// list of the tests. The package's non-test code is the small mode-neutral
// part: the outcome types, planning a scenario, and comparing outcomes with
// expectations.
//
// Commands (the lab tests need root; without it they skip):
//
//	go test -run 'TestTracer$' ./test/conformance/            # rendered rules, no root
//	go test -run TestTracerKernelRules ./test/conformance/   # rules read back from a namespace
//	go test -run 'TestTracerIPVS$' ./test/conformance/         # IPVS mode: rendered state (ipvs_mode_test.go)
//	go test -run TestTracerIPVSKernelRules ./test/conformance/  # IPVS mode: rules and sets read back from a namespace
//	go test -run TestTracerNFTables ./test/conformance/  # nftables mode: tables synced into knftables fakes
//	go test -v -run TestRealTraffic ./test/conformance/      # every scenario with real packets (TestRealTrafficNFTables: nftables mode)
//	go test -v -run TestBalancedOverThreePods ./test/conformance/  # per-pod counts of 30 connections
//	go test -v -run 'TestLiveManifestChanges|TestBadServiceSkipped' ./test/conformance/
//	go test -v -run TestDualStackRealTraffic ./test/conformance/  # IPv6 and dual-stack services, dual-stack lab
package conformance

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/planner"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// MasqueradeBit is the fwmark bit every conformance run uses.
const MasqueradeBit = 14

// Verdict is the fate of a traced packet.
type Verdict int

const (
	// Delivered: the packet goes on (to an endpoint, to the node, or
	// routed onwards).
	Delivered Verdict = iota
	// Dropped: silently discarded.
	Dropped
	// Refused: discarded with an error sent back (TCP reset or ICMP
	// unreachable).
	Refused
)

// String names the verdict.
func (v Verdict) String() string {
	switch v {
	case Delivered:
		return "delivered"
	case Dropped:
		return "dropped"
	case Refused:
		return "refused"
	}
	return fmt.Sprintf("Verdict(%d)", int(v))
}

// Outcome is one possible fate of a packet in a mode's rules.
type Outcome struct {
	Verdict Verdict
	// Endpoint is where the destination was rewritten to; invalid when no
	// rule rewrote it.
	Endpoint netip.AddrPort
	// Masqueraded is true when the source was rewritten to a node address.
	Masqueraded bool
	// Detail shows how the packet got there (e.g. the chains it crossed),
	// for failure messages.
	Detail string
}

// String summarises the outcome on one line.
func (o Outcome) String() string {
	var b strings.Builder
	b.WriteString(o.Verdict.String())
	if o.Endpoint.IsValid() {
		fmt.Fprintf(&b, " to %s", o.Endpoint)
	}
	if o.Masqueraded {
		b.WriteString(" masqueraded")
	}
	if o.Detail != "" {
		b.WriteString(" via " + o.Detail)
	}
	return b.String()
}

// Trace is every possible outcome of one packet.
type Trace struct {
	Outcomes []Outcome
	// Affinity is true when session-affinity rules were on the packet's way.
	Affinity bool
}

// String lists the outcomes, one per line.
func (t *Trace) String() string {
	lines := make([]string, 0, len(t.Outcomes)+1)
	for _, o := range t.Outcomes {
		lines = append(lines, "  "+o.String())
	}
	if t.Affinity {
		lines = append(lines, "  (session-affinity rules on the path)")
	}
	return strings.Join(lines, "\n")
}

// Tracer answers what a mode's loaded rules do with the first packet of a
// connection.
type Tracer interface {
	// Trace returns every possible outcome of p, sent from src.
	Trace(p scenarios.Packet, src netip.Addr) (*Trace, error)
}

// Mode is a proxy mode under test.
type Mode interface {
	// Name is the mode's name ("iptables", ...), used in test names.
	Name() string
	// Load renders snaps as the mode programs them and returns a tracer
	// over the result.
	Load(snaps []*proxier.Snapshot) (Tracer, error)
}

// PlannerConfig is the planner configuration a scenario runs with: its node
// (with the topology's node IP), IPv4, its masquerading settings and
// MasqueradeBit.
func PlannerConfig(s scenarios.Scenario) planner.Config {
	zone := ""
	if objs, err := s.Objects(); err == nil {
		for _, n := range objs.Nodes {
			if n.Name == s.Node {
				zone = n.Labels[planner.LabelZone]
			}
		}
	}
	return planner.Config{
		// The lab's node has every address of the topology (the outside
		// gateway too); the running switchyard finds them on its
		// interfaces, the planner lists them for the IPVS mode.
		Node: planner.NodeInfo{Name: s.Node, Zone: zone, IPs: []netip.Addr{scenarios.Topology.NodeIP},
			LocalAddrs: scenarios.Topology.NodeAddrs},
		Families:      []proxier.IPFamily{proxier.IPv4},
		ClusterCIDRs:  s.Config.ClusterCIDRs,
		MasqueradeAll: s.Config.MasqueradeAll,
		MasqueradeBit: MasqueradeBit,
		// switchyard's default, as the lab runs it (only the iptables
		// mode implements it).
		LocalhostNodePorts: true,
	}
}

// Plan decodes the scenario's fixture and plans it. Problems the planner
// reports are returned as an error, but for those the scenario expects
// (each of which must be reported).
func Plan(s scenarios.Scenario) ([]*proxier.Snapshot, error) {
	objs, err := s.Objects()
	if err != nil {
		return nil, err
	}
	var node *corev1.Node
	for _, n := range objs.Nodes {
		if n.Name == s.Node {
			node = n
		}
	}
	snaps, problems := planner.Plan(planner.Objects{Services: objs.Services, Slices: objs.Slices, Node: node}, PlannerConfig(s))
	var unexpected []string
	seen := make([]bool, len(s.Problems))
	for _, p := range problems {
		ok := false
		for i, want := range s.Problems {
			if strings.Contains(p.String(), want) {
				ok, seen[i] = true, true
			}
		}
		if !ok {
			unexpected = append(unexpected, p.String())
		}
	}
	if len(unexpected) > 0 {
		return nil, fmt.Errorf("scenario %s: the planner rejected part of the fixture: %s", s.Name, strings.Join(unexpected, "; "))
	}
	for i, want := range s.Problems {
		if !seen[i] {
			return nil, fmt.Errorf("scenario %s: the planner did not report the expected problem %q", s.Name, want)
		}
	}
	return snaps, nil
}

// Check compares a packet's trace with its expectation and returns what
// disagrees (nothing when the trace conforms):
//
//   - Endpoints: every outcome is delivered to one of them, each of them is
//     a possible outcome, every outcome's masquerading is as expected, and
//     session-affinity rules are on the path exactly when Affinity is set;
//   - Refused / Dropped: every outcome is refused / dropped;
//   - Unserved: no outcome reaches an endpoint (delivered with a rewritten
//     destination).
func Check(p scenarios.Packet, tr *Trace) []string {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if len(tr.Outcomes) == 0 {
		return []string{"the trace has no outcome at all"}
	}
	switch {
	case len(p.Endpoints) > 0:
		want := map[string]bool{}
		for _, e := range p.Endpoints {
			want[e] = true
		}
		got := map[string]bool{}
		for _, o := range tr.Outcomes {
			switch {
			case o.Verdict != Delivered:
				bad("an outcome is %s, want every outcome delivered to one of %v", o.Verdict, p.Endpoints)
			case !o.Endpoint.IsValid():
				bad("an outcome is delivered without reaching an endpoint (no DNAT), want one of %v", p.Endpoints)
			case !want[o.Endpoint.String()]:
				bad("endpoint %s is reachable but not allowed (allowed: %v)", o.Endpoint, p.Endpoints)
			default:
				got[o.Endpoint.String()] = true
				if o.Masqueraded != p.Masqueraded {
					bad("to %s: masqueraded=%v, want %v", o.Endpoint, o.Masqueraded, p.Masqueraded)
				}
			}
		}
		var missing []string
		for _, e := range p.Endpoints {
			if !got[e] {
				missing = append(missing, e)
			}
		}
		if len(missing) > 0 {
			bad("allowed endpoints never chosen: %v", missing)
		}
		if tr.Affinity != p.Affinity {
			bad("session-affinity rules on the path: %v, want %v", tr.Affinity, p.Affinity)
		}
	case p.Refused, p.Dropped:
		want := Refused
		if p.Dropped {
			want = Dropped
		}
		for _, o := range tr.Outcomes {
			if o.Verdict != want {
				bad("an outcome is %s, want %s", o.Verdict, want)
			}
		}
	case p.Unserved:
		for _, o := range tr.Outcomes {
			if o.Verdict == Delivered && o.Endpoint.IsValid() {
				bad("delivered to %s, want no endpoint to receive it", o.Endpoint)
			}
		}
	default:
		bad("the packet has no expectation")
	}
	return dedupe(errs)
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}
