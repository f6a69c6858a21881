package iptables

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// benchServices is the number of services the benchmarks use: 10000, or
// SWY_BENCH_SERVICES for a quicker run.
func benchServices() int {
	if n, err := strconv.Atoi(os.Getenv("SWY_BENCH_SERVICES")); err == nil && n > 0 {
		return n
	}
	return 10000
}

// BenchmarkRender renders 10k services x 10 endpoints.
func BenchmarkRender(b *testing.B) {
	s := bigSnapshot(benchServices(), 10)
	snaps := []*proxier.Snapshot{s}
	var n int
	b.ReportAllocs()
	for b.Loop() {
		text, err := Render(snaps)
		if err != nil {
			b.Fatal(err)
		}
		n = len(text)
	}
	b.ReportMetric(float64(n), "restore-bytes")
}

// BenchmarkApply applies 10k services x 10 endpoints into a fresh network
// namespace with iptables-nft: a full sync, then a one-service partial sync.
func BenchmarkApply(b *testing.B) {
	requireRoot(b)
	ctx := context.Background()
	s := bigSnapshot(benchServices(), 10)
	for _, m := range []Mode{ModeNFT, ModeLegacy} {
		b.Run(string(m), func(b *testing.B) {
			var full, partial proxier.SyncResult
			for b.Loop() {
				b.StopTimer()
				ns := newNetns(b, "swy-ipt-")
				be, err := New(Config{Mode: m, Executor: NetnsExecutor(ns), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				full, err = be.Sync(ctx, []*proxier.Snapshot{s})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				// One service loses an endpoint.
				c := *s
				c.Services = append([]*proxier.ServicePort(nil), s.Services...)
				sp := *c.Services[5]
				sp.AllEndpoints = sp.AllEndpoints[1:]
				resolve(&sp)
				c.Services[5] = &sp
				c.FullSync = false
				c.Changed = map[proxier.ServicePortName]bool{sp.Name: true}
				partial, err = be.Sync(ctx, []*proxier.Snapshot{&c})
				if err != nil || partial.Full {
					b.Fatalf("partial sync: %+v %v", partial, err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(full.Bytes), "full-bytes")
			b.ReportMetric(float64(full.Rules), "full-rules")
			b.ReportMetric(float64(partial.Bytes), "partial-bytes")
		})
	}
}

// BenchmarkVerify measures the drift check of a periodic sync (one
// iptables-save per table, every SWY- chain fingerprinted and compared;
// nothing drifted, so nothing is written) at 10k services x 10 endpoints,
// against the first full sync of the same rules in the same namespace.
func BenchmarkVerify(b *testing.B) {
	requireRoot(b)
	ctx := context.Background()
	s := bigSnapshot(benchServices(), 10)
	for _, m := range []Mode{ModeNFT, ModeLegacy} {
		b.Run(string(m), func(b *testing.B) {
			ns := newNetns(b, "swy-ipt-")
			be, err := New(Config{Mode: m, Executor: NetnsExecutor(ns), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if _, err := be.Sync(ctx, []*proxier.Snapshot{s}); err != nil {
				b.Fatal(err)
			}
			full := time.Since(start)
			v := []*proxier.Snapshot{verify(s)}
			b.ResetTimer()
			for b.Loop() {
				res, err := be.Sync(ctx, v)
				if err != nil || res.Wrote {
					b.Fatalf("verifying sync: %+v %v", res, err)
				}
			}
			per := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(full.Seconds(), "full-sync-s")
			b.ReportMetric(per, "verify-s")
			b.ReportMetric(per/full.Seconds(), "verify/full")
		})
	}
}

// BenchmarkSums is the CPU a full sync spends fingerprinting what it
// writes (iptexec.SumBody of every chain), at 10k services x 10 endpoints.
func BenchmarkSums(b *testing.B) {
	r, err := newRenderer(bigSnapshot(benchServices(), 10))
	if err != nil {
		b.Fatal(err)
	}
	svcs := r.renderAll()
	fixed := r.fixedChains(svcs)
	for b.Loop() {
		for i := range fixed {
			iptexec.SumBody(fixed[i].body)
		}
		for _, s := range svcs {
			for i := range s.chains {
				iptexec.SumBody(s.chains[i].body)
			}
		}
	}
}
