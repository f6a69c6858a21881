package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
)

// fakeKernel is an in-memory Kernel that counts writes.
type fakeKernel struct {
	mu      sync.Mutex
	dummy   bool
	addrs   map[netip.Addr]bool
	servers map[Key]*VirtualServer
	writes  []string
	reads   int
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{addrs: map[netip.Addr]bool{}, servers: map[Key]*VirtualServer{}}
}

func (k *fakeKernel) write(s string) { k.writes = append(k.writes, s) }

func (k *fakeKernel) VirtualServers() ([]*VirtualServer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.reads++
	var out []*VirtualServer
	for _, v := range k.servers {
		c := *v
		c.Service, c.ServiceProtocol = "", ""
		c.Dests = slices.Clone(v.Dests)
		out = append(out, &c)
	}
	// Kernel order is hash order, not sorted.
	sort.Slice(out, func(i, j int) bool { return out[i].Port > out[j].Port })
	return out, nil
}

func (k *fakeKernel) AddService(v *VirtualServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.servers[v.Key]; ok {
		return fmt.Errorf("service %s exists", v.Key)
	}
	c := *v
	c.Dests = nil
	k.servers[v.Key] = &c
	k.write("add-service " + v.Key.String())
	return nil
}

func (k *fakeKernel) UpdateService(v *VirtualServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	cur, ok := k.servers[v.Key]
	if !ok {
		return fmt.Errorf("no service %s", v.Key)
	}
	cur.Scheduler, cur.Persistent, cur.Timeout = v.Scheduler, v.Persistent, v.Timeout
	k.write("update-service " + v.Key.String())
	return nil
}

func (k *fakeKernel) DelService(key Key) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.servers[key]; !ok {
		return fmt.Errorf("no service %s", key)
	}
	delete(k.servers, key)
	k.write("del-service " + key.String())
	return nil
}

func (k *fakeKernel) dest(key Key, a netip.AddrPort) (*VirtualServer, int) {
	v := k.servers[key]
	if v == nil {
		return nil, -1
	}
	return v, slices.IndexFunc(v.Dests, func(d RealServer) bool { return d.Addr == a })
}

func (k *fakeKernel) AddDest(key Key, d RealServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, i := k.dest(key, d.Addr)
	if v == nil || i >= 0 {
		return fmt.Errorf("add dest %s to %s: bad state", d.Addr, key)
	}
	v.Dests = append(v.Dests, RealServer{Addr: d.Addr, Weight: d.Weight})
	slices.SortFunc(v.Dests, func(a, b RealServer) int { return a.Addr.Compare(b.Addr) })
	k.write(fmt.Sprintf("add-dest %s -> %s", key, d.Addr))
	return nil
}

func (k *fakeKernel) UpdateDest(key Key, d RealServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, i := k.dest(key, d.Addr)
	if i < 0 {
		return fmt.Errorf("update dest %s of %s: missing", d.Addr, key)
	}
	v.Dests[i].Weight = d.Weight
	k.write(fmt.Sprintf("update-dest %s -> %s weight %d", key, d.Addr, d.Weight))
	return nil
}

func (k *fakeKernel) DelDest(key Key, d RealServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, i := k.dest(key, d.Addr)
	if i < 0 {
		return fmt.Errorf("del dest %s of %s: missing", d.Addr, key)
	}
	v.Dests = slices.Delete(v.Dests, i, i+1)
	k.write(fmt.Sprintf("del-dest %s -> %s", key, d.Addr))
	return nil
}

// setConns sets the connection counts of one real server.
func (k *fakeKernel) setConns(key Key, a netip.AddrPort, active, inactive int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, i := k.dest(key, a)
	if i < 0 {
		panic("no such dest")
	}
	v.Dests[i].ActiveConns, v.Dests[i].InactiveConns = active, inactive
}

func (k *fakeKernel) EnsureDummy() (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.dummy {
		return false, nil
	}
	k.dummy = true
	k.write("create-dummy")
	return true, nil
}

func (k *fakeKernel) DummyAddresses() ([]netip.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []netip.Addr
	for a := range k.addrs {
		out = append(out, a)
	}
	return out, nil
}

func (k *fakeKernel) AddAddress(a netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.dummy || k.addrs[a] {
		return fmt.Errorf("add address %s: bad state", a)
	}
	k.addrs[a] = true
	k.write("add-address " + a.String())
	return nil
}

func (k *fakeKernel) DelAddress(a netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.addrs[a] {
		return fmt.Errorf("del address %s: missing", a)
	}
	delete(k.addrs, a)
	k.write("del-address " + a.String())
	return nil
}

func (k *fakeKernel) DeleteDummy() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.dummy {
		k.dummy = false
		k.addrs = map[netip.Addr]bool{}
		k.write("delete-dummy")
	}
	return nil
}

// fakeExec simulates ipset and iptables-nft(-save/-restore).
type fakeExec struct {
	mu       sync.Mutex
	sets     map[string]*IPSet
	tables   map[string]*fakeTable // "iptables-nft/nat"
	calls    []string
	restores int
}

type fakeTable struct {
	order []string
	rules map[string][]string
}

var builtins = map[string][]string{
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
}

func newFakeExec() *fakeExec {
	return &fakeExec{sets: map[string]*IPSet{}, tables: map[string]*fakeTable{}}
}

func (e *fakeExec) table(tool, name string) *fakeTable {
	base := strings.TrimSuffix(strings.TrimSuffix(tool, "-save"), "-restore")
	k := base + "/" + name
	t := e.tables[k]
	if t == nil {
		t = &fakeTable{rules: map[string][]string{}}
		for _, c := range builtins[name] {
			t.order = append(t.order, c)
			t.rules[c] = nil
		}
		e.tables[k] = t
	}
	return t
}

type exitErr struct{ code int }

func (e exitErr) Error() string { return fmt.Sprintf("exit status %d", e.code) }
func (e exitErr) ExitCode() int { return e.code }

func (e *fakeExec) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, []byte, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, strings.TrimSpace(name+" "+strings.Join(args, " ")))
	switch {
	case name == "ipset" && len(args) > 0 && args[0] == "save":
		var names []string
		for n := range e.sets {
			names = append(names, n)
		}
		sort.Strings(names)
		var sets []*IPSet
		for _, n := range names {
			sets = append(sets, e.sets[n])
		}
		return []byte(FormatIPSets(sets)), nil, nil
	case name == "ipset" && len(args) > 0 && args[0] == "restore":
		e.restores++
		return nil, nil, e.ipsetRestore(string(stdin))
	case strings.HasSuffix(name, "-save"):
		if len(args) == 2 && args[0] == "-t" {
			return []byte(e.save(name, args[1])), nil, nil
		}
		var b strings.Builder
		for _, t := range tables {
			b.WriteString(e.save(name, t))
		}
		return []byte(b.String()), nil, nil
	case strings.HasSuffix(name, "-restore"):
		e.restores++
		return nil, nil, e.iptRestore(name, string(stdin))
	case strings.HasPrefix(name, "iptables") || strings.HasPrefix(name, "ip6tables"):
		// -w -t TABLE -S CHAIN (iptexec.ChainExists)
		if len(args) == 5 && args[3] == "-S" {
			if _, ok := e.table(name, args[2]).rules[args[4]]; ok {
				return []byte("-N " + args[4] + "\n"), nil, nil
			}
			return nil, []byte("no chain"), exitErr{1}
		}
		// -w -t TABLE -C CHAIN args...
		if len(args) >= 5 && args[3] == "-C" {
			t := e.table(name, args[2])
			if slices.Contains(t.rules[args[4]], strings.TrimSpace(iptexec.QuoteArgs(args[5:]))) {
				return nil, nil, nil
			}
			return nil, []byte("Bad rule"), exitErr{1}
		}
	}
	return nil, []byte("fake: unknown command"), exitErr{2}
}

func (e *fakeExec) ipsetRestore(script string) error {
	for _, line := range strings.Split(script, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		s := e.sets[f[1]]
		switch f[0] {
		case "create":
			if s == nil {
				fam := IPSet{Name: f[1], Type: f[2]}
				e.sets[f[1]] = &fam
			} else if s.Type != f[2] {
				return fmt.Errorf("set %s exists with another type", f[1])
			}
		case "add", "del", "flush", "destroy":
			if s == nil {
				return fmt.Errorf("no set %s", f[1])
			}
			switch f[0] {
			case "add":
				if !slices.Contains(s.Members, f[2]) {
					s.Members = append(s.Members, f[2])
					sortMembers(s.Members)
				}
			case "del":
				s.Members = slices.DeleteFunc(s.Members, func(m string) bool { return m == f[2] })
			case "flush":
				s.Members = nil
			case "destroy":
				delete(e.sets, f[1])
			}
		default:
			return fmt.Errorf("ipset restore: bad line %q", line)
		}
	}
	return nil
}

func (e *fakeExec) save(tool, table string) string {
	t := e.table(tool, table)
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", table)
	for _, c := range t.order {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, c := range t.order {
		for _, r := range t.rules[c] {
			fmt.Fprintf(&b, "-A %s %s\n", c, r)
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// iptRestore applies restore input atomically per table (--noflush).
func (e *fakeExec) iptRestore(tool, input string) error {
	var cur *fakeTable
	var name string
	var work *fakeTable
	for _, line := range strings.Split(input, "\n") {
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			name = line[1:]
			cur = e.table(tool, name)
			work = &fakeTable{order: slices.Clone(cur.order), rules: map[string][]string{}}
			for c, r := range cur.rules {
				work.rules[c] = slices.Clone(r)
			}
		case line == "COMMIT":
			*cur = *work
		case strings.HasPrefix(line, ":"):
			c, _, _ := strings.Cut(line[1:], " ")
			if _, ok := work.rules[c]; !ok {
				work.order = append(work.order, c)
			}
			work.rules[c] = nil
		default:
			op, rest, _ := strings.Cut(line, " ")
			chain, rule, _ := strings.Cut(rest, " ")
			if _, ok := work.rules[chain]; !ok {
				return fmt.Errorf("%s: chain %s does not exist (line %q)", tool, chain, line)
			}
			switch op {
			case "-A":
				work.rules[chain] = append(work.rules[chain], rule)
			case "-I":
				_, r, _ := strings.Cut(rule, " ")
				work.rules[chain] = append([]string{r}, work.rules[chain]...)
			case "-D":
				i := slices.Index(work.rules[chain], rule)
				if i < 0 {
					return fmt.Errorf("%s: no rule to delete: %q", tool, line)
				}
				work.rules[chain] = slices.Delete(work.rules[chain], i, i+1)
			case "-X":
				for c, rs := range work.rules {
					for _, r := range rs {
						if strings.HasSuffix(r, "-j "+chain) || strings.Contains(r, "-j "+chain+" ") {
							return fmt.Errorf("%s: chain %s still referenced from %s", tool, chain, c)
						}
					}
				}
				delete(work.rules, chain)
				work.order = slices.DeleteFunc(work.order, func(c string) bool { return c == chain })
			default:
				return errors.New("bad restore line " + line)
			}
		}
	}
	return nil
}

// ownChainNames lists the SWY- chains of one table.
func (e *fakeExec) ownChainNames(tool, table string) []string {
	var out []string
	for _, c := range e.table(tool, table).order {
		if strings.HasPrefix(c, "SWY-") {
			out = append(out, c)
		}
	}
	return out
}

// fakeTimeoutKernel is a fakeKernel that also has IPVS timeouts, with the
// kernel's rule that a zero field keeps the current value.
type fakeTimeoutKernel struct {
	*fakeKernel
	t Timeouts
}

func (k *fakeTimeoutKernel) Timeouts() (Timeouts, error) { return k.t, nil }

func (k *fakeTimeoutKernel) SetTimeouts(t Timeouts) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, f := range []struct{ src, dst *time.Duration }{{&t.TCP, &k.t.TCP}, {&t.TCPFin, &k.t.TCPFin}, {&t.UDP, &k.t.UDP}} {
		if *f.src != 0 {
			*f.dst = f.src.Truncate(time.Second)
		}
	}
	k.write(fmt.Sprintf("set-timeouts %v %v %v", t.TCP, t.TCPFin, t.UDP))
	return nil
}
