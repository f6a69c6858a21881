package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/lab"
)

// failTimeout bounds a request that is expected to go unanswered.
const failTimeout = 700 * time.Millisecond

// client is where requests are sent from.
type client struct {
	name string
	ns   string
}

// peerCheck checks the source address a pod saw; nil accepts any.
type peerCheck func(netip.Addr) error

// peerIs wants the pods to see exactly addr (the client's address kept).
func peerIs(addr netip.Addr) peerCheck {
	return func(a netip.Addr) error {
		if a != addr {
			return fmt.Errorf("pod saw the client as %s, want %s (source kept)", a, addr)
		}
		return nil
	}
}

// peerIn wants the pods to see one of addrs (e.g. the node's addresses,
// when the request was masqueraded).
func peerIn(addrs ...netip.Addr) peerCheck {
	return func(a netip.Addr) error {
		if !slices.Contains(addrs, a) {
			return fmt.Errorf("pod saw the client as %s, want one of %v (masqueraded)", a, addrs)
		}
		return nil
	}
}

// round sends requests from c to addr over TCP and checks that every one
// was answered, only by pods in want, that every pod in want answered
// (enough requests that a miss is unlikely: 12 per pod), and peer.
func round(c client, addr string, want []string, peer peerCheck) error {
	n := max(4, 12*len(want))
	got := map[string]int{}
	for i := 0; i < n; i++ {
		r, err := lab.Dial(c.ns, "tcp", addr, lab.DefaultDialTimeout)
		if err != nil {
			return fmt.Errorf("%s %s -> %s: request %d of %d: %w", time.Now().UTC().Format(time.StampMilli), c.name, addr, i+1, n, err)
		}
		if !slices.Contains(want, r.Name) {
			return fmt.Errorf("%s -> %s: answered by %s, want only %v (so far %v)", c.name, addr, r.Name, want, got)
		}
		if peer != nil {
			if err := peer(r.Peer.Addr()); err != nil {
				return fmt.Errorf("%s -> %s (answered by %s): %w", c.name, addr, r.Name, err)
			}
		}
		got[r.Name]++
	}
	var missing []string
	for _, w := range want {
		if got[w] == 0 {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s -> %s: %v never answered in %d requests (got %v)", c.name, addr, missing, n, counts(got))
	}
	return nil
}

func counts(m map[string]int) string {
	var s []string
	for k, v := range m {
		s = append(s, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

// expectServed polls until two rounds in a row from every client reach
// exactly the pods in want (see round). Two rounds make it unlikely that a
// pod which should get nothing was merely not picked while the rules
// still include it.
func (e *env) expectServed(t *testing.T, what string, clients []client, addr string, want []string, peer peerCheck) {
	t.Helper()
	good := 0
	eventually(t, what, func() error {
		for _, c := range clients {
			if err := round(c, addr, want, peer); err != nil {
				good = 0
				return err
			}
		}
		if good++; good < 2 {
			return errors.New("one good round; confirming")
		}
		return nil
	})
}

// expectFailing polls until two rounds in a row of requests from c to addr
// all fail with an error wrapping want (lab.ErrRefused, lab.ErrTimeout).
func (e *env) expectFailing(t *testing.T, what string, c client, addr string, want error) {
	t.Helper()
	good := 0
	eventually(t, what, func() error {
		for i := 0; i < 2; i++ {
			r, err := lab.Dial(c.ns, "tcp", addr, failTimeout)
			if err == nil {
				good = 0
				return fmt.Errorf("%s -> %s: answered by %s", c.name, addr, r.Name)
			}
			if !errors.Is(err, want) {
				good = 0
				return fmt.Errorf("%s -> %s: want %v, got %w", c.name, addr, want, err)
			}
		}
		if good++; good < 2 {
			return errors.New("one failing round; confirming")
		}
		return nil
	})
}
