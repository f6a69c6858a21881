package iptrace

import (
	"net/netip"
	"strings"
)

type tri int

const (
	no tri = iota
	yes
	maybe // either answer is possible (chance or history)
)

func boolTri(b, neg bool) tri {
	if b != neg {
		return yes
	}
	return no
}

// matcher is one condition of a rule. eval may record facts on st (it is
// the state before the rule); the returned effect, if any, applies to the
// branch where the whole rule matched.
type matcher interface {
	eval(tr *tracer, st *state) (tri, func(*state), error)
}

type addrMatch struct {
	neg, src bool
	prefixes []netip.Prefix
}

func (m addrMatch) eval(_ *tracer, st *state) (tri, func(*state), error) {
	a := st.dst
	if m.src {
		a = st.src
	}
	in := false
	for _, p := range m.prefixes {
		if p.Contains(a) {
			in = true
		}
	}
	return boolTri(in, m.neg), nil, nil
}

type protoMatch struct {
	neg   bool
	proto string
}

func (m protoMatch) eval(_ *tracer, st *state) (tri, func(*state), error) {
	return boolTri(m.proto == "all" || m.proto == st.proto, m.neg), nil, nil
}

type ifaceMatch struct {
	neg, in bool
	name    string
}

func (m ifaceMatch) eval(_ *tracer, st *state) (tri, func(*state), error) {
	dev := st.out
	if m.in {
		dev = st.in
	}
	var ok bool
	if strings.HasSuffix(m.name, "+") {
		ok = dev != "" && strings.HasPrefix(dev, strings.TrimSuffix(m.name, "+"))
	} else {
		ok = dev == m.name
	}
	return boolTri(ok, m.neg), nil, nil
}

type portRange struct{ lo, hi uint16 }

type portMatch struct {
	neg, dst, either bool
	ranges           []portRange
}

func (m portMatch) eval(_ *tracer, st *state) (tri, func(*state), error) {
	in := func(p uint16) bool {
		for _, r := range m.ranges {
			if p >= r.lo && p <= r.hi {
				return true
			}
		}
		return false
	}
	var ok bool
	switch {
	case m.either:
		ok = in(st.sport) || in(st.dport)
	case m.dst:
		ok = in(st.dport)
	default:
		ok = in(st.sport)
	}
	return boolTri(ok, m.neg), nil, nil
}

// synMatch: the first packet of a new TCP connection is a SYN.
type synMatch struct{ neg bool }

func (m synMatch) eval(_ *tracer, st *state) (tri, func(*state), error) {
	return boolTri(st.proto == "tcp", m.neg), nil, nil
}

type addrtypeMatch struct {
	neg, src bool
	types    []string
}

func (m addrtypeMatch) eval(tr *tracer, st *state) (tri, func(*state), error) {
	a := st.dst
	if m.src {
		a = st.src
	}
	ok := false
	for _, ty := range m.types {
		switch ty {
		case "LOCAL":
			ok = ok || tr.node.IsLocal(a)
		case "UNICAST":
			ok = ok || (!tr.node.IsLocal(a) && !a.IsMulticast())
		case "MULTICAST":
			ok = ok || a.IsMulticast()
		}
	}
	return boolTri(ok, m.neg), nil, nil
}

type statisticMatch struct{ neg, always, never bool }

func (m statisticMatch) eval(_ *tracer, _ *state) (tri, func(*state), error) {
	switch {
	case m.always:
		return boolTri(true, m.neg), nil, nil
	case m.never:
		return boolTri(false, m.neg), nil, nil
	}
	return maybe, nil, nil
}

type recentMatch struct {
	neg    bool
	action string // set, rcheck, update, remove
	name   string
}

func (m recentMatch) eval(_ *tracer, st *state) (tri, func(*state), error) {
	if m.action == "set" {
		// --set records the source and always matches (never, negated).
		return boolTri(true, m.neg), func(s *state) { s.recentSet = append(s.recentSet, m.name) }, nil
	}
	st.affChecked = true
	if m.neg {
		return maybe, nil, nil
	}
	return maybe, func(s *state) { s.affHit = true }, nil
}

type markMatch struct {
	neg       bool
	val, mask uint32
}

func (m markMatch) eval(_ *tracer, st *state) (tri, func(*state), error) {
	return boolTri(st.mark&m.mask == m.val, m.neg), nil, nil
}

type ctstateMatch struct {
	neg    bool
	states []string
}

func (m ctstateMatch) eval(_ *tracer, st *state) (tri, func(*state), error) {
	ok := false
	for _, s := range m.states {
		switch s {
		case "NEW":
			ok = true
		case "DNAT":
			ok = ok || st.dnat.IsValid()
		case "SNAT":
			ok = ok || st.masq
		}
	}
	return boolTri(ok, m.neg), nil, nil
}
