package conntrack

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// fakeBackend records syncs and can fail.
type fakeBackend struct {
	syncs int
	fail  error
}

func (b *fakeBackend) Name() string { return "fake" }
func (b *fakeBackend) Sync(_ context.Context, _ []*proxier.Snapshot) (proxier.SyncResult, error) {
	b.syncs++
	return proxier.SyncResult{Wrote: true}, b.fail
}
func (b *fakeBackend) Cleanup(context.Context) error { return nil }

// fakeTable is an in-memory conntrack table.
type fakeTable struct {
	mu        sync.Mutex
	flows     map[proxier.IPFamily][]Flow
	dumps     int
	protocols []proxier.Protocol // of the last Delete
	fail      error
}

func (t *fakeTable) Delete(family proxier.IPFamily, protocols []proxier.Protocol, stale func(*Flow) bool) (Result, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dumps++
	t.protocols = protocols
	if t.fail != nil {
		return Result{}, t.fail
	}
	var keep []Flow
	var res Result
	for _, f := range t.flows[family] {
		if !slices.Contains(protocols, f.Protocol) {
			keep = append(keep, f)
			continue
		}
		res.Scanned++
		if stale(&f) {
			res.Deleted++
			continue
		}
		keep = append(keep, f)
	}
	t.flows[family] = keep
	return res, nil
}

func (t *fakeTable) strings(family proxier.IPFamily) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, f := range t.flows[family] {
		out = append(out, f.String())
	}
	sort.Strings(out)
	return out
}

type record struct {
	family  proxier.IPFamily
	deleted int
}

type fakeRecorder struct{ records []record }

func (r *fakeRecorder) ConntrackReconciled(family proxier.IPFamily, _ time.Duration, deleted int) {
	r.records = append(r.records, record{family, deleted})
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// flow builds a flow client → dst, DNATed to target ("" = never DNATed).
func flow(proto proxier.Protocol, client, dst, target string) Flow {
	t := ap(dst)
	if target != "" {
		t = ap(target)
	}
	return Flow{Protocol: proto, Orig: Tuple{ap(client), ap(dst)}, Reply: Tuple{t, ap(client)}}
}

func eps(addrs ...string) []proxier.Endpoint {
	var out []proxier.Endpoint
	for _, a := range addrs {
		out = append(out, proxier.Endpoint{Addr: ap(a), Ready: true, Serving: true})
	}
	return out
}

// svc builds a service port default/name:p served by endpoints.
func svc(name string, proto proxier.Protocol, clusterIP string, port, nodePort uint16, endpoints ...string) *proxier.ServicePort {
	sp := &proxier.ServicePort{
		Name:     proxier.ServicePortName{Namespace: "default", Name: name, Port: "p", Protocol: proto},
		Protocol: proto, Port: port, NodePort: nodePort,
		ClusterEndpoints: eps(endpoints...), AllEndpoints: eps(endpoints...),
	}
	if clusterIP != "" {
		sp.ClusterIP = netip.MustParseAddr(clusterIP)
	}
	return sp
}

// snapshot builds a snapshot; changed nil with full false means "nothing
// changed".
func snapshot(family proxier.IPFamily, full bool, changed []*proxier.ServicePort, sps ...*proxier.ServicePort) *proxier.Snapshot {
	s := &proxier.Snapshot{Family: family, FullSync: full, Services: sps}
	slices.SortFunc(s.Services, func(a, b *proxier.ServicePort) int {
		if a.Name.Less(b.Name) {
			return -1
		}
		if b.Name.Less(a.Name) {
			return 1
		}
		return 0
	})
	if !full {
		s.Changed = map[proxier.ServicePortName]bool{}
		for _, c := range changed {
			s.Changed[c.Name] = true
		}
	}
	return s
}

var errBoom = errors.New("boom")
