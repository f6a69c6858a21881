package lab

import (
	"net/netip"
	"testing"
)

// BenchmarkLab measures building and tearing down a lab (no echo servers,
// so only the namespaces, links, addresses, routes and sysctls count):
// the IPv4 lab and the dual-stack one, each with two pods. Compare runs
// as ratios (benchstat); under emulation (test/vm) every process the lab
// starts costs seconds.
func BenchmarkLab(b *testing.B) {
	RequireRoot(b)
	pods := func(v6 bool) []Pod {
		ps := []Pod{
			{Name: "bench-a", IP: netip.MustParseAddr("10.244.0.2"), NoEcho: true},
			{Name: "bench-b", IP: netip.MustParseAddr("10.244.0.3"), NoEcho: true},
		}
		if v6 {
			ps[0].IPv6 = netip.MustParseAddr("fd00:10:244::2")
			ps[1].IPv6 = netip.MustParseAddr("fd00:10:244::3")
		}
		return ps
	}
	for _, c := range []struct {
		name string
		spec Spec
	}{
		{"ipv4", Spec{Pods: pods(false)}},
		{"dualstack", Spec{Pods: pods(true)}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				l := New(b, c.spec)
				l.cleanup()
			}
		})
	}
}
