package lab

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/switchyard-proxy/switchyard/test/echo"
)

// InNS runs fn on an OS thread inside the named network namespace. Sockets
// fn creates stay in that namespace.
func InNS(ns string, fn func() error) error {
	return InNSPath(filepath.Join("/run/netns", ns), fn)
}

// InNSPath runs fn on an OS thread inside the network namespace at path (a
// /run/netns file or a process's /proc/PID/ns/net). Sockets fn creates stay
// in that namespace; /proc/sys/net reads and writes apply to it.
func InNSPath(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", path, err)
	}
	defer target.Close()
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := netns.Set(target); err != nil {
			ch <- fmt.Errorf("enter namespace %s: %w", path, err)
			return
		}
		ch <- fn()
	}()
	return <-ch
}

// Conn is an open TCP connection to a line server (see StartLineServer):
// a long-lived flow that tests keep using across proxy changes.
type Conn struct {
	c net.Conn
	r *bufio.Reader
}

// DialConn opens a TCP connection from namespace ns to addr.
func DialConn(ns string, addr netip.AddrPort) (*Conn, error) {
	var c net.Conn
	err := InNS(ns, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 3 * time.Second}).Dial("tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", addr, ns, err)
	}
	return &Conn{c: c, r: bufio.NewReader(c)}, nil
}

// Ask sends one line and returns the name of the server that answered.
func (c *Conn) Ask() (string, error) {
	if err := c.c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		return "", err
	}
	if _, err := c.c.Write([]byte("ping\n")); err != nil {
		return "", fmt.Errorf("send: %w", err)
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read: %w", err)
	}
	r, err := echo.ParseReply(line)
	if err != nil {
		return "", err
	}
	return r.Name, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// CloseRST closes the connection with a TCP reset (SO_LINGER 0).
func (c *Conn) CloseRST() error {
	if tc, ok := c.c.(*net.TCPConn); ok {
		if err := tc.SetLinger(0); err != nil {
			return err
		}
	}
	return c.Close()
}

// StartLineServer serves TCP port in namespace ns until the test ends:
// each connection stays open and gets one echo reply line per line it
// sends (the echo package's server closes after one reply).
func StartLineServer(t testing.TB, ns, name string, port uint16) {
	t.Helper()
	var ln net.Listener
	err := InNS(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("line server %s: %v", name, err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				peer, _ := netip.ParseAddrPort(c.RemoteAddr().String())
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					reply := echo.Reply{Name: name, Peer: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())}
					if _, err := c.Write([]byte(reply.String() + "\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}
