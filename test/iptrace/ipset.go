package iptrace

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// IPSet is one ipset the `-m set --match-set` match consults. Supported
// types: hash:ip, hash:net, hash:ip,port, hash:ip,port,ip,
// hash:ip,port,net and bitmap:port.
type IPSet struct {
	// Name and Type as `ipset save` prints them.
	Name, Type string
	// IPv6 is true for "family inet6" sets (bitmap:port has no family).
	IPv6 bool

	members []setMember
}

// setElem is one dimension of a member: an address prefix, or a protocol
// and port.
type setElem struct {
	prefix netip.Prefix // ip and net dimensions (host prefix for ip)
	proto  string       // port dimension of hash types ("tcp", "udp", "sctp")
	port   uint16       // port dimension
}

type setMember []setElem

// dimKinds returns the kinds of the dimensions of a set type ('i' ip,
// 'n' net, 'p' port), or an error for unsupported types.
func dimKinds(typ string) (string, error) {
	switch typ {
	case "hash:ip":
		return "i", nil
	case "hash:net":
		return "n", nil
	case "hash:ip,port":
		return "ip", nil
	case "hash:ip,port,ip":
		return "ipi", nil
	case "hash:ip,port,net":
		return "ipn", nil
	case "bitmap:port":
		return "p", nil
	}
	return "", fmt.Errorf("ipset type %q is not modelled", typ)
}

// Dimension returns how many src/dst directions a match on the set needs.
func (s *IPSet) Dimension() int {
	k, _ := dimKinds(s.Type)
	return len(k)
}

// Add parses one member in `ipset save` syntax ("10.0.0.1,tcp:80",
// "30080", "10.0.0.1,udp:53,10.244.0.0/16", ...) and adds it.
func (s *IPSet) Add(member string) error {
	kinds, err := dimKinds(s.Type)
	if err != nil {
		return err
	}
	parts := strings.Split(member, ",")
	if len(parts) != len(kinds) {
		return fmt.Errorf("set %s (%s): member %q has %d parts, want %d", s.Name, s.Type, member, len(parts), len(kinds))
	}
	m := make(setMember, len(kinds))
	for i, k := range kinds {
		p := parts[i]
		switch k {
		case 'i', 'n':
			pr, err := parsePrefix(p)
			if err != nil {
				return fmt.Errorf("set %s: member %q: %w", s.Name, member, err)
			}
			if k == 'i' && !pr.IsSingleIP() {
				return fmt.Errorf("set %s: member %q: %s is not a single address (ranges are not modelled)", s.Name, member, p)
			}
			if pr.Addr().Is6() != s.IPv6 {
				return fmt.Errorf("set %s: member %q has the wrong address family", s.Name, member)
			}
			m[i].prefix = pr
		case 'p':
			proto, port := "", p
			if s.Type != "bitmap:port" {
				proto = "tcp" // ipset's default protocol
				if pr, pt, ok := strings.Cut(p, ":"); ok {
					proto, port = pr, pt
				}
				if _, err := normProto(proto); err != nil || proto == "icmp" || proto == "all" {
					return fmt.Errorf("set %s: member %q: protocol %q is not modelled", s.Name, member, proto)
				}
				proto, _ = normProto(proto)
			}
			n, err := strconv.ParseUint(port, 10, 16)
			if err != nil {
				return fmt.Errorf("set %s: member %q: bad port %q (ranges are not modelled)", s.Name, member, port)
			}
			m[i].proto, m[i].port = proto, uint16(n)
		}
	}
	s.members = append(s.members, m)
	return nil
}

// Len returns the number of members.
func (s *IPSet) Len() int { return len(s.members) }

// contains reports whether the packet state matches a member, each
// dimension read from the source (true) or destination of st.
func (s *IPSet) contains(st *state, src []bool) bool {
	kinds, _ := dimKinds(s.Type)
	for _, m := range s.members {
		ok := true
		for i, k := range kinds {
			switch k {
			case 'i', 'n':
				a := st.dst
				if src[i] {
					a = st.src
				}
				ok = ok && m[i].prefix.Contains(a)
			case 'p':
				port := st.dport
				if src[i] {
					port = st.sport
				}
				ok = ok && port == m[i].port && (m[i].proto == "" || m[i].proto == st.proto)
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// LoadIPSets reads `ipset save` (or `ipset restore`) text: "create NAME
// TYPE options..." and "add NAME MEMBER" lines. A create replaces a set of
// the same name. Unsupported types and malformed members are errors.
func (rs *Ruleset) LoadIPSets(text string) error {
	sets := map[string]*IPSet{}
	for n, s := range rs.sets {
		sets[n] = s
	}
	for i, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		fail := func(err error) error { return fmt.Errorf("ipset line %d %q: %w", i+1, line, err) }
		switch f[0] {
		case "create", "-N":
			if len(f) < 3 {
				return fail(fmt.Errorf("create needs a name and a type"))
			}
			if _, err := dimKinds(f[2]); err != nil {
				return fail(err)
			}
			s := &IPSet{Name: f[1], Type: f[2]}
			for k := 3; k+1 < len(f); k++ {
				if f[k] == "family" {
					switch f[k+1] {
					case "inet6":
						s.IPv6 = true
					case "inet":
					default:
						return fail(fmt.Errorf("unknown family %q", f[k+1]))
					}
				}
			}
			sets[s.Name] = s
		case "add", "-A":
			if len(f) < 3 {
				return fail(fmt.Errorf("add needs a name and a member"))
			}
			s, ok := sets[f[1]]
			if !ok {
				return fail(fmt.Errorf("set %s does not exist", f[1]))
			}
			if err := s.Add(f[2]); err != nil {
				return fail(err)
			}
		default:
			return fail(fmt.Errorf("unsupported ipset command %q", f[0]))
		}
	}
	rs.sets = sets
	return nil
}

// IPSet returns the loaded set named name, or nil.
func (rs *Ruleset) IPSet(name string) *IPSet { return rs.sets[name] }

// setMatch is `-m set [!] --match-set NAME dir,dir...`.
type setMatch struct {
	neg  bool
	name string
	src  []bool // per direction flag: true = src
}

func parseSetMatch(o opt) (setMatch, error) {
	m := setMatch{neg: o.neg, name: o.args[0]}
	dirs := strings.Split(o.args[1], ",")
	if len(dirs) > 6 {
		return m, fmt.Errorf("--match-set %s: at most 6 directions, got %q", m.name, o.args[1])
	}
	for _, d := range dirs {
		switch d {
		case "src":
			m.src = append(m.src, true)
		case "dst":
			m.src = append(m.src, false)
		default:
			return m, fmt.Errorf("--match-set %s: bad direction %q in %q", m.name, d, o.args[1])
		}
	}
	return m, nil
}

func (m setMatch) eval(tr *tracer, st *state) (tri, func(*state), error) {
	s := tr.rs.sets[m.name]
	if s == nil {
		return no, nil, fmt.Errorf("ipset %s is not loaded", m.name)
	}
	// The kernel never matches when fewer directions than the set's
	// dimensions are given; that is always a rule bug, so it is an error.
	if len(m.src) < s.Dimension() {
		return no, nil, fmt.Errorf("--match-set %s: %d direction(s) for a %s set of dimension %d (never matches)", m.name, len(m.src), s.Type, s.Dimension())
	}
	if s.Type != "bitmap:port" && s.IPv6 != st.dst.Is6() {
		return boolTri(false, m.neg), nil, nil
	}
	return boolTri(s.contains(st, m.src), m.neg), nil, nil
}
