package hostport

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/switchyard-proxy/switchyard/conntrack"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// fakeNAT models the nat table of one tool flavour/family as text, for the
// restore lines this package writes; it applies a restore atomically.
type fakeNAT struct {
	mu       sync.Mutex
	chains   map[string]map[string][]string // tool base -> chain -> rules
	restores []string                       // every restore input
	saves    int
	lists    int // restores that only listed chains (-S)
}

func newFakeNAT() *fakeNAT { return &fakeNAT{chains: map[string]map[string][]string{}} }

func (f *fakeNAT) table(base string) map[string][]string {
	if f.chains[base] == nil {
		f.chains[base] = map[string][]string{"PREROUTING": nil, "INPUT": nil, "OUTPUT": nil, "POSTROUTING": nil}
	}
	return f.chains[base]
}

func base(tool string) string {
	tool = strings.TrimSuffix(tool, "-save")
	return strings.TrimSuffix(tool, "-restore")
}

func (f *fakeNAT) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, []byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.HasSuffix(name, "-save") && !strings.HasPrefix(name, "iptables-legacy") && !strings.HasPrefix(name, "ip6tables-legacy") {
		f.saves++
		t := f.table(base(name))
		var sb strings.Builder
		sb.WriteString("*nat\n")
		for _, c := range sortedKeys(t) {
			sb.WriteString(":" + c + " - [0:0]\n")
		}
		for _, c := range sortedKeys(t) {
			for _, r := range t[c] {
				sb.WriteString("-A " + c + " " + r + "\n")
			}
		}
		sb.WriteString("COMMIT\n")
		return []byte(sb.String()), nil, nil
	}
	if (name == "iptables-nft" || name == "ip6tables-nft") && len(args) == 5 && args[3] == "-S" {
		// iptexec.ChainExists: one chain listed.
		f.lists++
		if _, ok := f.table(name)[args[4]]; !ok {
			return nil, []byte("no chain"), exitStatus(1)
		}
		return []byte("-N " + args[4] + "\n"), nil, nil
	}
	if strings.HasSuffix(name, "-restore") && strings.Contains(string(stdin), "\n-S ") {
		f.lists++
		t := f.table(base(name))
		var sb strings.Builder
		for _, line := range strings.Split(string(stdin), "\n") {
			c, ok := strings.CutPrefix(line, "-S ")
			if !ok {
				continue
			}
			rules, exists := t[c]
			if !exists {
				return nil, []byte("chain " + c + " does not exist"), fmt.Errorf("exit status 1")
			}
			sb.WriteString("-N " + c + "\n")
			for _, r := range rules {
				sb.WriteString("-A " + c + " " + r + "\n")
			}
		}
		return []byte(sb.String()), nil, nil
	}
	if strings.HasSuffix(name, "-restore") {
		f.restores = append(f.restores, string(stdin))
		t := f.table(base(name))
		work := map[string][]string{}
		for k, v := range t {
			work[k] = append([]string(nil), v...)
		}
		for i, line := range strings.Split(strings.TrimSpace(string(stdin)), "\n") {
			fail := func() ([]byte, []byte, error) {
				return nil, []byte(fmt.Sprintf("line %d failed", i+1)), fmt.Errorf("exit status 1")
			}
			switch {
			case line == "*nat" || line == "COMMIT":
			case strings.HasPrefix(line, ":"):
				c, _, _ := strings.Cut(line[1:], " ")
				work[c] = nil
			case strings.HasPrefix(line, "-A "):
				c, r, _ := strings.Cut(line[3:], " ")
				if _, ok := work[c]; !ok {
					return fail()
				}
				work[c] = append(work[c], r)
			case strings.HasPrefix(line, "-I "):
				c, r, _ := strings.Cut(line[3:], " ")
				_, r, _ = strings.Cut(r, " ")
				work[c] = append([]string{r}, work[c]...)
			case strings.HasPrefix(line, "-D "):
				c, r, _ := strings.Cut(line[3:], " ")
				for j, x := range work[c] {
					if x == r {
						work[c] = append(work[c][:j:j], work[c][j+1:]...)
						break
					}
				}
			case strings.HasPrefix(line, "-X "):
				delete(work, line[3:])
			default:
				return fail()
			}
		}
		f.chains[base(name)] = work
		return nil, nil, nil
	}
	return nil, []byte("not found"), fmt.Errorf("%s: not found", name)
}

// exitStatus is a failed command's status, as *exec.ExitError reports it.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
func (e exitStatus) ExitCode() int { return int(e) }

func sortedKeys(m map[string][]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// fakeBackend is a proxy mode that does nothing.
type fakeBackend struct{ syncs, cleanups int }

func (b *fakeBackend) Name() string { return "fake" }
func (b *fakeBackend) Sync(context.Context, []*proxier.Snapshot) (proxier.SyncResult, error) {
	b.syncs++
	return proxier.SyncResult{}, nil
}
func (b *fakeBackend) Cleanup(context.Context) error { b.cleanups++; return nil }
func (b *fakeBackend) Render([]*proxier.Snapshot) (string, error) {
	return "# fake rules\n", nil
}

// fakeSockets records reservations; busy addresses fail.
type fakeSockets struct {
	open map[string]bool
	busy map[string]bool
}

type fakeSocket struct {
	s   *fakeSockets
	key string
}

func (c fakeSocket) Close() error { delete(c.s.open, c.key); return nil }

func (s *fakeSockets) listen(network, address string) (io.Closer, error) {
	key := network + " " + address
	if s.busy[key] {
		return nil, fmt.Errorf("listen %s: address already in use", key)
	}
	s.open[key] = true
	return fakeSocket{s, key}, nil
}

// fakeConntrack records deletes.
type fakeConntrack struct {
	flows   []conntrack.Flow
	deleted []conntrack.Flow
}

func (c *fakeConntrack) Delete(_ proxier.IPFamily, _ []proxier.Protocol, stale func(*conntrack.Flow) bool) (conntrack.Result, error) {
	var keep []conntrack.Flow
	for _, f := range c.flows {
		if stale(&f) {
			c.deleted = append(c.deleted, f)
		} else {
			keep = append(keep, f)
		}
	}
	c.flows = keep
	return conntrack.Result{Scanned: len(c.flows), Deleted: len(c.deleted)}, nil
}
