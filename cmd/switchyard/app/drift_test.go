package app

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// driftBackend reports one repaired chain on every verifying sync that is
// not full, and records the Verify flag of each sync.
type driftBackend struct {
	mu     sync.Mutex
	verify []bool
}

func (d *driftBackend) Name() string { return "fake" }
func (d *driftBackend) Sync(_ context.Context, snaps []*proxier.Snapshot) (proxier.SyncResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.verify = append(d.verify, snaps[0].Verify)
	res := proxier.SyncResult{Full: snaps[0].FullSync}
	if snaps[0].Verify && !snaps[0].FullSync {
		res.Wrote, res.Repaired = true, map[string]int{"chain": 1}
	}
	return res, nil
}
func (d *driftBackend) Cleanup(context.Context) error { return nil }

// TestDaemonPeriodicSyncVerifies: the daemon passes the runner's periodic
// (verifying) syncs to the backend as Snapshot.Verify, and the repairs the
// backend reports reach switchyard_sync_drift_repairs_total.
func TestDaemonPeriodicSyncVerifies(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "objects.yaml", demoObjects)
	db := &driftBackend{}
	useBackend(t, db)
	healthz, metricsAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	logs := &syncBuffer{}
	t.Cleanup(func() {
		db.mu.Lock()
		defer db.mu.Unlock()
		if t.Failed() {
			t.Logf("verify flags %v; logs:\n%s", db.verify, logs.String())
		}
	})
	go func() {
		done <- Main(ctx, []string{"--manifests", dir, "--hostname-override", "node-a", "--sync-period", "100ms", "--min-sync-period", "50ms",
			"--healthz-bind-address", healthz, "--metrics-bind-address", metricsAddr}, io.Discard, logs)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Main did not return after cancel")
		}
	})
	eventually(t, "two periodic verifying syncs after the first", func() bool {
		db.mu.Lock()
		defer db.mu.Unlock()
		n := 0
		for _, v := range db.verify[min(1, len(db.verify)):] {
			if v {
				n++
			}
		}
		return n >= 2
	})
	eventually(t, "drift repairs in /metrics", func() bool {
		_, body := get("http://" + metricsAddr + "/metrics")
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, `switchyard_sync_drift_repairs_total{kind="chain"} `) && !strings.HasSuffix(l, " 0") {
				return true
			}
		}
		return false
	})
}
