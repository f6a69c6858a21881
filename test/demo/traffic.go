package demo

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/switchyard-proxy/switchyard/test/echo"
)

// Tally counts the answers of a series of echo requests.
type Tally struct {
	// Sent is the number of requests.
	Sent int
	// ByPod counts the answers per answering pod name.
	ByPod map[string]int
	// Peers counts the client addresses the pods reported seeing.
	Peers map[string]int
	// Errors are the failed requests' errors.
	Errors []error
}

// Send makes n TCP echo requests to addr (one connection each) and counts
// who answered. It never fails as a whole: failures land in Errors.
func Send(addr string, n int, timeout time.Duration) Tally {
	t := Tally{Sent: n, ByPod: map[string]int{}, Peers: map[string]int{}}
	for i := 0; i < n; i++ {
		r, err := request(addr, timeout)
		if err != nil {
			t.Errors = append(t.Errors, err)
			continue
		}
		t.ByPod[r.Name]++
		t.Peers[r.Peer.Addr().String()]++
	}
	return t
}

func request(addr string, timeout time.Duration) (echo.Reply, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return echo.Reply{}, fmt.Errorf("connect %s: %w", addr, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return echo.Reply{}, fmt.Errorf("deadline %s: %w", addr, err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return echo.Reply{}, fmt.Errorf("read reply from %s: %w", addr, err)
	}
	r, err := echo.ParseReply(line)
	if err != nil {
		return echo.Reply{}, fmt.Errorf("reply from %s: %w", addr, err)
	}
	return r, nil
}

// Answered is the number of requests that got a reply.
func (t Tally) Answered() int { return t.Sent - len(t.Errors) }

// Print writes one bar per pod in pods (those that answered nothing too),
// then pods not listed that answered, then the client addresses seen and
// the first error, if any. A valid client is the address the requests
// were sent from; Print says when the pods saw another one (SNAT).
func (t Tally) Print(w io.Writer, pods []string, client netip.Addr) {
	names := append([]string(nil), pods...)
	listed := map[string]bool{}
	for _, p := range pods {
		listed[p] = true
	}
	var extra []string
	for p := range t.ByPod {
		if !listed[p] {
			extra = append(extra, p)
		}
	}
	sort.Strings(extra)
	names = append(names, extra...)
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, n := range names {
		c := t.ByPod[n]
		fmt.Fprintf(w, "    %-*s %3d  %s\n", width, n, c, strings.Repeat("#", c))
	}
	var peers []string
	for p := range t.Peers {
		peers = append(peers, p)
	}
	sort.Strings(peers)
	fmt.Fprintf(w, "    %d/%d answered", t.Answered(), t.Sent)
	if len(peers) > 0 {
		fmt.Fprintf(w, "; the pods saw the client as %s", strings.Join(peers, ", "))
		if client.IsValid() && (len(peers) != 1 || peers[0] != client.String()) {
			fmt.Fprintf(w, " (source NAT: the client is %s)", client)
		}
	}
	fmt.Fprintln(w)
	if len(t.Errors) > 0 {
		fmt.Fprintf(w, "    %d failed, first: %v\n", len(t.Errors), t.Errors[0])
	}
}

// Check returns an error when a request failed or a pod outside want
// answered.
func (t Tally) Check(want []string) error {
	if len(t.Errors) > 0 {
		return fmt.Errorf("%d of %d requests failed, first: %w", len(t.Errors), t.Sent, t.Errors[0])
	}
	ok := map[string]bool{}
	for _, p := range want {
		ok[p] = true
	}
	for p, c := range t.ByPod {
		if !ok[p] {
			return fmt.Errorf("pod %s answered %d requests, want only %s", p, c, strings.Join(want, ", "))
		}
	}
	return nil
}
