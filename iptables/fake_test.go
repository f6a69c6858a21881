package iptables

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// fakeKernel is a small in-memory model of what the iptables tools do, per
// flavour and family ("iptables-nft", "ip6tables-legacy", ...). It keeps
// chains and rules as text, checks jump targets and references like the
// kernel does, applies restore input atomically, and records every call.
type fakeKernel struct {
	mu     sync.Mutex
	tables map[string]map[string]*fakeTable // tool base -> table name -> table
	calls  []fakeCall
	// failRestore makes the next restore fail at this input line (1-based).
	failRestore int
	// listed is what "-S CHAIN" lines of the running restore printed.
	listed strings.Builder
}

type fakeTable struct {
	order []string // chain names in creation order
	rules map[string][]string
}

type fakeCall struct {
	name  string
	args  []string
	stdin string
}

var builtins = map[string][]string{
	tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	tableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

func newFakeKernel() *fakeKernel { return &fakeKernel{tables: map[string]map[string]*fakeTable{}} }

func (k *fakeKernel) table(base, name string) *fakeTable {
	if k.tables[base] == nil {
		k.tables[base] = map[string]*fakeTable{}
	}
	t := k.tables[base][name]
	if t == nil {
		t = &fakeTable{rules: map[string][]string{}}
		for _, c := range builtins[name] {
			t.order = append(t.order, c)
			t.rules[c] = nil
		}
		k.tables[base][name] = t
	}
	return t
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{order: slices.Clone(t.order), rules: map[string][]string{}}
	for n, r := range t.rules {
		c.rules[n] = slices.Clone(r)
	}
	return c
}

// restoreCalls returns the stdin of every restore call so far.
func (k *fakeKernel) restoreCalls() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for _, c := range k.calls {
		if strings.HasSuffix(c.name, "-restore") {
			out = append(out, c.stdin)
		}
	}
	return out
}

func (k *fakeKernel) resetCalls() {
	k.mu.Lock()
	k.calls = nil
	k.mu.Unlock()
}

type exitErr struct{ code int }

func (e exitErr) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Run implements Executor.
func (k *fakeKernel) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, []byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, fakeCall{name: name, args: slices.Clone(args), stdin: string(stdin)})
	switch {
	case strings.HasSuffix(name, "-save"):
		base := strings.TrimSuffix(name, "-save")
		tables := tableOrder
		if len(args) == 2 && args[0] == "-t" {
			tables = []string{args[1]}
		}
		return []byte(k.save(base, tables)), nil, nil
	case strings.HasSuffix(name, "-restore"):
		base := strings.TrimSuffix(name, "-restore")
		if k.failRestore > 0 {
			n := k.failRestore
			k.failRestore = 0
			return nil, []byte(fmt.Sprintf("%s: line %d failed\n", name, n)), exitErr{1}
		}
		k.listed.Reset()
		if err := k.restore(base, string(stdin)); err != nil {
			return nil, []byte(name + ": " + err.Error() + "\n"), exitErr{1}
		}
		return []byte(k.listed.String()), nil, nil
	default:
		return k.command(name, args)
	}
}

// joinArgs renders argv as restore-style text (quoting arguments with
// spaces), so -C/-I rules compare equal to saved rules.
func joinArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " ") {
			a = `"` + a + `"`
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func (k *fakeKernel) command(name string, args []string) ([]byte, []byte, error) {
	if len(args) < 5 || args[0] != "-w" || args[1] != "-t" {
		return nil, []byte("fake: unsupported command"), exitErr{2}
	}
	t := k.table(name, args[2])
	op, chain, rest := args[3], args[4], args[5:]
	if _, ok := t.rules[chain]; !ok {
		return nil, []byte("chain does not exist"), exitErr{1}
	}
	switch op {
	case "-S":
		return []byte("-N " + chain + "\n"), nil, nil
	case "-C":
		if slices.Contains(t.rules[chain], joinArgs(rest)) {
			return nil, nil, nil
		}
		return nil, []byte("Bad rule (does a matching rule exist in that chain?)"), exitErr{1}
	case "-I":
		if len(rest) < 1 || rest[0] != "1" {
			return nil, []byte("fake: only -I CHAIN 1 is supported"), exitErr{2}
		}
		rule := joinArgs(rest[1:])
		if err := t.checkTarget(rule); err != nil {
			return nil, []byte(err.Error()), exitErr{1}
		}
		t.rules[chain] = append([]string{rule}, t.rules[chain]...)
		return nil, nil, nil
	}
	return nil, []byte("fake: unsupported op " + op), exitErr{2}
}

func (t *fakeTable) checkTarget(rule string) error {
	for _, flag := range []string{"-j ", "-g "} {
		if i := strings.Index(rule, flag); i >= 0 {
			target, _, _ := strings.Cut(rule[i+3:], " ")
			if strings.HasPrefix(target, ChainPrefix) {
				if _, ok := t.rules[target]; !ok {
					return fmt.Errorf("Couldn't load target `%s'", target)
				}
			}
		}
	}
	return nil
}

func (t *fakeTable) referenced(chain string) bool {
	for _, rules := range t.rules {
		for _, r := range rules {
			if strings.Contains(r+" ", "-j "+chain+" ") || strings.Contains(r+" ", "-g "+chain+" ") {
				return true
			}
		}
	}
	return false
}

func (k *fakeKernel) restore(base, input string) error {
	var cur *fakeTable
	var curName string
	staged := map[string]*fakeTable{}
	added := map[string][]string{} // table -> rules added by this restore
	for i, line := range strings.Split(input, "\n") {
		n := i + 1
		fail := func(format string, a ...any) error {
			return fmt.Errorf("line %d failed: %s", n, fmt.Sprintf(format, a...))
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			curName = line[1:]
			cur = k.table(base, curName).clone()
		case line == "COMMIT":
			if cur == nil {
				return fail("COMMIT outside a table")
			}
			staged[curName] = cur
			cur = nil
		case cur == nil:
			return fail("rule outside a table")
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := cur.rules[name]; !ok {
				cur.order = append(cur.order, name)
			}
			cur.rules[name] = nil
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			if _, ok := cur.rules[chain]; !ok {
				return fail("no chain %s", chain)
			}
			if err := cur.checkTarget(rule); err != nil {
				return fail("%v", err)
			}
			cur.rules[chain] = append(cur.rules[chain], rule)
			added[curName] = append(added[curName], rule)
		case line == "-S":
			// Listing: iptables-nft loads its whole cache; nothing changes.
		case strings.HasPrefix(line, "-S "):
			name := line[3:]
			rules, ok := cur.rules[name]
			if !ok {
				return fail("chain `%s' in table `%s' is incompatible, use 'nft' tool.", name, curName)
			}
			if slices.Contains(builtins[curName], name) {
				k.listed.WriteString("-P " + name + " ACCEPT\n")
			} else {
				k.listed.WriteString("-N " + name + "\n")
			}
			for _, r := range rules {
				k.listed.WriteString("-A " + name + " " + r + "\n")
			}
		case strings.HasPrefix(line, "-F "):
			name := line[3:]
			if _, ok := cur.rules[name]; !ok {
				return fail("No chain/target/match by that name")
			}
			cur.rules[name] = nil
		case strings.HasPrefix(line, "-I "):
			chain, rest, _ := strings.Cut(line[3:], " ")
			pos, rule, _ := strings.Cut(rest, " ")
			if _, ok := cur.rules[chain]; !ok {
				return fail("no chain %s", chain)
			}
			i, err := strconv.Atoi(pos)
			// Like iptables-nft, refuse to insert before nothing or before
			// a rule added in this same restore.
			if err != nil || i < 1 || i > len(cur.rules[chain]) || slices.Contains(added[curName], cur.rules[chain][i-1]) {
				return fail("RULE_INSERT failed (No such file or directory): rule in chain %s", chain)
			}
			if err := cur.checkTarget(rule); err != nil {
				return fail("%v", err)
			}
			cur.rules[chain] = slices.Insert(cur.rules[chain], i-1, rule)
			added[curName] = append(added[curName], rule)
		case strings.HasPrefix(line, "-D "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			i := slices.Index(cur.rules[chain], rule)
			if i < 0 {
				return fail("no such rule in %s", chain)
			}
			cur.rules[chain] = slices.Delete(cur.rules[chain], i, i+1)
		case strings.HasPrefix(line, "-X "):
			name := line[3:]
			if _, ok := cur.rules[name]; !ok {
				return fail("no chain %s", name)
			}
			if len(cur.rules[name]) > 0 || cur.referenced(name) {
				return fail("chain %s busy", name)
			}
			delete(cur.rules, name)
			cur.order = slices.DeleteFunc(cur.order, func(s string) bool { return s == name })
		default:
			return fail("unsupported line %q", line)
		}
	}
	if cur != nil {
		return errors.New("missing COMMIT")
	}
	for name, t := range staged {
		k.tables[base][name] = t
	}
	return nil
}

// save prints tables like iptables-save (without counters and dates).
func (k *fakeKernel) save(base string, tables []string) string {
	var sb strings.Builder
	for _, name := range tables {
		t := k.table(base, name)
		sb.WriteString("*" + name + "\n")
		order := slices.Clone(t.order)
		slices.Sort(order)
		for _, c := range order {
			sb.WriteString(":" + c + " - [0:0]\n")
		}
		for _, c := range order {
			for _, r := range t.rules[c] {
				sb.WriteString("-A " + c + " " + r + "\n")
			}
		}
		sb.WriteString("COMMIT\n")
	}
	return sb.String()
}

// dump returns every table of base as a comparable map (chain -> rules).
func (k *fakeKernel) dump(base string) map[string]map[string][]string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]map[string][]string{}
	for name, t := range k.tables[base] {
		out[name] = maps.Clone(t.rules)
		for c, r := range out[name] {
			if r == nil {
				out[name][c] = []string{}
			}
		}
	}
	return out
}
