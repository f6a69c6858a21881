package lab

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/switchyard-proxy/switchyard/test/echo"
)

// Errors Dial distinguishes (match them with errors.Is).
var (
	// ErrRefused means the connection was actively refused: a TCP RST or an
	// ICMP port-unreachable (what an iptables REJECT sends).
	ErrRefused = errors.New("connection refused")
	// ErrTimeout means nothing answered before the deadline (a DROP, or a
	// packet lost somewhere).
	ErrTimeout = errors.New("timed out")
	// ErrUnreachable means an ICMP host or network unreachable came back, or
	// there was no route.
	ErrUnreachable = errors.New("unreachable")
)

// DefaultDialTimeout is the deadline Lab.Dial uses.
const DefaultDialTimeout = 1500 * time.Millisecond

// Dial sends one echo request from namespace ns to addr ("ip:port") over
// proto ("tcp" or "udp") and returns the echo reply. The socket is created
// inside ns (on a locked OS thread), so no process is forked. Errors wrap
// ErrRefused, ErrTimeout or ErrUnreachable when they are one of those.
func Dial(ns, proto, addr string, timeout time.Duration) (echo.Reply, error) {
	return DialFrom(ns, netip.Addr{}, proto, addr, timeout)
}

// DialFrom is Dial with the source address bound to src (invalid src lets
// the kernel choose).
func DialFrom(ns string, src netip.Addr, proto, addr string, timeout time.Duration) (echo.Reply, error) {
	if proto != "tcp" && proto != "udp" {
		return echo.Reply{}, fmt.Errorf("dial %s %s: unsupported protocol", proto, addr)
	}
	conn, err := dialIn(ns, src, proto, addr, timeout)
	if err != nil {
		return echo.Reply{}, fmt.Errorf("dial %s %s from %s: %w", proto, addr, ns, classify(err))
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return echo.Reply{}, fmt.Errorf("dial %s %s from %s: %w", proto, addr, ns, err)
	}
	if proto == "udp" {
		if _, err := conn.Write([]byte("ping\n")); err != nil {
			return echo.Reply{}, fmt.Errorf("send udp to %s from %s: %w", addr, ns, classify(err))
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return echo.Reply{}, fmt.Errorf("read %s reply from %s in %s: %w", proto, addr, ns, classify(err))
	}
	r, err := echo.ParseReply(line)
	if err != nil {
		return echo.Reply{}, fmt.Errorf("reply from %s in %s: %w", addr, ns, err)
	}
	return r, nil
}

// Dial is the package-level Dial with DefaultDialTimeout.
func (l *Lab) Dial(ns, proto, addr string) (echo.Reply, error) {
	return Dial(ns, proto, addr, DefaultDialTimeout)
}

func classify(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: %v", ErrRefused, err)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	return err
}

// dialIn creates the socket inside namespace ns (see InNS); a socket
// stays in the namespace it was created in.
func dialIn(ns string, src netip.Addr, proto, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := InNS(ns, func() error {
		d := &net.Dialer{Timeout: timeout}
		if src.IsValid() {
			if proto == "tcp" {
				d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
			} else {
				d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
			}
		}
		var err error
		c, err = d.Dial(proto, addr)
		return err
	})
	return c, err
}
