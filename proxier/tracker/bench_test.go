package tracker

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/switchyard-proxy/switchyard/proxier/planner"
)

// benchObjects returns n services with 10 endpoints each.
func benchObjects(n int) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	svcs := make([]*corev1.Service, n)
	slices := make([]*discoveryv1.EndpointSlice, n)
	for i := range svcs {
		svcs[i] = service(i)
		slices[i] = endpointSlice(i, 10, 0)
	}
	return svcs, slices
}

// BenchmarkFullPlan plans every service from scratch (planner.Plan).
func BenchmarkFullPlan(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			svcs, slices := benchObjects(n)
			cfg := planner.Config{Node: resolver("10.0.0.10")(nil)}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				snaps, _ := planner.Plan(planner.Objects{Services: svcs, Slices: slices}, cfg)
				if len(snaps[0].Services) != n {
					b.Fatalf("planned %d", len(snaps[0].Services))
				}
			}
		})
	}
}

// BenchmarkOneServiceChange measures the tracker's incremental plan after
// one EndpointSlice changed, with n services loaded.
func BenchmarkOneServiceChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			svcs, slices := benchObjects(n)
			tr := New(Options{ResolveNode: resolver("10.0.0.10")})
			for i := range svcs {
				tr.OnService(svcs[i], false)
				tr.OnEndpointSlice(slices[i], false)
			}
			tr.Plan(true)
			alt := []*discoveryv1.EndpointSlice{endpointSlice(n/2, 10, 1), endpointSlice(n/2, 10, 2)}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tr.OnEndpointSlice(alt[i%2], false)
				res := tr.Plan(false)
				if len(res.Snapshots[0].Changed) != 1 {
					b.Fatalf("changed %d", len(res.Snapshots[0].Changed))
				}
			}
		})
	}
}
