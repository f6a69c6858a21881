package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"testing"
)

func addr(ip netip.Addr, port uint16) string { return netip.AddrPortFrom(ip, port).String() }

// TestLabWithoutProxy proves the lab's plumbing with no proxy at all: plain
// routing through the node namespace carries TCP and UDP from the outside
// client, from pods and from the node to pod IPs, with source addresses
// kept; refused and timed-out dials are told apart; and cleanup leaves no
// namespace behind.
func TestLabWithoutProxy(t *testing.T) {
	RequireRoot(t)
	var nss []string
	t.Run("traffic", func(t *testing.T) {
		extra := netip.MustParseAddr("192.0.2.200")
		l := New(t, Spec{OutsideExtraIPs: []netip.Addr{extra}, Pods: []Pod{
			{Name: "pod-a", IP: netip.MustParseAddr("10.244.0.2"), TCPPorts: []uint16{80, 8080}, UDPPorts: []uint16{53}},
			{Name: "pod-b", IP: netip.MustParseAddr("10.244.0.3"), TCPPorts: []uint16{80}, UDPPorts: []uint16{53}},
		}})
		nss = l.Namespaces()
		if len(nss) != 4 {
			t.Fatalf("namespaces = %v, want node, outside and two pods", nss)
		}
		a, b := l.Pod("pod-a"), l.Pod("pod-b")
		cases := []struct {
			from, proto, to string
			wantName        string
			wantSrc         netip.Addr
		}{
			{l.Outside, "tcp", addr(a.IP, 80), "pod-a", l.OutsideIP},
			{l.Outside, "udp", addr(b.IP, 53), "pod-b", l.OutsideIP},
			{l.Outside, "tcp", addr(a.IP, 8080), "pod-a", l.OutsideIP},
			{a.NS, "tcp", addr(b.IP, 80), "pod-b", a.IP},
			{b.NS, "udp", addr(a.IP, 53), "pod-a", b.IP},
			{l.Node, "tcp", addr(b.IP, 80), "pod-b", l.NodeIP},
		}
		for _, c := range cases {
			r, err := l.Dial(c.from, c.proto, c.to)
			if err != nil {
				t.Errorf("%s %s -> %s: %v", c.from, c.proto, c.to, err)
				continue
			}
			if r.Name != c.wantName || r.Peer.Addr() != c.wantSrc {
				t.Errorf("%s %s -> %s: reply %v, want from %s seeing source %v", c.from, c.proto, c.to, r, c.wantName, c.wantSrc)
			}
		}

		// A second outside address, used as the source.
		for _, proto := range []string{"tcp", "udp"} {
			port := uint16(80)
			if proto == "udp" {
				port = 53
			}
			r, err := DialFrom(l.Outside, extra, proto, addr(a.IP, port), DefaultDialTimeout)
			if err != nil || r.Peer.Addr() != extra {
				t.Errorf("%s from %v: reply %v, err %v; want the pod to see %v", proto, extra, r, err, extra)
			}
		}

		// Nothing listens on TCP 81 or UDP 54: refused at once.
		for _, proto := range []string{"tcp", "udp"} {
			port := uint16(81)
			if proto == "udp" {
				port = 54
			}
			_, err := l.Dial(l.Outside, proto, addr(a.IP, port))
			if !errors.Is(err, ErrRefused) {
				t.Errorf("%s to a closed port: err = %v, want ErrRefused", proto, err)
			}
		}
		// A service IP with no proxy: the node routes it back towards the
		// outside namespace, which drops it: a timeout, not a refusal.
		_, err := l.Dial(l.Outside, "tcp", "10.96.0.1:80")
		if !errors.Is(err, ErrTimeout) {
			t.Errorf("unproxied service IP: err = %v, want ErrTimeout", err)
		}

		// The sysctls, as another process inside each namespace sees
		// them.
		for _, c := range []struct{ ns, key, want string }{
			{l.Node, "net/ipv4/ip_forward", "1"},
			{l.Node, "net/ipv4/conf/default/send_redirects", "0"},
			{l.Node, "net/ipv4/conf/ext0/send_redirects", "0"},
			{l.Node, "net/ipv4/conf/all/route_localnet", "1"},
			{l.Node, "net/ipv4/conf/" + a.NodeIface + "/rp_filter", "0"},
			{l.Outside, "net/ipv4/ip_forward", "0"},
			{b.NS, "net/ipv4/conf/all/rp_filter", "0"},
		} {
			if out := strings.TrimSpace(l.MustExec(c.ns, "cat", "/proc/sys/"+c.key)); out != c.want {
				t.Errorf("%s: %s = %q, want %s", c.ns, c.key, out, c.want)
			}
		}
	})
	out, err := run("ip", "netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range nss {
		for _, line := range strings.Split(out, "\n") {
			if strings.Fields(line + " x")[0] == ns {
				t.Errorf("namespace %s left behind after cleanup", ns)
			}
		}
	}
}

// TestDualStackLabWithoutProxy proves the dual-stack lab's IPv6 plumbing
// with no proxy: TCP and UDP over IPv6 from the outside client, a pod and
// the node reach pods' IPv6 addresses with the source kept, IPv4 still
// works next to it, a pod without an IPv6 address is fine, and an
// unproxied IPv6 service address times out inside the lab.
func TestDualStackLabWithoutProxy(t *testing.T) {
	RequireRoot(t)
	l := New(t, Spec{Pods: []Pod{
		{Name: "pod-a", IP: netip.MustParseAddr("10.244.0.2"), IPv6: netip.MustParseAddr("fd00:10:244::2"), TCPPorts: []uint16{80}, UDPPorts: []uint16{53}},
		{Name: "pod-b", IP: netip.MustParseAddr("10.244.1.2"), IPv6: netip.MustParseAddr("fd00:10:244:1::2"), TCPPorts: []uint16{80}, UDPPorts: []uint16{53}},
		{Name: "pod-c", IP: netip.MustParseAddr("10.244.0.3"), TCPPorts: []uint16{80}},
	}})
	if l.NodeIPv6 != DefaultNodeIPv6 || l.OutsideIPv6 != DefaultOutsideIPv6 || l.OutsideGWv6 != DefaultOutsideGWv6 {
		t.Fatalf("IPv6 addresses %v %v %v, want the defaults", l.NodeIPv6, l.OutsideIPv6, l.OutsideGWv6)
	}
	a, b, c := l.Pod("pod-a"), l.Pod("pod-b"), l.Pod("pod-c")
	cases := []struct {
		from, proto, to string
		wantName        string
		wantSrc         netip.Addr
	}{
		{l.Outside, "tcp", addr(a.IPv6, 80), "pod-a", l.OutsideIPv6},
		{l.Outside, "udp", addr(b.IPv6, 53), "pod-b", l.OutsideIPv6},
		{a.NS, "tcp", addr(b.IPv6, 80), "pod-b", a.IPv6},
		{b.NS, "udp", addr(a.IPv6, 53), "pod-a", b.IPv6},
		{l.Node, "tcp", addr(b.IPv6, 80), "pod-b", l.NodeIPv6},
		{l.Node, "udp", addr(a.IPv6, 53), "pod-a", l.NodeIPv6},
		{l.Outside, "tcp", addr(a.IP, 80), "pod-a", l.OutsideIP},
		{a.NS, "tcp", addr(c.IP, 80), "pod-c", a.IP},
	}
	for _, c := range cases {
		r, err := l.Dial(c.from, c.proto, c.to)
		if err != nil {
			t.Errorf("%s %s -> %s: %v", c.from, c.proto, c.to, err)
			continue
		}
		if r.Name != c.wantName || r.Peer.Addr() != c.wantSrc {
			t.Errorf("%s %s -> %s: reply %v, want from %s seeing source %v", c.from, c.proto, c.to, r, c.wantName, c.wantSrc)
		}
	}
	if _, err := l.Dial(l.Outside, "tcp", "[fd00:10:96::1]:80"); !errors.Is(err, ErrTimeout) {
		t.Errorf("unproxied IPv6 service address: err = %v, want ErrTimeout", err)
	}
	if out := l.MustExec(l.Node, "ip", "-6", "addr", "show", "tentative"); strings.TrimSpace(out) != "" {
		t.Errorf("tentative IPv6 addresses on the node:\n%s", out)
	}
}

// TestCleanupAfterFailure builds a lab that fails halfway (an outside
// address given twice) and checks that its cleanup still removes every
// namespace it had made.
func TestCleanupAfterFailure(t *testing.T) {
	RequireRoot(t)
	ft := &fakeT{TB: t}
	func() {
		defer func() { _ = recover() }()
		New(ft, Spec{OutsideExtraIPs: []netip.Addr{DefaultOutsideIP}, Pods: []Pod{{Name: "pod-a", IP: netip.MustParseAddr("10.244.0.2")}}})
		t.Errorf("New with a duplicate outside address did not fail")
	}()
	m := regexp.MustCompile(Prefix + `[0-9a-f]{6}-`).FindString(ft.msg)
	if m == "" {
		ft.runCleanups()
		t.Fatalf("failure names no lab namespace: %q", ft.msg)
	}
	t.Logf("failed as expected: %s", ft.msg)
	labNS := func() []string {
		out, err := run("ip", "netns", "list")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, line := range strings.Split(out, "\n") {
			if name := strings.Fields(line + " x")[0]; strings.HasPrefix(name, m) {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		return names
	}
	if got, want := fmt.Sprint(labNS()), fmt.Sprint([]string{m + "node", m + "out"}); got != want {
		t.Errorf("namespaces of the failed lab = %s, want %s (the pod's never made)", got, want)
	}
	ft.runCleanups()
	if left := labNS(); len(left) > 0 {
		t.Errorf("namespaces left behind after cleanup: %v", left)
	}
}

// TestSpecValidation checks that bad pod specs fail before any namespace is made.
func TestSpecValidation(t *testing.T) {
	RequireRoot(t)
	for _, p := range []Pod{{Name: "Bad_Name", IP: netip.MustParseAddr("10.244.0.9")}, {Name: "v6", IP: netip.MustParseAddr("fd00::1")},
		{Name: "v6-in-v4", IP: netip.MustParseAddr("10.244.0.9"), IPv6: netip.MustParseAddr("10.244.0.10")},
		{Name: "v6-ll", IP: netip.MustParseAddr("10.244.0.9"), IPv6: netip.MustParseAddr("fe80::9")}} {
		ft := &fakeT{TB: t}
		func() {
			defer func() { _ = recover() }()
			New(ft, Spec{Pods: []Pod{p}})
		}()
		ft.runCleanups()
		if !ft.failed {
			t.Errorf("New accepted pod %+v", p)
		}
	}
}

// fakeT records failures instead of stopping the real test.
type fakeT struct {
	testing.TB
	failed   bool
	msg      string
	cleanups []func()
}

func (f *fakeT) Helper()                        {}
func (f *fakeT) Cleanup(fn func())              { f.cleanups = append(f.cleanups, fn) }
func (f *fakeT) Errorf(format string, a ...any) { f.failed = true }
func (f *fakeT) Fatalf(format string, a ...any) {
	f.failed = true
	f.msg = fmt.Sprintf(format, a...)
	panic(fmt.Sprintf(format, a...))
}
func (f *fakeT) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}
