package iptrace

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

type optSpec struct {
	arity     int
	negatable bool
}

var portOpts = map[string]optSpec{
	"--dport": {1, true}, "--destination-port": {1, true},
	"--sport": {1, true}, "--source-port": {1, true},
}

// matchModules lists the supported -m modules and their options.
var matchModules = map[string]map[string]optSpec{
	"tcp":     merge(portOpts, map[string]optSpec{"--syn": {0, true}}),
	"udp":     portOpts,
	"sctp":    portOpts,
	"comment": {"--comment": {1, false}},
	"addrtype": {
		"--src-type": {1, true}, "--dst-type": {1, true},
	},
	"statistic": {
		"--mode": {1, false}, "--probability": {1, true}, "--every": {1, true}, "--packet": {1, false},
	},
	"recent": {
		"--set": {0, true}, "--rcheck": {0, true}, "--update": {0, true}, "--remove": {0, true},
		"--name": {1, false}, "--seconds": {1, false}, "--reap": {0, false}, "--hitcount": {1, false},
		"--rttl": {0, false}, "--mask": {1, false}, "--rsource": {0, false}, "--rdest": {0, false},
	},
	"mark":      {"--mark": {1, true}},
	"conntrack": {"--ctstate": {1, true}},
	"state":     {"--state": {1, true}},
	"set":       {"--match-set": {2, true}},
	"multiport": {
		"--dports": {1, true}, "--destination-ports": {1, true},
		"--sports": {1, true}, "--source-ports": {1, true}, "--ports": {1, true},
	},
}

// targetOpts lists the supported targets and their options.
var targetOpts = map[string]map[string]optSpec{
	"ACCEPT": {}, "DROP": {}, "RETURN": {},
	"REJECT": {"--reject-with": {1, false}},
	"MARK": {
		"--set-xmark": {1, false}, "--set-mark": {1, false}, "--or-mark": {1, false},
		"--and-mark": {1, false}, "--xor-mark": {1, false},
	},
	"DNAT":       {"--to-destination": {1, false}, "--random": {0, false}, "--persistent": {0, false}},
	"SNAT":       {"--to-source": {1, false}, "--random": {0, false}, "--random-fully": {0, false}, "--persistent": {0, false}},
	"MASQUERADE": {"--to-ports": {1, false}, "--random": {0, false}, "--random-fully": {0, false}},
}

var targetNames = func() map[string]bool {
	m := map[string]bool{}
	for n := range targetOpts {
		m[n] = true
	}
	return m
}()

func merge(a, b map[string]optSpec) map[string]optSpec {
	out := map[string]optSpec{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

type opt struct {
	neg  bool
	name string
	args []string
}

type module struct {
	name string
	opts []opt
}

type targetKind int

const (
	tNone targetKind = iota
	tAccept
	tDrop
	tReject
	tReturn
	tMark
	tDNAT
	tSNAT
	tMasquerade
	tJump
	tGoto
)

type target struct {
	kind   targetKind
	chain  string // for tJump and tGoto
	mark   func(uint32) uint32
	dnatIP netip.Addr
	dnatPt uint16 // 0 keeps the destination port
	snatIP netip.Addr
}

// parseRule parses the part of a rule after "-A CHAIN".
func (t *table) parseRule(chainName string, toks []token) (*Rule, error) {
	r := &Rule{Table: t.name, Chain: chainName, Spec: joinTokens(toks)}
	fail := func(format string, a ...any) error {
		return fmt.Errorf("rule %q: %s", r.String(), fmt.Sprintf(format, a...))
	}
	type item struct {
		m   matcher
		mod *module
	}
	var items []item
	var mod *module // current -m module
	var proto string
	protoSet := false
	tgtName := ""
	isGoto := false
	var tgtOptList []opt

	for i := 0; i < len(toks); i++ {
		neg := false
		if toks[i].s == "!" && !toks[i].quoted {
			neg = true
			i++
			if i >= len(toks) {
				return nil, fail("'!' at end of rule")
			}
		}
		tk := toks[i]
		if tk.quoted || !strings.HasPrefix(tk.s, "-") {
			return nil, fail("unexpected word %q", tk.s)
		}
		name := tk.s
		takeArg := func() (string, error) {
			if i+1 >= len(toks) {
				return "", fail("option %s needs a value", name)
			}
			i++
			return toks[i].s, nil
		}
		switch name {
		case "-s", "--source", "--src", "-d", "--destination", "--dst":
			v, err := takeArg()
			if err != nil {
				return nil, err
			}
			m, err := parseAddrMatch(neg, name == "-s" || name == "--source" || name == "--src", v)
			if err != nil {
				return nil, fail("%v", err)
			}
			items = append(items, item{m: m})
			mod = nil
			continue
		case "-p", "--protocol":
			v, err := takeArg()
			if err != nil {
				return nil, err
			}
			p, err := normProto(v)
			if err != nil {
				return nil, fail("%v", err)
			}
			proto, protoSet = p, true
			items = append(items, item{m: protoMatch{neg: neg, proto: p}})
			if neg {
				proto = ""
			}
			mod = nil
			continue
		case "-i", "--in-interface", "-o", "--out-interface":
			v, err := takeArg()
			if err != nil {
				return nil, err
			}
			items = append(items, item{m: ifaceMatch{neg: neg, in: name == "-i" || name == "--in-interface", name: v}})
			mod = nil
			continue
		case "-m", "--match":
			if neg {
				return nil, fail("'!' before -m")
			}
			v, err := takeArg()
			if err != nil {
				return nil, err
			}
			if _, ok := matchModules[v]; !ok {
				return nil, fail("unsupported match module %q", v)
			}
			mod = &module{name: v}
			items = append(items, item{mod: mod})
			continue
		case "-j", "--jump", "-g", "--goto":
			if neg {
				return nil, fail("'!' before %s", name)
			}
			if tgtName != "" {
				return nil, fail("more than one target")
			}
			v, err := takeArg()
			if err != nil {
				return nil, err
			}
			tgtName, isGoto = v, name == "-g" || name == "--goto"
			mod = nil
			continue
		}
		// A module or target option.
		var spec optSpec
		var ok bool
		switch {
		case tgtName != "":
			spec, ok = targetOpts[tgtName][name]
			if !ok {
				return nil, fail("unsupported option %s for target %s", name, tgtName)
			}
		case mod != nil:
			spec, ok = matchModules[mod.name][name]
			if !ok {
				return nil, fail("unsupported option %s for match %s", name, mod.name)
			}
		default:
			// iptables loads the protocol's module implicitly for --dport etc.
			if protoSet && (proto == "tcp" || proto == "udp" || proto == "sctp") {
				spec, ok = matchModules[proto][name]
			}
			if !ok {
				return nil, fail("unsupported option %s", name)
			}
			mod = &module{name: proto}
			items = append(items, item{mod: mod})
		}
		if neg && !spec.negatable {
			return nil, fail("option %s cannot be negated", name)
		}
		o := opt{neg: neg, name: name}
		for k := 0; k < spec.arity; k++ {
			v, err := takeArg()
			if err != nil {
				return nil, err
			}
			o.args = append(o.args, v)
		}
		if tgtName != "" {
			tgtOptList = append(tgtOptList, o)
		} else {
			mod.opts = append(mod.opts, o)
		}
	}

	for _, it := range items {
		if it.m != nil {
			r.matches = append(r.matches, it.m)
			continue
		}
		ms, err := buildModule(it.mod, proto)
		if err != nil {
			return nil, fail("%v", err)
		}
		r.matches = append(r.matches, ms...)
	}
	tg, err := t.buildTarget(tgtName, isGoto, tgtOptList)
	if err != nil {
		return nil, fail("%v", err)
	}
	r.target = tg
	return r, nil
}

func normProto(v string) (string, error) {
	switch strings.ToLower(v) {
	case "tcp", "6":
		return "tcp", nil
	case "udp", "17":
		return "udp", nil
	case "sctp", "132":
		return "sctp", nil
	case "icmp", "1":
		return "icmp", nil
	case "all", "0":
		return "all", nil
	}
	return "", fmt.Errorf("unsupported protocol %q", v)
}

func parseAddrMatch(neg, src bool, v string) (matcher, error) {
	var ps []netip.Prefix
	for _, f := range strings.Split(v, ",") {
		p, err := parsePrefix(f)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	if neg && len(ps) > 1 {
		return nil, fmt.Errorf("'!' not allowed with multiple addresses %q", v)
	}
	return addrMatch{neg: neg, src: src, prefixes: ps}, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("bad address %q: %w", s, err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bad address %q: %w", s, err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parsePortRange(s string) (portRange, error) {
	lo, hi, isRange := strings.Cut(s, ":")
	a, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return portRange{}, fmt.Errorf("bad port %q", s)
	}
	b := a
	if isRange {
		if b, err = strconv.ParseUint(hi, 10, 16); err != nil || b < a {
			return portRange{}, fmt.Errorf("bad port range %q", s)
		}
	}
	return portRange{uint16(a), uint16(b)}, nil
}

func parseMark(s string) (val, mask uint32, err error) {
	v, m, hasMask := strings.Cut(s, "/")
	a, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("bad mark %q", s)
	}
	mask = 0xffffffff
	if hasMask {
		b, err := strconv.ParseUint(m, 0, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("bad mark mask %q", s)
		}
		mask = uint32(b)
	}
	return uint32(a), mask, nil
}

func buildModule(m *module, proto string) ([]matcher, error) {
	var out []matcher
	switch m.name {
	case "tcp", "udp", "sctp":
		if proto != m.name {
			return nil, fmt.Errorf("match %s needs -p %s", m.name, m.name)
		}
		for _, o := range m.opts {
			if o.name == "--syn" {
				out = append(out, synMatch{neg: o.neg})
				continue
			}
			pr, err := parsePortRange(o.args[0])
			if err != nil {
				return nil, err
			}
			dst := o.name == "--dport" || o.name == "--destination-port"
			out = append(out, portMatch{neg: o.neg, dst: dst, ranges: []portRange{pr}})
		}
	case "multiport":
		if proto != "tcp" && proto != "udp" && proto != "sctp" {
			return nil, fmt.Errorf("multiport needs -p tcp, udp or sctp")
		}
		for _, o := range m.opts {
			var rs []portRange
			for _, f := range strings.Split(o.args[0], ",") {
				pr, err := parsePortRange(f)
				if err != nil {
					return nil, err
				}
				rs = append(rs, pr)
			}
			if len(rs) > 15 {
				return nil, fmt.Errorf("multiport allows at most 15 ports, got %d", len(rs))
			}
			pm := portMatch{neg: o.neg, ranges: rs}
			switch o.name {
			case "--dports", "--destination-ports":
				pm.dst = true
			case "--ports":
				pm.either = true
			}
			out = append(out, pm)
		}
	case "comment":
	case "set":
		for _, o := range m.opts {
			sm, err := parseSetMatch(o)
			if err != nil {
				return nil, err
			}
			out = append(out, sm)
		}
	case "addrtype":
		for _, o := range m.opts {
			types := strings.Split(o.args[0], ",")
			for _, ty := range types {
				if ty != "LOCAL" && ty != "UNICAST" && ty != "MULTICAST" {
					return nil, fmt.Errorf("addrtype %s is not modelled", ty)
				}
			}
			out = append(out, addrtypeMatch{neg: o.neg, src: o.name == "--src-type", types: types})
		}
	case "statistic":
		var mode string
		var neg bool
		p, every := -1.0, 0
		for _, o := range m.opts {
			switch o.name {
			case "--mode":
				mode = o.args[0]
			case "--probability":
				f, err := strconv.ParseFloat(o.args[0], 64)
				if err != nil || f < 0 || f > 1 {
					return nil, fmt.Errorf("bad probability %q", o.args[0])
				}
				p, neg = f, o.neg
			case "--every":
				n, err := strconv.Atoi(o.args[0])
				if err != nil || n < 1 {
					return nil, fmt.Errorf("bad --every %q", o.args[0])
				}
				every, neg = n, o.neg
			}
		}
		switch {
		case mode == "random" && p >= 0:
			out = append(out, statisticMatch{neg: neg, always: p >= 1, never: p <= 0})
		case mode == "nth" && every > 0:
			out = append(out, statisticMatch{neg: neg, always: every == 1})
		default:
			return nil, fmt.Errorf("statistic needs --mode random --probability P or --mode nth --every N")
		}
	case "recent":
		rm := recentMatch{name: "DEFAULT"}
		actions := 0
		for _, o := range m.opts {
			switch o.name {
			case "--set", "--rcheck", "--update", "--remove":
				rm.action, rm.neg = o.name[2:], o.neg
				actions++
			case "--name":
				rm.name = o.args[0]
			case "--seconds", "--hitcount":
				if _, err := strconv.ParseUint(o.args[0], 10, 32); err != nil {
					return nil, fmt.Errorf("bad %s %q", o.name, o.args[0])
				}
			case "--mask":
				if _, err := netip.ParseAddr(o.args[0]); err != nil {
					return nil, fmt.Errorf("bad --mask %q", o.args[0])
				}
			}
		}
		if actions != 1 {
			return nil, fmt.Errorf("recent needs exactly one of --set, --rcheck, --update, --remove")
		}
		out = append(out, rm)
	case "mark":
		for _, o := range m.opts {
			v, mask, err := parseMark(o.args[0])
			if err != nil {
				return nil, err
			}
			out = append(out, markMatch{neg: o.neg, val: v, mask: mask})
		}
	case "conntrack", "state":
		for _, o := range m.opts {
			states := strings.Split(o.args[0], ",")
			for _, s := range states {
				switch s {
				case "NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT":
				default:
					return nil, fmt.Errorf("unknown conntrack state %q", s)
				}
			}
			out = append(out, ctstateMatch{neg: o.neg, states: states})
		}
	default:
		return nil, fmt.Errorf("unsupported match module %q", m.name)
	}
	if len(m.opts) == 0 && m.name != "tcp" && m.name != "udp" && m.name != "sctp" {
		return nil, fmt.Errorf("match %s without options", m.name)
	}
	return out, nil
}

func (t *table) buildTarget(name string, isGoto bool, opts []opt) (target, error) {
	has := func(n string) (opt, bool) {
		for _, o := range opts {
			if o.name == n {
				return o, true
			}
		}
		return opt{}, false
	}
	switch name {
	case "":
		return target{kind: tNone}, nil
	case "ACCEPT":
		return target{kind: tAccept}, nil
	case "DROP":
		return target{kind: tDrop}, nil
	case "RETURN":
		return target{kind: tReturn}, nil
	case "REJECT":
		if t.name != "filter" {
			return target{}, fmt.Errorf("REJECT is only valid in the filter table")
		}
		return target{kind: tReject}, nil
	case "MARK":
		if len(opts) != 1 {
			return target{}, fmt.Errorf("MARK needs exactly one of --set-xmark, --set-mark, --or-mark, --and-mark, --xor-mark")
		}
		o := opts[0]
		v, mask, err := parseMark(o.args[0])
		if err != nil {
			return target{}, err
		}
		var f func(uint32) uint32
		switch o.name {
		case "--set-xmark":
			f = func(m uint32) uint32 { return (m &^ mask) ^ v }
		case "--set-mark":
			f = func(m uint32) uint32 { return (m &^ mask) | v }
		case "--or-mark":
			f = func(m uint32) uint32 { return m | v }
		case "--and-mark":
			f = func(m uint32) uint32 { return m & v }
		case "--xor-mark":
			f = func(m uint32) uint32 { return m ^ v }
		}
		return target{kind: tMark, mark: f}, nil
	case "DNAT":
		if t.name != "nat" {
			return target{}, fmt.Errorf("DNAT is only valid in the nat table")
		}
		o, ok := has("--to-destination")
		if !ok {
			return target{}, fmt.Errorf("DNAT needs --to-destination")
		}
		ip, port, err := parseNATAddr(o.args[0])
		if err != nil {
			return target{}, err
		}
		return target{kind: tDNAT, dnatIP: ip, dnatPt: port}, nil
	case "SNAT":
		if t.name != "nat" {
			return target{}, fmt.Errorf("SNAT is only valid in the nat table")
		}
		o, ok := has("--to-source")
		if !ok {
			return target{}, fmt.Errorf("SNAT needs --to-source")
		}
		ip, _, err := parseNATAddr(o.args[0])
		if err != nil {
			return target{}, err
		}
		return target{kind: tSNAT, snatIP: ip}, nil
	case "MASQUERADE":
		if t.name != "nat" {
			return target{}, fmt.Errorf("MASQUERADE is only valid in the nat table")
		}
		return target{kind: tMasquerade}, nil
	}
	if len(opts) > 0 {
		return target{}, fmt.Errorf("options given to chain target %s", name)
	}
	if _, ok := t.chains[name]; !ok {
		return target{}, fmt.Errorf("unknown target or chain %q in table %s", name, t.name)
	}
	if t.chains[name].builtin {
		return target{}, fmt.Errorf("cannot jump to built-in chain %s", name)
	}
	if isGoto {
		return target{kind: tGoto, chain: name}, nil
	}
	return target{kind: tJump, chain: name}, nil
}

// parseNATAddr parses "ip", "ip:port" or "[ip6]:port" (no ranges).
func parseNATAddr(s string) (netip.Addr, uint16, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr(), ap.Port(), nil
	}
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return a, 0, nil
	}
	return netip.Addr{}, 0, fmt.Errorf("unsupported NAT address %q (want ip or ip:port, no ranges)", s)
}
