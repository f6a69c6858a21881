package iptrace

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Origin says where a packet enters the node's network stack.
type Origin int

const (
	// FromPod is a packet sent by a pod on this node: it arrives on the
	// pod's interface and goes through PREROUTING.
	FromPod Origin = iota
	// FromNode is a packet generated locally (by a process in the node's
	// network namespace): it goes through OUTPUT.
	FromNode
	// FromOutside is a packet arriving on an external interface.
	FromOutside
)

// String names the origin.
func (o Origin) String() string {
	switch o {
	case FromPod:
		return "FromPod"
	case FromNode:
		return "FromNode"
	case FromOutside:
		return "FromOutside"
	}
	return fmt.Sprintf("Origin(%d)", int(o))
}

// Packet is the first packet of a new connection.
type Packet struct {
	Src, Dst         netip.Addr
	Proto            string // "tcp", "udp" or "sctp"
	SrcPort, DstPort uint16
	Origin           Origin
	// InIface is the interface the packet arrives on (FromPod, FromOutside).
	InIface string
	// Mark is the packet's initial fwmark (normally 0).
	Mark uint32
}

// String formats the packet for messages.
func (p Packet) String() string {
	return fmt.Sprintf("%s %s %s:%d -> %s:%d in=%q", p.Origin, p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort, p.InIface)
}

// Route sends traffic for Dst out of Iface.
type Route struct {
	Dst   netip.Prefix
	Iface string
}

// Node describes the node whose rules are traced.
type Node struct {
	// LocalAddrs are the node's own addresses (addrtype LOCAL, local
	// delivery). Loopback addresses are always local.
	LocalAddrs []netip.Addr
	// Routes choose the output interface (for -o) by longest prefix; a
	// local destination goes out "lo".
	Routes []Route
	// IPVS, when set, is the node's IPVS table: Trace then runs the IPVS
	// hooks too (see IPVS).
	IPVS *IPVS
}

// IsLocal reports whether a is one of the node's addresses.
func (n Node) IsLocal(a netip.Addr) bool {
	a = a.Unmap()
	if a.IsLoopback() {
		return true
	}
	for _, l := range n.LocalAddrs {
		if l.Unmap() == a {
			return true
		}
	}
	return false
}

// OutIface returns the interface a packet to a leaves by, or "" if no route.
func (n Node) OutIface(a netip.Addr) string {
	if n.IsLocal(a) {
		return "lo"
	}
	best, bits := "", -1
	for _, r := range n.Routes {
		if r.Dst.Contains(a) && r.Dst.Bits() > bits {
			best, bits = r.Iface, r.Dst.Bits()
		}
	}
	return best
}

// Verdict is what finally happens to a packet.
type Verdict int

const (
	// Accept: the packet is delivered (locally or forwarded).
	Accept Verdict = iota
	// Drop: silently discarded.
	Drop
	// Reject: discarded with an error sent back (connection refused).
	Reject
)

// String names the verdict.
func (v Verdict) String() string {
	switch v {
	case Accept:
		return "Accept"
	case Drop:
		return "Drop"
	case Reject:
		return "Reject"
	}
	return fmt.Sprintf("Verdict(%d)", int(v))
}

// Outcome is one possible fate of the packet.
type Outcome struct {
	Verdict Verdict
	// DNAT is the destination the packet was rewritten to (by a DNAT rule
	// or by IPVS), or the zero value when none was.
	DNAT netip.AddrPort
	// Masqueraded is true when MASQUERADE or SNAT rewrote the source.
	Masqueraded bool
	// SNAT is the address given to SNAT --to-source (invalid for
	// MASQUERADE or no source NAT).
	SNAT netip.Addr
	// Mark is the fwmark at the end.
	Mark uint32
	// Local is true when the packet was delivered to the node itself.
	Local bool
	// AffinityChecked is true when the path evaluated a `recent` check
	// (--rcheck, --update or --remove) or crossed a persistent IPVS
	// service: session affinity exists on it.
	AffinityChecked bool
	// AffinityHit is true when this outcome assumes such a check matched
	// an existing entry (the client is stuck to an endpoint).
	AffinityHit bool
	// RecentSet lists the `recent --set` names recorded on the path.
	RecentSet []string
	// Path lists every chain entered, as "table/CHAIN", in order.
	Path []string
	// Rules lists the rules whose target was taken, in order.
	Rules []string
}

// String summarises the outcome.
func (o Outcome) String() string {
	var b strings.Builder
	b.WriteString(o.Verdict.String())
	if o.DNAT.IsValid() {
		fmt.Fprintf(&b, " dnat=%s", o.DNAT)
	}
	if o.Masqueraded {
		b.WriteString(" masqueraded")
	}
	if o.Local {
		b.WriteString(" local")
	}
	if o.AffinityHit {
		b.WriteString(" affinity-hit")
	}
	fmt.Fprintf(&b, " path=%s", strings.Join(o.Path, ","))
	return b.String()
}

// Result is the set of possible outcomes of one packet.
type Result struct {
	Outcomes []Outcome
	// AffinityRules is true when any path evaluated a session-affinity
	// (`recent` check) rule.
	AffinityRules bool
}

// Verdicts returns the distinct verdicts of the outcomes.
func (r *Result) Verdicts() []Verdict {
	seen := map[Verdict]bool{}
	var out []Verdict
	for _, o := range r.Outcomes {
		if !seen[o.Verdict] {
			seen[o.Verdict] = true
			out = append(out, o.Verdict)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Only reports whether every outcome has verdict v.
func (r *Result) Only(v Verdict) bool {
	vs := r.Verdicts()
	return len(vs) == 1 && vs[0] == v
}

// Destinations returns the sorted distinct DNAT destinations of the
// accepted outcomes (outcomes without DNAT are left out).
func (r *Result) Destinations() []netip.AddrPort {
	seen := map[netip.AddrPort]bool{}
	var out []netip.AddrPort
	for _, o := range r.Outcomes {
		if o.Verdict == Accept && o.DNAT.IsValid() && !seen[o.DNAT] {
			seen[o.DNAT] = true
			out = append(out, o.DNAT)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Compare(out[j]) < 0 })
	return out
}

// String lists the outcomes, one per line.
func (r *Result) String() string {
	lines := make([]string, len(r.Outcomes))
	for i, o := range r.Outcomes {
		lines[i] = o.String()
	}
	return strings.Join(lines, "\n")
}

// state is the packet as it travels one branch.
type state struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        string
	in, out      string
	hook         string
	mark         uint32
	dnat         netip.AddrPort
	masq         bool
	snat         netip.Addr
	local        bool
	affChecked   bool
	affHit       bool
	vsSeen       bool // IPVS handled it (skb->ipvs_property)
	recentSet    []string
	path         []string
	rules        []string
}

func (s *state) clone() *state {
	c := *s
	c.recentSet = append([]string(nil), s.recentSet...)
	c.path = append([]string(nil), s.path...)
	c.rules = append([]string(nil), s.rules...)
	return &c
}

type exitKind int

const (
	exitReturn exitKind = iota // fell off the end of a chain or RETURN
	exitVerdict
)

type exit struct {
	st      *state
	kind    exitKind
	verdict Verdict
}

const (
	maxDepth    = 64
	maxOutcomes = 1 << 16
)

type tracer struct {
	rs    *Ruleset
	node  Node
	count int
}

// run collects the final states of one Trace.
type run struct {
	tr       *tracer
	finals   []*state
	verdicts []Verdict
	err      error
}

func (r *run) done(s *state, v Verdict) {
	r.finals = append(r.finals, s)
	r.verdicts = append(r.verdicts, v)
}

func (r *run) doneAll(sts []*state, v Verdict) {
	for _, s := range sts {
		r.done(s, v)
	}
}

// stage runs the hook of table tbl over every live state, recording drops
// and rejects, and returns the accepted ones.
func (r *run) stage(live []*state, tbl, hook string, setup func(*state)) []*state {
	if r.err != nil {
		return nil
	}
	var next []*state
	for _, s := range live {
		setup(s)
		s.hook = hook
		exits, err := r.tr.hook(tbl, hook, s)
		if err != nil {
			r.err = err
			return nil
		}
		for _, e := range exits {
			if e.verdict == Accept {
				next = append(next, e.st)
			} else {
				r.done(e.st, e.verdict)
			}
		}
	}
	return next
}

func keep(*state) {}

// split separates states by whether their destination is local.
func (r *run) split(live []*state) (local, remote []*state) {
	for _, s := range live {
		if r.tr.node.IsLocal(s.dst) {
			local = append(local, s)
		} else {
			remote = append(remote, s)
		}
	}
	return local, remote
}

// Trace walks p through the rules and returns every possible outcome.
func (rs *Ruleset) Trace(node Node, p Packet) (*Result, error) {
	switch p.Proto {
	case "tcp", "udp", "sctp":
	default:
		return nil, fmt.Errorf("trace %v: protocol must be tcp, udp or sctp", p)
	}
	if !p.Src.IsValid() || !p.Dst.IsValid() {
		return nil, fmt.Errorf("trace %v: source and destination are required", p)
	}
	tr := &tracer{rs: rs, node: node}
	st := &state{src: p.Src, dst: p.Dst, sport: p.SrcPort, dport: p.DstPort, proto: p.Proto, mark: p.Mark}
	r := &run{tr: tr}
	route := func(s *state) { s.out = node.OutIface(s.dst) }
	// postIPVS is the way of a packet IPVS sent to a remote real server:
	// LOCAL_OUT again (nat OUTPUT is not consulted: the connection's NAT
	// is set up), then POSTROUTING.
	postIPVS := func(sent []*state) {
		sent = r.stage(sent, "mangle", "OUTPUT", func(s *state) { s.in = ""; route(s) })
		sent = r.stage(sent, "filter", "OUTPUT", route)
		sent = r.stage(sent, "mangle", "POSTROUTING", keep)
		sent = r.stage(sent, "nat", "POSTROUTING", keep)
		r.doneAll(sent, Accept)
	}
	if p.Origin == FromNode {
		live := []*state{st}
		live = r.stage(live, "mangle", "OUTPUT", func(s *state) { s.in = ""; route(s) })
		live = r.stage(live, "nat", "OUTPUT", route)
		if node.IPVS != nil && r.err == nil {
			var sent []*state
			live, sent = r.ipvs(live, "LOCAL_OUT")
			postIPVS(sent)
		}
		live = r.stage(live, "filter", "OUTPUT", route)
		live = r.stage(live, "mangle", "POSTROUTING", keep)
		live = r.stage(live, "nat", "POSTROUTING", keep)
		local, remote := r.split(live)
		r.doneAll(remote, Accept)
		// Looped back through lo: mangle PREROUTING and INPUT, filter
		// INPUT (nat is set up already, its chains are not consulted).
		local = r.stage(local, "mangle", "PREROUTING", func(s *state) { s.in, s.out, s.local = "lo", "", true })
		local = r.stage(local, "mangle", "INPUT", keep)
		local = r.stage(local, "filter", "INPUT", keep)
		r.doneAll(local, Accept)
	} else {
		live := []*state{st}
		live = r.stage(live, "mangle", "PREROUTING", func(s *state) { s.in, s.out = p.InIface, "" })
		live = r.stage(live, "nat", "PREROUTING", keep)
		local, remote := r.split(live)
		local = r.stage(local, "mangle", "INPUT", func(s *state) { s.local = true })
		local = r.stage(local, "filter", "INPUT", keep)
		if node.IPVS != nil && r.err == nil {
			var sent []*state
			local, sent = r.ipvs(local, "LOCAL_IN")
			for _, s := range sent {
				s.local = false
			}
			postIPVS(sent)
		}
		local = r.stage(local, "nat", "INPUT", keep)
		remote = r.stage(remote, "mangle", "FORWARD", route)
		remote = r.stage(remote, "filter", "FORWARD", keep)
		remote = r.stage(remote, "mangle", "POSTROUTING", keep)
		remote = r.stage(remote, "nat", "POSTROUTING", keep)
		r.doneAll(local, Accept)
		r.doneAll(remote, Accept)
	}
	if r.err != nil {
		return nil, fmt.Errorf("trace %v: %w", p, r.err)
	}
	res := &Result{}
	for i, s := range r.finals {
		o := Outcome{
			Verdict: r.verdicts[i], DNAT: s.dnat, Masqueraded: s.masq, SNAT: s.snat, Mark: s.mark,
			Local: s.local && r.verdicts[i] == Accept, AffinityChecked: s.affChecked, AffinityHit: s.affHit,
			RecentSet: s.recentSet, Path: s.path, Rules: s.rules,
		}
		res.Outcomes = append(res.Outcomes, o)
		res.AffinityRules = res.AffinityRules || s.affChecked
	}
	return res, nil
}

// hook runs one built-in chain and resolves fall-through with its policy.
func (tr *tracer) hook(tbl, chainName string, st *state) ([]exit, error) {
	t := tr.rs.tables[tbl]
	c := t.chains[chainName]
	if tbl == "mangle" && len(c.rules) == 0 && c.policy == "ACCEPT" {
		// An empty mangle chain changes nothing; leaving it out of Path
		// keeps the paths of rule sets without mangle rules short.
		return []exit{{st: st, kind: exitVerdict, verdict: Accept}}, nil
	}
	st.path = append(st.path, tbl+"/"+chainName)
	exits, err := tr.walk(t, c, 0, st, 0)
	if err != nil {
		return nil, err
	}
	for i, e := range exits {
		if e.kind == exitReturn {
			v := Accept
			if c.policy == "DROP" {
				v = Drop
			}
			exits[i] = exit{st: e.st, kind: exitVerdict, verdict: v}
		}
	}
	return exits, nil
}

// walk runs chain c from rule idx on, returning every way of leaving it.
func (tr *tracer) walk(t *table, c *chain, idx int, st *state, depth int) ([]exit, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("chain %s/%s: jumps nested deeper than %d (loop?)", t.name, c.name, maxDepth)
	}
	for i := idx; i < len(c.rules); i++ {
		r := c.rules[i]
		matched, unmatched, err := tr.evalRule(r, st)
		if err != nil {
			return nil, err
		}
		if matched == nil {
			st = unmatched
			continue
		}
		var out []exit
		if unmatched != nil {
			rest, err := tr.walk(t, c, i+1, unmatched, depth)
			if err != nil {
				return nil, err
			}
			out = append(out, rest...)
		}
		res, err := tr.apply(t, c, i, r, matched, depth)
		if err != nil {
			return nil, err
		}
		out = append(out, res...)
		tr.count += len(out)
		if tr.count > maxOutcomes {
			return nil, fmt.Errorf("more than %d branches: rules too large to trace", maxOutcomes)
		}
		return out, nil
	}
	return []exit{{st: st, kind: exitReturn}}, nil
}

// apply takes rule r's target (r matched st).
func (tr *tracer) apply(t *table, c *chain, i int, r *Rule, st *state, depth int) ([]exit, error) {
	tg := r.target
	if tg.kind != tNone {
		st.rules = append(st.rules, r.String())
	}
	verdict := func(v Verdict) ([]exit, error) { return []exit{{st: st, kind: exitVerdict, verdict: v}}, nil }
	switch tg.kind {
	case tNone:
		return tr.walk(t, c, i+1, st, depth)
	case tAccept:
		return verdict(Accept)
	case tDrop:
		return verdict(Drop)
	case tReject:
		if st.hook != "INPUT" && st.hook != "FORWARD" && st.hook != "OUTPUT" {
			return nil, fmt.Errorf("rule %q: REJECT reached from hook %s", r.String(), st.hook)
		}
		return verdict(Reject)
	case tReturn:
		return []exit{{st: st, kind: exitReturn}}, nil
	case tMark:
		st.mark = tg.mark(st.mark)
		return tr.walk(t, c, i+1, st, depth)
	case tDNAT:
		if st.hook != "PREROUTING" && st.hook != "OUTPUT" {
			return nil, fmt.Errorf("rule %q: DNAT reached from hook %s", r.String(), st.hook)
		}
		port := st.dport
		if tg.dnatPt != 0 {
			port = tg.dnatPt
		}
		st.dst, st.dport = tg.dnatIP, port
		st.dnat = netip.AddrPortFrom(tg.dnatIP, port)
		return verdict(Accept)
	case tSNAT, tMasquerade:
		if st.hook != "POSTROUTING" && st.hook != "INPUT" {
			return nil, fmt.Errorf("rule %q: source NAT reached from hook %s", r.String(), st.hook)
		}
		st.masq = true
		st.snat = tg.snatIP
		return verdict(Accept)
	case tJump, tGoto:
		sub := t.chains[tg.chain]
		st.path = append(st.path, t.name+"/"+sub.name)
		exits, err := tr.walk(t, sub, 0, st, depth+1)
		if err != nil {
			return nil, err
		}
		var out []exit
		for _, e := range exits {
			if e.kind == exitVerdict || tg.kind == tGoto {
				// A goto's RETURN returns from the current chain too.
				out = append(out, e)
				continue
			}
			rest, err := tr.walk(t, c, i+1, e.st, depth)
			if err != nil {
				return nil, err
			}
			out = append(out, rest...)
		}
		return out, nil
	}
	return nil, fmt.Errorf("rule %q: unhandled target", r.String())
}

// evalRule returns the state on the branch where r matches (nil if it
// cannot) and on the branch where it does not (nil if it cannot).
func (tr *tracer) evalRule(r *Rule, st *state) (matched, unmatched *state, err error) {
	var effects []func(*state)
	branching := false
	for _, m := range r.matches {
		res, effect, err := m.eval(tr, st)
		if err != nil {
			return nil, nil, fmt.Errorf("rule %q: %w", r.String(), err)
		}
		switch res {
		case no:
			return nil, st, nil
		case maybe:
			branching = true
		}
		if effect != nil {
			effects = append(effects, effect)
		}
	}
	if branching {
		unmatched = st.clone()
		matched = st.clone()
	} else {
		matched = st
	}
	for _, f := range effects {
		f(matched)
	}
	return matched, unmatched, nil
}
