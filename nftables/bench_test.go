package nftables

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Benchmarks on the real kernel (root), each measurement in a fresh
// swy-nft- namespace:
//
//	go test ./nftables -run XXX -bench . -benchtime 3x
//
// FullSync is the backend's first sync of N services × 10 endpoints (every
// tenth with a node port); PlainNFT is `nft -f` of Render's text for the
// same snapshot (what nft and the kernel alone cost); OneEndpointChange is a
// partial sync moving one endpoint of one service.

var benchSizes = []int{1000, 10000}

func benchRoot(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		b.Skip("no nft")
	}
}

func BenchmarkFullSync(b *testing.B) {
	benchRoot(b)
	for _, n := range benchSizes {
		snap := bigSnapshot(n, 10)
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				ns := kernelNS(b)
				be := kernelBackend(b, ns)
				b.StartTimer()
				if _, err := be.Sync(context.Background(), []*proxier.Snapshot{snap}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPlainNFT(b *testing.B) {
	benchRoot(b)
	for _, n := range benchSizes {
		text, err := Render([]*proxier.Snapshot{bigSnapshot(n, 10)})
		if err != nil {
			b.Fatal(err)
		}
		file := filepath.Join(b.TempDir(), "rules.nft")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			b.ReportMetric(float64(len(text)), "bytes")
			b.ReportMetric(float64(strings.Count(text, "\n")), "lines")
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				ns := kernelNS(b)
				b.StartTimer()
				if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-f", file).CombinedOutput(); err != nil {
					b.Fatalf("nft -f: %v\n%s", err, out)
				}
			}
		})
	}
}

func BenchmarkOneEndpointChange(b *testing.B) {
	benchRoot(b)
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			snap := bigSnapshot(n, 10)
			ns := kernelNS(b)
			be := kernelBackend(b, ns)
			if _, err := be.Sync(context.Background(), []*proxier.Snapshot{snap}); err != nil {
				b.Fatal(err)
			}
			sp := snap.Services[n/2]
			orig := sp.AllEndpoints[9]
			var times []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if i%2 == 0 {
					sp.AllEndpoints[9] = ep(fmt.Sprintf("10.250.%d.%d:8080", i>>8&255, i&255), false)
				} else {
					sp.AllEndpoints[9] = orig
				}
				resolve(sp)
				next := partial(snap, sp.Name)
				b.StartTimer()
				start := time.Now()
				res, err := be.Sync(context.Background(), []*proxier.Snapshot{next})
				times = append(times, time.Since(start))
				if err != nil || res.Full || !res.Wrote {
					b.Fatalf("partial sync: %+v %v", res, err)
				}
			}
			slices.Sort(times)
			b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(times[(len(times)*99)/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// nullNFT accepts every transaction without doing anything: it measures
// the backend's own (Go) cost of a sync.
type nullNFT struct{ knftables.Interface }

func (nullNFT) NewTransaction() *knftables.Transaction {
	return knftables.NewFake(knftables.IPv4Family, TableName).NewTransaction()
}
func (nullNFT) Run(context.Context, *knftables.Transaction) error { return nil }
func (nullNFT) ListAll(context.Context) (map[string][]string, error) {
	return map[string][]string{}, nil
}

// BenchmarkOneEndpointChangeGo is BenchmarkOneEndpointChange without the
// kernel: what the backend itself spends (render, diff, transaction text).
//
//	go test ./nftables -run XXX -bench OneEndpointChangeGo
func BenchmarkOneEndpointChangeGo(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			snap := bigSnapshot(n, 10)
			be, err := New(Config{Logger: quietLogger(), NewInterface: func(proxier.IPFamily) (knftables.Interface, error) { return nullNFT{}, nil }})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := be.Sync(context.Background(), []*proxier.Snapshot{snap}); err != nil {
				b.Fatal(err)
			}
			sp := snap.Services[n/2]
			orig := sp.AllEndpoints[9]
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if i%2 == 0 {
					sp.AllEndpoints[9] = ep(fmt.Sprintf("10.250.%d.%d:8080", i>>8&255, i&255), false)
				} else {
					sp.AllEndpoints[9] = orig
				}
				resolve(sp)
				next := partial(snap, sp.Name)
				b.StartTimer()
				if _, err := be.Sync(context.Background(), []*proxier.Snapshot{next}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifyIdle is a verifying sync that finds nothing to repair
// (the periodic check): one table listing, one terse rule listing, one
// listing per fixed map or set.
//
//	go test ./nftables -run XXX -bench VerifyIdle -benchtime 3x
func BenchmarkVerifyIdle(b *testing.B) {
	benchRoot(b)
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			snap := bigSnapshot(n, 10)
			ns := kernelNS(b)
			be := kernelBackend(b, ns)
			if _, err := be.Sync(context.Background(), []*proxier.Snapshot{snap}); err != nil {
				b.Fatal(err)
			}
			v := verifying([]*proxier.Snapshot{snap})
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := be.Sync(context.Background(), v)
				if err != nil || res.Wrote {
					b.Fatalf("idle verify: %+v %v", res, err)
				}
			}
		})
	}
}
