package conformance

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/ipvs"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/iptrace"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// ipvsJumps are the rules the IPVS backend's Sync inserts into the
// built-in chains (ipvs/README.md, "Hooks"), in iptables-save's spelling.
// ipvs.Render leaves them out, so the tracer adds them.
const ipvsJumps = `*mangle
-A PREROUTING -m comment --comment "switchyard ipvs pod traffic marks" -j SWY-IPVS-PREROUTING
-A OUTPUT -m comment --comment "switchyard ipvs node traffic marks" -j SWY-IPVS-ETP-LOCAL
COMMIT
*nat
-A PREROUTING -m comment --comment "switchyard ipvs services" -j SWY-IPVS-SERVICES
-A OUTPUT -m comment --comment "switchyard ipvs services" -j SWY-IPVS-SERVICES
-A POSTROUTING -m comment --comment "switchyard ipvs postrouting" -j SWY-IPVS-POSTROUTING
COMMIT
*filter
-A INPUT -m conntrack --ctstate NEW -m comment --comment "switchyard ipvs input filter" -j SWY-IPVS-INPUT
-A FORWARD -m comment --comment "switchyard ipvs forward" -j SWY-IPVS-FORWARD
COMMIT
`

// ipvsExemptions are the packets ("scenario/packet name") where the IPVS
// mode differs from the table, with the reason. An exempt packet must
// still fail (one that passes is an error, so no exemption lingers).
// Reasons starting with "backend bug" are known defects of ipvs/, not
// accepted differences.
var ipvsExemptions = map[string]string{}

// ipvsExtraPackets are IPVS-specific packets run with the table's
// scenarios: internal traffic to externalTrafficPolicy Local addresses
// through the fwmark virtual servers (kubernetes#71596), which the table
// covers for pods only.
var ipvsExtraPackets = map[string][]scenarios.Packet{
	"nodeport-etp-local": {
		{Name: "ipvs: node to eTP Local node port uses the cluster endpoints, masqueraded", Origin: scenarios.FromNode, Proto: proxier.TCP,
			Dst: netip.AddrPortFrom(scenarios.Topology.NodeIP, 30081), Expect: scenarios.Expect{Endpoints: []string{"10.244.0.2:8080", "10.244.1.2:8080"}, Masqueraded: true}},
		{Name: "ipvs: pod to eTP Local node port without local endpoints uses the cluster endpoints", Origin: scenarios.FromPod, Proto: proxier.TCP,
			Dst: netip.AddrPortFrom(scenarios.Topology.NodeIP, 30082), Expect: scenarios.Expect{Endpoints: []string{"10.244.1.3:8080"}}},
		{Name: "ipvs: node to eTP Local node port without local endpoints uses the cluster endpoints", Origin: scenarios.FromNode, Proto: proxier.TCP,
			Dst: netip.AddrPortFrom(scenarios.Topology.NodeIP, 30082), Expect: scenarios.Expect{Endpoints: []string{"10.244.1.3:8080"}, Masqueraded: true}},
	},
}

// TestTracerIPVS runs every scenario's packets (and ipvsExtraPackets)
// through the IPVS mode's rendered state: ipvs.Render's iptables rules
// (plus the jump rules Sync inserts) and ipsets traced by iptrace, with
// its virtual servers as the node's IPVS table and its swy-ipvs0
// addresses as local addresses.
//
//	go test -run TestTracerIPVS ./test/conformance/
func TestTracerIPVS(t *testing.T) {
	runTracerExempt(t, ipvsMode{}, ipvsExemptions, ipvsExtraPackets)
}

// ipvsMode renders with ipvs.Render and traces with iptrace's IPVS model.
type ipvsMode struct{}

func (ipvsMode) Name() string { return "ipvs" }

func (ipvsMode) Load(snaps []*proxier.Snapshot) (Tracer, error) {
	// The node's local addresses, as the backend reads them from the
	// kernel: node ports answer on all of them.
	st, err := ipvs.Render(snaps, ipvs.RenderOptions{LocalAddrs: scenarios.Topology.NodeAddrs})
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	var rules strings.Builder
	for _, fr := range st.Rules {
		if fr.Family == proxier.IPv4 { // the table is IPv4 only
			rules.WriteString(fr.Text)
		}
	}
	rules.WriteString(ipvsJumps)
	return newIPVSTracerFrom(st.Servers, st.Addresses, ipvs.FormatIPSets(st.Sets), rules.String())
}

// newIPVSTracerFrom loads an IPVS-mode state into iptrace: virtual
// servers, the addresses of swy-ipvs0 (local, like the node's own), ipsets
// in `ipset save` syntax and iptables rules (restored with --noflush, so
// both iptables-save output and Render's text plus ipvsJumps work).
func newIPVSTracerFrom(servers []*ipvs.VirtualServer, addrs []netip.Addr, sets, rules string) (*ipvsTracer, error) {
	rs := iptrace.New()
	if err := rs.LoadIPSets(sets); err != nil {
		return nil, fmt.Errorf("load the ipsets into the tracer: %w", err)
	}
	if err := rs.Restore(rules, true); err != nil {
		return nil, fmt.Errorf("load the iptables rules into the tracer: %w", err)
	}
	node := iptablesNode
	node.LocalAddrs = append(append([]netip.Addr(nil), node.LocalAddrs...), addrs...)
	node.IPVS = &iptrace.IPVS{}
	for _, v := range servers {
		if v.Family != proxier.IPv4 {
			continue
		}
		vs := iptrace.VirtualServer{FWMark: v.FWMark, Addr: v.Addr, Proto: v.Protocol.Lower(), Port: v.Port, Persistent: v.Persistent}
		for _, d := range v.Dests {
			vs.RealServers = append(vs.RealServers, iptrace.RealServer{Addr: d.Addr, Weight: d.Weight})
		}
		node.IPVS.Servers = append(node.IPVS.Servers, vs)
	}
	sorted := slices.Clone(servers)
	slices.SortFunc(sorted, func(a, b *ipvs.VirtualServer) int { return strings.Compare(a.Key.String(), b.Key.String()) })
	dump := "# ipvsadm -Ln\n" + ipvs.FormatIPVS(sorted) + "# ipset save\n" + sets + rules
	return &ipvsTracer{rs: rs, node: node, text: dump}, nil
}

type ipvsTracer struct {
	rs   *iptrace.Ruleset
	node iptrace.Node
	text string
}

func (t *ipvsTracer) Trace(p scenarios.Packet, src netip.Addr) (*Trace, error) {
	return traceIptrace(t.rs, t.node, p, src)
}

// Rules returns the traced state, for failure messages.
func (t *ipvsTracer) Rules() string { return t.text }

// traceIptrace traces p from src with iptrace over rs on node.
func traceIptrace(rs *iptrace.Ruleset, node iptrace.Node, p scenarios.Packet, src netip.Addr) (*Trace, error) {
	ip := iptrace.Packet{Src: src, Dst: p.Dst.Addr(), Proto: p.Proto.Lower(), SrcPort: 40000, DstPort: p.Dst.Port()}
	switch p.Origin {
	case scenarios.FromPod:
		ip.Origin, ip.InIface = iptrace.FromPod, "pod0"
	case scenarios.FromNode:
		ip.Origin = iptrace.FromNode
	case scenarios.FromOutside:
		ip.Origin, ip.InIface = iptrace.FromOutside, "ext0"
	default:
		return nil, fmt.Errorf("unknown origin %q", p.Origin)
	}
	res, err := rs.Trace(node, ip)
	if err != nil {
		return nil, err
	}
	out := &Trace{Affinity: res.AffinityRules}
	for _, o := range res.Outcomes {
		c := Outcome{Endpoint: o.DNAT, Masqueraded: o.Masqueraded, Detail: strings.Join(o.Path, " > ")}
		switch o.Verdict {
		case iptrace.Accept:
			c.Verdict = Delivered
		case iptrace.Drop:
			c.Verdict = Dropped
		case iptrace.Reject:
			c.Verdict = Refused
		}
		out.Outcomes = append(out.Outcomes, c)
	}
	return out, nil
}

// runTracerExempt is runTracer with the extra packets added to their
// scenarios, where the packets named in exempt ("scenario/packet") are
// expected to fail: they are skipped with their reason when they do, and
// reported when they unexpectedly pass.
func runTracerExempt(t *testing.T, mode Mode, exempt map[string]string, extra map[string][]scenarios.Packet) {
	seen := map[string]bool{}
	for _, s := range scenarios.All() {
		if s.IPTablesOnly {
			continue
		}
		t.Run(s.Name, func(t *testing.T) {
			snaps, err := Plan(s)
			if err != nil {
				t.Fatal(err)
			}
			tracer, err := mode.Load(snaps)
			if err != nil {
				t.Fatalf("%s: load: %v", mode.Name(), err)
			}
			objs, err := s.Objects()
			if err != nil {
				t.Fatal(err)
			}
			pods, err := objs.Pods()
			if err != nil {
				t.Fatal(err)
			}
			failed := false
			for _, p := range append(slices.Clone(s.Packets), extra[s.Name]...) {
				key := s.Name + "/" + p.Name
				reason, isExempt := exempt[key]
				seen[key] = true
				ok := t.Run(p.Name, func(t *testing.T) {
					src, err := p.Source(pods)
					if err != nil {
						t.Fatal(err)
					}
					tr, err := tracer.Trace(p, src)
					if err != nil {
						t.Fatalf("%s: trace %v: %v", mode.Name(), p, err)
					}
					if testing.Verbose() {
						t.Logf("traced outcomes:\n%s", tr)
					}
					errs := Check(p, tr)
					switch {
					case isExempt && len(errs) > 0:
						t.Skipf("exempt (%s): %s\n  traced outcomes:\n%s", reason, strings.Join(errs, "; "), tr)
					case isExempt:
						t.Errorf("%s: %v conforms now; remove its exemption (%s)", mode.Name(), p, reason)
					case len(errs) > 0:
						t.Errorf("%s: %v (from %v)\n  want: %s\n  problems:\n    %s\n  traced outcomes:\n%s",
							mode.Name(), p, src, describe(p.Expect), strings.Join(errs, "\n    "), tr)
					}
				})
				failed = failed || !ok
			}
			if d, ok := tracer.(ruleDumper); ok && failed {
				t.Logf("state traced for %s:\n%s", s.Name, d.Rules())
			}
		})
	}
	for key := range exempt {
		if !seen[key] {
			t.Errorf("exemption %q names no packet of the table", key)
		}
	}
}
