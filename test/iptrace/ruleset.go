// Package iptrace is a packet tracer over iptables rules, for tests. It
// parses iptables-save / iptables-restore text (tables mangle, nat and
// filter) and `ipset save` text into a Ruleset and walks a packet through the netfilter hooks the way the
// kernel would for the first packet of a connection (conntrack state NEW),
// returning every outcome the rules allow. Matches that depend on chance or
// on history (statistic, recent) are followed down both branches, so the
// result is the set of possible outcomes, e.g. one per endpoint of a
// service.
//
// Hook order modelled (tables in the kernel's priority order per hook):
//
//	FromOutside, FromPod: mangle, nat PREROUTING → routing decision on the
//	  (possibly DNATed) destination
//	  → local: mangle INPUT, filter INPUT, [IPVS LOCAL_IN], nat INPUT
//	  → else:  mangle FORWARD, filter FORWARD, mangle POSTROUTING,
//	           nat POSTROUTING
//	FromNode: mangle OUTPUT, nat OUTPUT → reroute → [IPVS LOCAL_OUT] →
//	          filter OUTPUT → mangle POSTROUTING, nat POSTROUTING →
//	          (destination local: mangle PREROUTING, mangle INPUT, filter
//	          INPUT on lo)
//
// The IPVS steps run only when Node.IPVS is set (see IPVS); a packet IPVS
// sends to a remote real server then crosses mangle OUTPUT, filter OUTPUT,
// mangle POSTROUTING and nat POSTROUTING. `-m set` matches read the ipsets
// loaded with LoadIPSets.
//
// Anything the tracer does not model (an unknown match, option, target,
// ipset type or set, a table other than mangle, nat and filter holding
// rules) is an error naming the rule, never silently ignored.
package iptrace

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// builtinChains lists the built-in chains of each supported table.
var builtinChains = map[string][]string{
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
}

// ignorableTables may appear in iptables-save output; they are accepted as
// long as they hold no rules and every policy is ACCEPT.
var ignorableTables = map[string]bool{"raw": true, "security": true}

// Ruleset is the parsed state of the mangle, nat and filter tables, and
// the ipsets their rules match on.
type Ruleset struct {
	tables map[string]*table
	sets   map[string]*IPSet
}

type table struct {
	name   string
	chains map[string]*chain
}

type chain struct {
	name    string
	builtin bool
	policy  string // ACCEPT or DROP for built-in chains
	rules   []*Rule
}

// Rule is one parsed rule.
type Rule struct {
	// Table and Chain name where the rule lives.
	Table, Chain string
	// Spec is the rule as written after "-A CHAIN" (counters removed).
	Spec string

	matches []matcher
	target  target
}

// String returns "-A CHAIN spec".
func (r *Rule) String() string { return "-A " + r.Chain + " " + r.Spec }

// New returns an empty ruleset: every table with its built-in chains,
// empty, with ACCEPT policies, and no ipsets.
func New() *Ruleset {
	rs := &Ruleset{tables: map[string]*table{}}
	for name := range builtinChains {
		rs.tables[name] = newTable(name)
	}
	return rs
}

func newTable(name string) *table {
	t := &table{name: name, chains: map[string]*chain{}}
	for _, c := range builtinChains[name] {
		t.chains[c] = &chain{name: c, builtin: true, policy: "ACCEPT"}
	}
	return t
}

// Parse parses iptables-save or iptables-restore text into a new ruleset.
func Parse(text string) (*Ruleset, error) {
	rs := New()
	if err := rs.Restore(text, false); err != nil {
		return nil, err
	}
	return rs, nil
}

// MustParse is Parse that panics on error, for tests with literal rules.
func MustParse(text string) *Ruleset {
	rs, err := Parse(text)
	if err != nil {
		panic(err)
	}
	return rs
}

// Restore applies iptables-restore input to the ruleset, as
// `iptables-restore` (noflush false: each table named in the input is
// flushed first and its user chains deleted) or `iptables-restore
// --noflush` would. Like the real tool, it is all or nothing: on error the
// ruleset is left unchanged.
func (rs *Ruleset) Restore(text string, noflush bool) error {
	work := rs.clone()
	var cur *table
	var curName string
	for i, raw := range strings.Split(text, "\n") {
		lineNo := i + 1
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fail := func(err error) error { return fmt.Errorf("line %d %q: %w", lineNo, line, err) }
		switch {
		case strings.HasPrefix(line, "*"):
			if curName != "" {
				return fail(fmt.Errorf("table %s not committed", curName))
			}
			curName = line[1:]
			if t, ok := work.tables[curName]; ok {
				cur = t
				if !noflush {
					cur = newTable(curName)
					work.tables[curName] = cur
				}
			} else if ignorableTables[curName] {
				cur = nil
			} else {
				return fail(fmt.Errorf("unsupported table %q (mangle, nat and filter are traced)", curName))
			}
			continue
		case line == "COMMIT":
			if curName == "" {
				return fail(fmt.Errorf("COMMIT outside a table"))
			}
			curName, cur = "", nil
			continue
		}
		if curName == "" {
			return fail(fmt.Errorf("line outside a table"))
		}
		if cur == nil {
			if err := checkIgnorable(curName, line); err != nil {
				return fail(err)
			}
			continue
		}
		if err := cur.apply(line); err != nil {
			return fail(err)
		}
	}
	if curName != "" {
		return fmt.Errorf("table %s: COMMIT expected at end of input", curName)
	}
	rs.tables = work.tables
	return nil
}

func checkIgnorable(tbl, line string) error {
	if strings.HasPrefix(line, ":") {
		f := strings.Fields(line[1:])
		if len(f) >= 2 && (f[1] == "ACCEPT" || f[1] == "-") {
			return nil
		}
		return fmt.Errorf("table %s: policy %v is not traced", tbl, f)
	}
	return fmt.Errorf("table %s holds rules; only mangle, nat and filter are traced", tbl)
}

func (rs *Ruleset) clone() *Ruleset {
	out := &Ruleset{tables: map[string]*table{}, sets: rs.sets}
	for n, t := range rs.tables {
		nt := &table{name: n, chains: map[string]*chain{}}
		for cn, c := range t.chains {
			nc := *c
			nc.rules = append([]*Rule(nil), c.rules...)
			nt.chains[cn] = &nc
		}
		out.tables[n] = nt
	}
	return out
}

func (t *table) chain(name string) (*chain, error) {
	c, ok := t.chains[name]
	if !ok {
		return nil, fmt.Errorf("chain %s does not exist in table %s", name, t.name)
	}
	return c, nil
}

// referenced reports a rule that jumps to chain name, if any.
func (t *table) referenced(name string) *Rule {
	for _, c := range t.chains {
		for _, r := range c.rules {
			if r.target.chain == name {
				return r
			}
		}
	}
	return nil
}

func (t *table) apply(line string) error {
	if strings.HasPrefix(line, ":") {
		f := strings.Fields(line[1:])
		if len(f) < 2 {
			return fmt.Errorf("chain declaration needs a name and a policy")
		}
		name, policy := f[0], f[1]
		if c, ok := t.chains[name]; ok && c.builtin {
			return setPolicy(c, policy)
		}
		if policy != "-" {
			return fmt.Errorf("user chain %s cannot have policy %s", name, policy)
		}
		if c, ok := t.chains[name]; ok {
			c.rules = nil // declaring an existing chain flushes it
			return nil
		}
		if err := validChainName(name); err != nil {
			return err
		}
		t.chains[name] = &chain{name: name}
		return nil
	}
	toks, err := tokenize(line)
	if err != nil {
		return err
	}
	toks = stripCounters(toks)
	if len(toks) == 0 {
		return fmt.Errorf("empty command")
	}
	cmd, args := toks[0].s, toks[1:]
	arg := func(i int) string {
		if i < len(args) {
			return args[i].s
		}
		return ""
	}
	switch cmd {
	case "-A", "--append", "-I", "--insert":
		c, err := t.chain(arg(0))
		if err != nil {
			return err
		}
		rest := args[1:]
		pos := -1
		if cmd == "-I" || cmd == "--insert" {
			pos = 0
			if len(rest) > 0 {
				if n, err := strconv.Atoi(rest[0].s); err == nil && !rest[0].quoted {
					if n < 1 || n > len(c.rules)+1 {
						return fmt.Errorf("insert position %d out of range for chain %s", n, c.name)
					}
					pos, rest = n-1, rest[1:]
				}
			}
		}
		r, err := t.parseRule(c.name, rest)
		if err != nil {
			return err
		}
		if pos < 0 {
			c.rules = append(c.rules, r)
		} else {
			c.rules = append(c.rules[:pos], append([]*Rule{r}, c.rules[pos:]...)...)
		}
	case "-D", "--delete":
		c, err := t.chain(arg(0))
		if err != nil {
			return err
		}
		rest := args[1:]
		if len(rest) == 1 {
			if n, err := strconv.Atoi(rest[0].s); err == nil {
				if n < 1 || n > len(c.rules) {
					return fmt.Errorf("delete: no rule %d in chain %s", n, c.name)
				}
				c.rules = append(c.rules[:n-1], c.rules[n:]...)
				return nil
			}
		}
		spec := joinTokens(rest)
		for i, r := range c.rules {
			if r.Spec == spec {
				c.rules = append(c.rules[:i], c.rules[i+1:]...)
				return nil
			}
		}
		return fmt.Errorf("delete: rule %q not found in chain %s", spec, c.name)
	case "-N", "--new-chain":
		if _, ok := t.chains[arg(0)]; ok {
			return fmt.Errorf("chain %s already exists", arg(0))
		}
		if err := validChainName(arg(0)); err != nil {
			return err
		}
		t.chains[arg(0)] = &chain{name: arg(0)}
	case "-X", "--delete-chain":
		var names []string
		if len(args) == 0 {
			for n, c := range t.chains {
				if !c.builtin {
					names = append(names, n)
				}
			}
			sort.Strings(names)
		} else {
			names = []string{arg(0)}
		}
		for _, n := range names {
			c, err := t.chain(n)
			if err != nil {
				return err
			}
			if c.builtin {
				return fmt.Errorf("cannot delete built-in chain %s", n)
			}
			if len(c.rules) > 0 {
				return fmt.Errorf("cannot delete chain %s: it still holds %d rules", n, len(c.rules))
			}
			if r := t.referenced(n); r != nil {
				return fmt.Errorf("cannot delete chain %s: still referenced by %q", n, r.String())
			}
			delete(t.chains, n)
		}
	case "-F", "--flush":
		if len(args) == 0 {
			for _, c := range t.chains {
				c.rules = nil
			}
			return nil
		}
		c, err := t.chain(arg(0))
		if err != nil {
			return err
		}
		c.rules = nil
	case "-P", "--policy":
		c, err := t.chain(arg(0))
		if err != nil {
			return err
		}
		if !c.builtin {
			return fmt.Errorf("user chain %s has no policy", c.name)
		}
		return setPolicy(c, arg(1))
	default:
		return fmt.Errorf("unsupported command %q", cmd)
	}
	return nil
}

func setPolicy(c *chain, policy string) error {
	switch policy {
	case "ACCEPT", "DROP":
		c.policy = policy
		return nil
	}
	return fmt.Errorf("bad policy %q for built-in chain %s", policy, c.name)
}

func validChainName(n string) error {
	if n == "" || len(n) > 28 || strings.HasPrefix(n, "-") || strings.HasPrefix(n, "!") || targetNames[n] {
		return fmt.Errorf("invalid chain name %q", n)
	}
	return nil
}

// ChainNames returns the chains of table tbl, sorted.
func (rs *Ruleset) ChainNames(tbl string) []string {
	t, ok := rs.tables[tbl]
	if !ok {
		return nil
	}
	var out []string
	for n := range t.chains {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Rules returns the rules of one chain in order ("-A CHAIN spec" form), and
// whether the chain exists.
func (rs *Ruleset) Rules(tbl, chainName string) ([]string, bool) {
	t, ok := rs.tables[tbl]
	if !ok {
		return nil, false
	}
	c, ok := t.chains[chainName]
	if !ok {
		return nil, false
	}
	out := make([]string, len(c.rules))
	for i, r := range c.rules {
		out[i] = r.String()
	}
	return out, true
}

// Policy returns the policy of a built-in chain ("" for user chains or
// unknown chains).
func (rs *Ruleset) Policy(tbl, chainName string) string {
	if t, ok := rs.tables[tbl]; ok {
		if c, ok := t.chains[chainName]; ok && c.builtin {
			return c.policy
		}
	}
	return ""
}
