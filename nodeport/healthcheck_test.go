package nodeport

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

var loopback = []proxier.NodePortAddresses{{Addrs: addrs("127.0.0.1")}}

type reply struct {
	code   int
	header http.Header
	body   map[string]any
	raw    string
}

var client = &http.Client{Timeout: 5 * time.Second}

func get(t *testing.T, host string, port uint16) (reply, error) {
	t.Helper()
	resp, err := client.Get(fmt.Sprintf("http://%s/", net.JoinHostPort(host, fmt.Sprint(port))))
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	r := reply{code: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		return r, fmt.Errorf("body %q is not JSON: %w", raw, err)
	}
	return r, nil
}

func mustGet(t *testing.T, port uint16) reply {
	t.Helper()
	r, err := get(t, "127.0.0.1", port)
	if err != nil {
		t.Fatalf("GET port %d: %v", port, err)
	}
	return r
}

func checkReply(t *testing.T, r reply, code int, ns, name string, count int, healthy bool) {
	t.Helper()
	if r.code != code {
		t.Errorf("status = %d, want %d (body %s)", r.code, code, r.raw)
	}
	want := fmt.Sprintf(`{"service":{"namespace":%q,"name":%q},"localEndpoints":%d,"serviceProxyHealthy":%v}`, ns, name, count, healthy)
	if r.raw != want {
		t.Errorf("body = %s, want %s", r.raw, want)
	}
	for k, v := range map[string]string{
		"Content-Type":                     "application/json",
		"X-Content-Type-Options":           "nosniff",
		"X-Load-Balancing-Endpoint-Weight": fmt.Sprint(count),
	} {
		if got := r.header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
}

// waitRefused polls until connecting to port on loopback is refused.
func waitRefused(t *testing.T, port uint16) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err != nil {
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial port %d: %v, want connection refused", port, err)
			}
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("port %d still accepts connections", port)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newServers(t *testing.T, addrs []proxier.NodePortAddresses, healthy func() bool) *Servers {
	s := NewServers(addrs, healthy)
	t.Cleanup(s.Close)
	return s
}

func TestServersStatus(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s := newServers(t, loopback, healthy.Load)
	pa, pb := freePort(t), freePort(t)

	if err := s.Sync(map[string]Service{
		"ns1/with-endpoints": {Port: pa, LocalEndpoints: 2},
		"ns2/without":        {Port: pb, LocalEndpoints: 0},
	}); err != nil {
		t.Fatal(err)
	}
	checkReply(t, mustGet(t, pa), 200, "ns1", "with-endpoints", 2, true)
	checkReply(t, mustGet(t, pb), 503, "ns2", "without", 0, true)

	// An unhealthy proxy fails every health check, endpoints or not.
	healthy.Store(false)
	checkReply(t, mustGet(t, pa), 503, "ns1", "with-endpoints", 2, false)
	checkReply(t, mustGet(t, pb), 503, "ns2", "without", 0, false)
}

func TestServersUpdateCountKeepsListener(t *testing.T) {
	s := newServers(t, loopback, nil)
	p := freePort(t)
	if err := s.Sync(map[string]Service{"ns/svc": {Port: p, LocalEndpoints: 0}}); err != nil {
		t.Fatal(err)
	}
	checkReply(t, mustGet(t, p), 503, "ns", "svc", 0, true)

	// Hold a connection open across the update: if the listener were
	// reopened, the keep-alive connection would be closed.
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := s.Sync(map[string]Service{"ns/svc": {Port: p, LocalEndpoints: 3}}); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("connection opened before the update: %v", err)
	}
	if !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200 ") || !strings.Contains(string(buf[:n]), `"localEndpoints":3`) {
		t.Errorf("response on the old connection:\n%s", buf[:n])
	}
	checkReply(t, mustGet(t, p), 200, "ns", "svc", 3, true)

	// Back to zero: 503 again.
	if err := s.Sync(map[string]Service{"ns/svc": {Port: p, LocalEndpoints: 0}}); err != nil {
		t.Fatal(err)
	}
	checkReply(t, mustGet(t, p), 503, "ns", "svc", 0, true)
}

func TestServersPortChangeAndRemoval(t *testing.T) {
	s := newServers(t, loopback, nil)
	p1, p2, p3 := freePort(t), freePort(t), freePort(t)
	if err := s.Sync(map[string]Service{
		"ns/a": {Port: p1, LocalEndpoints: 1},
		"ns/b": {Port: p3, LocalEndpoints: 1},
	}); err != nil {
		t.Fatal(err)
	}
	checkReply(t, mustGet(t, p1), 200, "ns", "a", 1, true)

	// a moves to p2: p1 closes, p2 opens, b is untouched.
	if err := s.Sync(map[string]Service{
		"ns/a": {Port: p2, LocalEndpoints: 1},
		"ns/b": {Port: p3, LocalEndpoints: 1},
	}); err != nil {
		t.Fatal(err)
	}
	waitRefused(t, p1)
	checkReply(t, mustGet(t, p2), 200, "ns", "a", 1, true)
	checkReply(t, mustGet(t, p3), 200, "ns", "b", 1, true)
	if got := fmt.Sprint(s.Ports()); got != fmt.Sprint(sortedPorts(p2, p3)) {
		t.Errorf("Ports() = %s, want %v", got, sortedPorts(p2, p3))
	}

	// a removed: its listener closes, b keeps working.
	if err := s.Sync(map[string]Service{"ns/b": {Port: p3, LocalEndpoints: 1}}); err != nil {
		t.Fatal(err)
	}
	waitRefused(t, p2)
	checkReply(t, mustGet(t, p3), 200, "ns", "b", 1, true)

	// The port another service gave up can be taken by a new one.
	if err := s.Sync(map[string]Service{"other/c": {Port: p3, LocalEndpoints: 0}}); err != nil {
		t.Fatal(err)
	}
	checkReply(t, mustGet(t, p3), 503, "other", "c", 0, true)

	// Close stops everything.
	s.Close()
	waitRefused(t, p3)
	if err := s.Sync(map[string]Service{"ns/b": {Port: p3}}); err == nil {
		t.Error("Sync after Close succeeded")
	}
}

func sortedPorts(a, b uint16) []uint16 {
	if a > b {
		a, b = b, a
	}
	return []uint16{a, b}
}

func TestServersBusyPort(t *testing.T) {
	s := newServers(t, loopback, nil)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := uint16(busy.Addr().(*net.TCPAddr).Port)
	ok := freePort(t)

	err = s.Sync(map[string]Service{
		"ns/busy": {Port: busyPort, LocalEndpoints: 1},
		"ns/ok":   {Port: ok, LocalEndpoints: 1},
	})
	var be *BindError
	if !errors.As(err, &be) {
		t.Fatalf("Sync error = %v, want a *BindError", err)
	}
	if be.Service != "ns/busy" || be.Port != busyPort || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("BindError = %+v (%v), want ns/busy on %d with EADDRINUSE", be, err, busyPort)
	}
	if !strings.Contains(err.Error(), "ns/busy") {
		t.Errorf("error %q does not name the service", err)
	}
	checkReply(t, mustGet(t, ok), 200, "ns", "ok", 1, true)

	// Once the port is free, the next Sync opens it.
	busy.Close()
	if err := s.Sync(map[string]Service{
		"ns/busy": {Port: busyPort, LocalEndpoints: 1},
		"ns/ok":   {Port: ok, LocalEndpoints: 1},
	}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	checkReply(t, mustGet(t, busyPort), 200, "ns", "busy", 1, true)
}

func TestServersSamePortTwice(t *testing.T) {
	s := newServers(t, loopback, nil)
	p := freePort(t)
	err := s.Sync(map[string]Service{
		"ns/b": {Port: p, LocalEndpoints: 1},
		"ns/a": {Port: p, LocalEndpoints: 0},
		"ns/z": {Port: 0, LocalEndpoints: 1},
	})
	if err == nil || !strings.Contains(err.Error(), "ns/b") || !strings.Contains(err.Error(), "ns/z") || strings.Contains(err.Error(), "service ns/a on") {
		t.Errorf("err = %v, want errors for ns/b (port taken by ns/a) and ns/z (no port)", err)
	}
	checkReply(t, mustGet(t, p), 503, "ns", "a", 0, true)
}

func TestServersAllAddresses(t *testing.T) {
	s := newServers(t, []proxier.NodePortAddresses{{All: true}, {Addrs: addrs("fd00::1")}}, nil)
	p := freePort(t)
	if err := s.Sync(map[string]Service{"ns/svc": {Port: p, LocalEndpoints: 1}}); err != nil {
		t.Fatal(err)
	}
	checkReply(t, mustGet(t, p), 200, "ns", "svc", 1, true)
	if hasIPv6Loopback() {
		r, err := get(t, "::1", p)
		if err != nil {
			t.Fatalf("GET [::1]:%d: %v", p, err)
		}
		checkReply(t, r, 200, "ns", "svc", 1, true)
	}
}

func TestServersNoMatchingAddress(t *testing.T) {
	// CIDRs that matched nothing: like kube-proxy, nothing is opened.
	s := newServers(t, []proxier.NodePortAddresses{{}}, nil)
	p := freePort(t)
	if err := s.Sync(map[string]Service{"ns/svc": {Port: p, LocalEndpoints: 1}}); err != nil {
		t.Fatal(err)
	}
	waitRefused(t, p)
}

func hasIPv6Loopback() bool {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func TestHealthCheckServices(t *testing.T) {
	ep := func(addr string, local, ready bool) proxier.Endpoint {
		return proxier.Endpoint{Addr: netip.MustParseAddrPort(addr), Local: local, Ready: ready, Serving: ready}
	}
	name := func(port string) proxier.ServicePortName {
		return proxier.ServicePortName{Namespace: "ns", Name: "web", Port: port, Protocol: proxier.TCP}
	}
	v4 := &proxier.Snapshot{Family: proxier.IPv4, Services: []*proxier.ServicePort{
		{Name: name("http"), HealthCheckNodePort: 30500, AllEndpoints: []proxier.Endpoint{
			ep("10.1.0.1:80", true, true), ep("10.1.0.2:80", true, false), ep("10.1.0.3:80", false, true),
		}},
		{Name: name("https"), HealthCheckNodePort: 30500, AllEndpoints: []proxier.Endpoint{
			ep("10.1.0.1:443", true, true), ep("10.1.0.4:443", true, true),
		}},
		{Name: proxier.ServicePortName{Namespace: "ns", Name: "cluster"}, AllEndpoints: []proxier.Endpoint{ep("10.1.0.9:80", true, true)}},
		{Name: proxier.ServicePortName{Namespace: "ns", Name: "empty"}, HealthCheckNodePort: 30501},
	}}
	v6 := &proxier.Snapshot{Family: proxier.IPv6, Services: []*proxier.ServicePort{
		{Name: name("http"), HealthCheckNodePort: 30500, AllEndpoints: []proxier.Endpoint{ep("[fd00::1]:80", true, true)}},
	}}
	got := HealthCheckServices([]*proxier.Snapshot{v4, v6, nil})
	want := map[string]Service{
		"ns/web":   {Port: 30500, LocalEndpoints: 2, PerFamily: map[proxier.IPFamily]int{proxier.IPv4: 2, proxier.IPv6: 1}},
		"ns/empty": {Port: 30501, LocalEndpoints: 0, PerFamily: map[proxier.IPFamily]int{proxier.IPv4: 0}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("HealthCheckServices = %v, want %v", got, want)
	}
}

// Like kube-proxy's per-family health servers, a request is answered with
// the local endpoints of the family it arrived over: a service whose only
// local endpoint is IPv6 is healthy over IPv6 and unhealthy over IPv4 (an
// IPv4 load balancer must not pick this node).
func TestHealthCheckPerFamily(t *testing.T) {
	if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		l.Close()
	}
	s := NewServers(nil, nil) // one wildcard listener for both families
	t.Cleanup(s.Close)
	p := freePort(t)
	if err := s.Sync(map[string]Service{"ns/v6only": {Port: p, LocalEndpoints: 1,
		PerFamily: map[proxier.IPFamily]int{proxier.IPv4: 0, proxier.IPv6: 1}}}); err != nil {
		t.Fatal(err)
	}
	r4, err := get(t, "127.0.0.1", p)
	if err != nil {
		t.Fatal(err)
	}
	checkReply(t, r4, http.StatusServiceUnavailable, "ns", "v6only", 0, true)
	r6, err := get(t, "::1", p)
	if err != nil {
		t.Fatal(err)
	}
	checkReply(t, r6, http.StatusOK, "ns", "v6only", 1, true)
}
