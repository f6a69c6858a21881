package echo

import (
	"bufio"
	"net"
	"net/netip"
	"testing"
	"time"
)

func freePort(t *testing.T, network string) uint16 {
	t.Helper()
	if network == "tcp" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return uint16(l.Addr().(*net.TCPAddr).Port)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

func TestServerRepliesNameAndPeer(t *testing.T) {
	tp, up := freePort(t, "tcp"), freePort(t, "udp")
	s, err := Listen("pod-a", []uint16{tp}, []uint16{up})
	if err != nil {
		t.Fatal(err)
	}
	s.Serve()
	t.Cleanup(func() { _ = s.Close() })

	// The server listens on every address of both families: IPv4 and
	// IPv6 loopback both answer (the dual-stack lab relies on it).
	for _, tc := range []struct{ network, ip string }{{"tcp", "127.0.0.1"}, {"udp", "127.0.0.1"}, {"tcp", "::1"}, {"udp", "::1"}} {
		network := tc.network
		port := tp
		if network == "udp" {
			port = up
		}
		c, err := net.DialTimeout(network, netip.AddrPortFrom(netip.MustParseAddr(tc.ip), port).String(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if network == "udp" {
			if _, err := c.Write([]byte("hi")); err != nil {
				t.Fatal(err)
			}
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("%s %s: read: %v", network, tc.ip, err)
		}
		r, err := ParseReply(line)
		if err != nil {
			t.Fatal(err)
		}
		local := netip.MustParseAddrPort(c.LocalAddr().String())
		c.Close()
		if r.Name != "pod-a" || r.Peer != local {
			t.Errorf("%s %s: reply %+v, want name pod-a peer %v", network, tc.ip, r, local)
		}
	}
}

func TestParseReplyRejectsGarbage(t *testing.T) {
	for _, s := range []string{"", "hello", "swy-echo a", "swy-echo a b", "other a 1.2.3.4:5"} {
		if _, err := ParseReply(s); err == nil {
			t.Errorf("ParseReply(%q) succeeded", s)
		}
	}
}

func TestParsePorts(t *testing.T) {
	got, err := ParsePorts("80,8080")
	if err != nil || len(got) != 2 || got[0] != 80 || got[1] != 8080 {
		t.Fatalf("ParsePorts = %v, %v", got, err)
	}
	if _, err := ParsePorts("80,x"); err == nil {
		t.Error("ParsePorts accepted x")
	}
	if _, err := Listen("two words", nil, nil); err == nil {
		t.Error("Listen accepted a name with a space")
	}
}
