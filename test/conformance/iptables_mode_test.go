package conformance

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/iptrace"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// iptablesJumps are the rules Backend.Sync inserts into the built-in
// chains (iptables/README.md, "Hooks"), in the order they end up at the top
// of each chain and in iptables-save's spelling. Render leaves them out, so
// the tracer needs them added. TestIPTablesKernelMatchesRender checks them
// against what the real backend writes.
const iptablesJumps = `*nat
-A PREROUTING -m comment --comment "switchyard service portals" -j SWY-SERVICES
-A OUTPUT -m comment --comment "switchyard service portals" -j SWY-SERVICES
-A POSTROUTING -m comment --comment "switchyard postrouting rules" -j SWY-POSTROUTING
COMMIT
*filter
-A INPUT -m conntrack --ctstate NEW -m comment --comment "switchyard load balancer firewall" -j SWY-FIREWALL
-A INPUT -m comment --comment "switchyard health check service ports" -j SWY-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "switchyard externally-visible service portals" -j SWY-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "switchyard load balancer firewall" -j SWY-FIREWALL
-A FORWARD -m comment --comment "switchyard forwarding rules" -j SWY-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "switchyard service portals" -j SWY-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "switchyard externally-visible service portals" -j SWY-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "switchyard load balancer firewall" -j SWY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "switchyard service portals" -j SWY-SERVICES
COMMIT
`

// iptablesNode is the lab's node as the iptables tracer sees it: its
// addresses, pods behind per-pod veths, everything else out of ext0.
var iptablesNode = iptrace.Node{
	LocalAddrs: scenarios.Topology.NodeAddrs,
	Routes: []iptrace.Route{
		{Dst: scenarios.Topology.ClusterCIDR, Iface: "pod0"},
		{Dst: scenarios.Topology.OutsideNet, Iface: "ext0"},
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Iface: "ext0"},
	},
}

// iptablesMode renders with iptables.Render, adds the jump rules and traces
// with iptrace.
type iptablesMode struct{}

func (iptablesMode) Name() string { return "iptables" }

func (iptablesMode) Load(snaps []*proxier.Snapshot) (Tracer, error) {
	b, err := iptables.New(iptables.Config{Mode: iptables.ModeNFT, Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	text, err := b.Render(snaps)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	rs, err := iptrace.Parse(text)
	if err != nil {
		return nil, fmt.Errorf("load the rendered rules into the tracer: %w", err)
	}
	if err := rs.Restore(iptablesJumps, true); err != nil {
		return nil, fmt.Errorf("add the jump rules: %w", err)
	}
	return &iptablesTracer{rs: rs, text: text}, nil
}

// iptablesKernelMode applies the snapshots with the real backend
// (iptables.Backend.Sync, iptables-nft) inside a network namespace and
// traces what iptables-save reads back: the rules the kernel really holds,
// jump rules included. One namespace and one Backend serve every Load, so
// successive scenarios also exercise syncs over a previous state.
type iptablesKernelMode struct {
	ns      string
	backend *iptables.Backend
}

func newIPTablesKernelMode(t *testing.T) *iptablesKernelMode {
	t.Helper()
	ns := newNetns(t, "swy-conf-ipt")
	b, err := iptables.New(iptables.Config{Mode: iptables.ModeNFT, Executor: iptables.NetnsExecutor(ns), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return &iptablesKernelMode{ns: ns, backend: b}
}

func (m *iptablesKernelMode) Name() string { return "iptables-kernel" }

func (m *iptablesKernelMode) Load(snaps []*proxier.Snapshot) (Tracer, error) {
	if _, err := m.backend.Sync(context.Background(), snaps); err != nil {
		return nil, fmt.Errorf("sync into namespace %s: %w", m.ns, err)
	}
	save, err := m.save()
	if err != nil {
		return nil, err
	}
	rs, err := iptrace.Parse(save)
	if err != nil {
		return nil, fmt.Errorf("load iptables-save output into the tracer: %w", err)
	}
	return &iptablesTracer{rs: rs, text: save}, nil
}

func (m *iptablesKernelMode) save() (string, error) {
	var out strings.Builder
	for _, table := range []string{"filter", "nat"} {
		b, err := exec.Command("ip", "netns", "exec", m.ns, "iptables-nft-save", "-t", table).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("iptables-nft-save -t %s in %s: %w: %s", table, m.ns, err, b)
		}
		out.Write(b)
	}
	return out.String(), nil
}

type iptablesTracer struct {
	rs   *iptrace.Ruleset
	text string
}

func (t *iptablesTracer) Trace(p scenarios.Packet, src netip.Addr) (*Trace, error) {
	ip := iptrace.Packet{
		Src: src, Dst: p.Dst.Addr(), Proto: p.Proto.Lower(), SrcPort: 40000, DstPort: p.Dst.Port(),
	}
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
	res, err := t.rs.Trace(iptablesNode, ip)
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
		if o.AffinityHit {
			c.Detail += " (affinity hit)"
		}
		out.Outcomes = append(out.Outcomes, c)
	}
	return out, nil
}

// Rules returns the traced rule text, for failure messages.
func (t *iptablesTracer) Rules() string { return t.text }

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestIPTablesKernelMatchesRender checks that the jump rules the tracer adds
// to the rendered rules (iptablesJumps) are exactly the rules the real
// backend leaves in the built-in chains of a fresh namespace.
func TestIPTablesKernelMatchesRender(t *testing.T) {
	requireRoot(t)
	m := newIPTablesKernelMode(t)
	snaps, err := Plan(scenarios.All()[0])
	if err != nil {
		t.Fatal(err)
	}
	tr, err := m.Load(snaps)
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
		return out
	}
	// Order matters within a chain, not between tables: a stable sort on
	// the table name keeps each chain's order.
	got := builtin(tr.(*iptablesTracer).Rules())
	want := builtin(iptablesJumps)
	for _, l := range [][]string{got, want} {
		sort.SliceStable(l, func(i, j int) bool { return strings.Fields(l[i])[0] < strings.Fields(l[j])[0] })
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("built-in chain rules after Sync:\n  %s\nthe tracer assumes:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}
