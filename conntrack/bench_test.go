package conntrack

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// fill creates udp UDP and tcp TCP entries in namespace ns over netlink:
// clients of 10.0.x.y sending to 1000 service IPs, each DNATed to a
// serving endpoint.
func fill(b *testing.B, ns string, udp, tcp int) {
	b.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h, unix.NETLINK_NETFILTER)
	if err != nil {
		b.Fatal(err)
	}
	defer nh.Close()
	for i := 0; i < udp+tcp; i++ {
		client := net.IPv4(10, 0, byte(i>>8), byte(i)).To4()
		svc := net.IPv4(10, 96, byte((i%1000)>>8), byte(i%1000)).To4()
		ep := net.IPv4(10, 244, byte((i%1000)>>8), byte(i%1000)).To4()
		sport := uint16(10000 + i>>16)
		f := &netlink.ConntrackFlow{
			FamilyType: unix.AF_INET,
			Forward:    netlink.IPTuple{Protocol: unix.IPPROTO_UDP, SrcIP: client, DstIP: svc, SrcPort: sport, DstPort: 53},
			Reverse:    netlink.IPTuple{Protocol: unix.IPPROTO_UDP, SrcIP: ep, DstIP: client, SrcPort: 53, DstPort: sport},
			TimeOut:    600,
		}
		if i >= udp {
			f.Forward.Protocol, f.Reverse.Protocol = unix.IPPROTO_TCP, unix.IPPROTO_TCP
			f.ProtoInfo = &netlink.ProtoInfoTCP{State: 3} // ESTABLISHED
		}
		if err := nh.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
			b.Fatalf("create entry %d: %v", i, err)
		}
	}
}

// BenchmarkReconcile measures one reconcile (dump, parse, match; nothing
// stale) of a real table against 1000 UDP services: the cost a sync that
// changed a UDP service port pays. The kernel filters the dump by
// protocol, so TCP entries cost only the kernel's walk; "unfiltered" is
// the fallback for kernels before 5.8.
//
//	go test -run XXX -bench Reconcile -benchtime 5x -benchmem ./conntrack/
func BenchmarkReconcile(b *testing.B) {
	for _, c := range []struct {
		udp, tcp   int
		unfiltered bool
	}{{10000, 0, false}, {100000, 0, false}, {10000, 90000, false}, {10000, 90000, true}} {
		name := fmt.Sprintf("udp=%d,tcp=%d", c.udp, c.tcp)
		if c.unfiltered {
			name += ",unfiltered"
		}
		b.Run(name, func(b *testing.B) {
			n := c.udp
			if c.unfiltered {
				n += c.tcp
			}
			ns := benchNetns(b)
			fill(b, ns, c.udp, c.tcp)
			var sps []*proxier.ServicePort
			for i := 0; i < 1000; i++ {
				ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
				ep := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
				sps = append(sps, svc(fmt.Sprintf("s%04d", i), UDP, ip.String(), 53, 0, netip.AddrPortFrom(ep, 53).String()))
			}
			x := newIndex(snapshot(proxier.IPv4, true, nil, sps...), nil)
			table, err := NewNetlinkTableAt(ns)
			if err != nil {
				b.Fatal(err)
			}
			defer table.Close()
			table.noFilter.Store(c.unfiltered)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				res, err := table.Delete(proxier.IPv4, x.protocols(), x.stale)
				if err != nil || res.Deleted != 0 || res.Scanned != n {
					b.Fatalf("%+v, %v", res, err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N)/float64(c.udp+c.tcp), "ns/entry")
		})
	}
}

func benchNetns(b *testing.B) string {
	b.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		b.Skip("needs ip")
	}
	name := fmt.Sprintf("swy-ctb-%d", time.Now().UnixNano()%1e9)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		b.Skipf("ip netns add (needs root): %v: %s", err, out)
	}
	b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name
}
