// Package echo is a tiny TCP and UDP echo service for the network lab. Every
// reply names the server and the peer address it saw, so a test can tell
// which pod answered and whether the client's source address was kept or
// masqueraded on the way.
package echo

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Reply is what a server answers: its own name and the peer it saw.
type Reply struct {
	// Name is the server's name (the pod's name in the lab).
	Name string
	// Peer is the source address and port of the request as the server saw it.
	Peer netip.AddrPort
}

// String formats the reply as it travels on the wire, without the newline.
func (r Reply) String() string { return "swy-echo " + r.Name + " " + r.Peer.String() }

// ParseReply parses a reply line written by a Server.
func ParseReply(s string) (Reply, error) {
	f := strings.Fields(s)
	if len(f) != 3 || f[0] != "swy-echo" {
		return Reply{}, fmt.Errorf("not an echo reply: %q", s)
	}
	peer, err := netip.ParseAddrPort(f[2])
	if err != nil {
		return Reply{}, fmt.Errorf("echo reply %q: bad peer: %w", s, err)
	}
	return Reply{Name: f[1], Peer: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())}, nil
}

// Server answers on its TCP and UDP ports on every address of its network
// namespace, IPv4 and IPv6 alike (one dual-stack wildcard socket per
// port): a TCP client gets one reply line and then EOF, a UDP client one
// reply datagram per datagram sent.
type Server struct {
	name string
	tcp  []net.Listener
	udp  []*net.UDPConn
	wg   sync.WaitGroup
}

// Listen opens the server's sockets; Serve starts answering.
func Listen(name string, tcpPorts, udpPorts []uint16) (*Server, error) {
	if name == "" || strings.ContainsAny(name, " \t\n") {
		return nil, fmt.Errorf("echo server name %q must be one non-empty word", name)
	}
	s := &Server{name: name}
	for _, p := range tcpPorts {
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("listen tcp port %d: %w", p, err)
		}
		s.tcp = append(s.tcp, l)
	}
	for _, p := range udpPorts {
		c, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(p)})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("listen udp port %d: %w", p, err)
		}
		s.udp = append(s.udp, c)
	}
	return s, nil
}

// Serve answers requests in the background until Close.
func (s *Server) Serve() {
	for _, l := range s.tcp {
		s.wg.Add(1)
		go s.serveTCP(l)
	}
	for _, c := range s.udp {
		s.wg.Add(1)
		go s.serveUDP(c)
	}
}

func (s *Server) reply(peer netip.AddrPort) []byte {
	return []byte(Reply{Name: s.name, Peer: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())}.String() + "\n")
}

func (s *Server) serveTCP(l net.Listener) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go func() {
			defer c.Close()
			peer, err := netip.ParseAddrPort(c.RemoteAddr().String())
			if err != nil {
				return
			}
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write(s.reply(peer))
		}()
	}
}

func (s *Server) serveUDP(c *net.UDPConn) {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		_, peer, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = c.WriteToUDPAddrPort(s.reply(peer), peer)
	}
}

// Close stops the server and waits for its listeners to finish.
func (s *Server) Close() error {
	var errs []error
	for _, l := range s.tcp {
		errs = append(errs, l.Close())
	}
	for _, c := range s.udp {
		errs = append(errs, c.Close())
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// ParsePorts parses a comma-separated port list such as "80,8080"; the empty
// string is no ports.
func ParsePorts(s string) ([]uint16, error) {
	var out []uint16
	if s == "" {
		return nil, nil
	}
	for _, f := range strings.Split(s, ",") {
		var p uint16
		if _, err := fmt.Sscan(f, &p); err != nil || p == 0 {
			return nil, fmt.Errorf("bad port %q in %q", f, s)
		}
		out = append(out, p)
	}
	return out, nil
}
