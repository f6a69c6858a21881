package iptables

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// inNetns runs fn on a locked OS thread switched into namespace name.
// Sockets created by fn stay in that namespace.
func inNetns(t *testing.T, name string, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked (and so discarded) on purpose: it may
		// not be returned to the pool in another namespace.
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(name)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// trafficLab is a node namespace with two pod namespaces on veth pairs
// (10.244.1.5 and 10.244.2.5), each answering TCP on port 8080 with its
// address and the client's.
type trafficLab struct {
	t    *testing.T
	node string
}

func newTrafficLab(t *testing.T) *trafficLab {
	t.Helper()
	node := newNetns(t, "swy-ipt-")
	pods := []struct{ ns, nodeSide, nodeIP, podIP string }{
		{newNetns(t, "swy-ipt-"), "swyp1", "10.244.1.1/24", "10.244.1.5"},
		{newNetns(t, "swy-ipt-"), "swyp2", "10.244.2.1/24", "10.244.2.5"},
	}
	ipCmd(t, "-n", node, "link", "set", "lo", "up")
	for _, p := range pods {
		// The veth pair lives and dies with the namespaces.
		ipCmd(t, "-n", node, "link", "add", p.nodeSide, "type", "veth", "peer", "name", "eth0", "netns", p.ns)
		ipCmd(t, "-n", node, "addr", "add", p.nodeIP, "dev", p.nodeSide)
		ipCmd(t, "-n", node, "link", "set", p.nodeSide, "up")
		ipCmd(t, "-n", p.ns, "link", "set", "lo", "up")
		ipCmd(t, "-n", p.ns, "addr", "add", p.podIP+"/24", "dev", "eth0")
		ipCmd(t, "-n", p.ns, "link", "set", "eth0", "up")
		ipCmd(t, "-n", p.ns, "route", "add", "default", "via", strings.Split(p.nodeIP, "/")[0])
	}
	ipCmd(t, "-n", node, "route", "add", "10.96.0.0/16", "dev", pods[0].nodeSide)

	for _, p := range pods {
		var ln net.Listener
		if err := inNetns(t, p.ns, func() (err error) {
			ln, err = net.Listen("tcp", p.podIP+":8080")
			return err
		}); err != nil {
			t.Fatalf("listen in %s: %v", p.ns, err)
		}
		t.Cleanup(func() { ln.Close() })
		name := p.podIP
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, name+" "+c.RemoteAddr().String()+"\n")
				c.Close()
			}
		}()
	}
	return &trafficLab{t: t, node: node}
}

// dial connects from the node namespace and returns the reply.
func (l *trafficLab) dial(addr string) (string, error) {
	var reply string
	err := inNetns(l.t, l.node, func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		buf, err := io.ReadAll(c)
		reply = string(buf)
		return err
	})
	return reply, err
}

// TestKernelTraffic sends real TCP connections from a node namespace to a
// cluster IP served by two pod namespaces on veth pairs.
func TestKernelTraffic(t *testing.T) {
	requireRoot(t)
	lab := newTrafficLab(t)
	node, dial := lab.node, lab.dial
	s := snapshot(proxier.IPv4,
		svc("default", "web", "http", proxier.TCP, "10.96.0.10", 80, ep("10.244.1.5:8080", true), ep("10.244.2.5:8080", false)),
		svc("default", "empty", "http", proxier.TCP, "10.96.0.20", 80),
	)
	b, err := New(Config{Mode: ModeNFT, Executor: NetnsExecutor(node), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Sync(context.Background(), []*proxier.Snapshot{s}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Cleanup(context.Background()) })

	seen := map[string]int{}
	for i := 0; i < 40; i++ {
		reply, err := dial("10.96.0.10:80")
		if err != nil {
			t.Fatalf("connect to cluster IP: %v", err)
		}
		f := strings.Fields(reply)
		if len(f) != 2 {
			t.Fatalf("reply %q", reply)
		}
		seen[f[0]]++
	}
	if seen["10.244.1.5"] == 0 || seen["10.244.2.5"] == 0 {
		t.Errorf("connections were not spread over both pods: %v", seen)
	}
	t.Logf("spread over pods: %v", seen)

	// REJECT answers at once: a DROP would end in a timeout instead.
	_, err = dial("10.96.0.20:80")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("service without endpoints: got %v, want connection refused", err)
	}
}
