package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/nftables"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/nfttrace"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// TestTracerNFTables runs every scenario's packets through the tables the
// nftables backend writes (synced into knftables fakes, which check every
// reference) with the nft tracer.
//
//	go test -run TestTracerNFTables ./test/conformance/
func TestTracerNFTables(t *testing.T) {
	runTracerExempt(t, nftablesMode{}, nil, nil)
}

// nftablesMode syncs the snapshots with the real backend into knftables
// fakes and traces with nfttrace.
type nftablesMode struct{}

func (nftablesMode) Name() string { return "nftables" }

func (nftablesMode) Load(snaps []*proxier.Snapshot) (Tracer, error) {
	fakes := map[proxier.IPFamily]*knftables.Fake{
		proxier.IPv4: knftables.NewFake(knftables.IPv4Family, nftables.TableName),
		proxier.IPv6: knftables.NewFake(knftables.IPv6Family, nftables.TableName),
	}
	b, err := nftables.New(nftables.Config{Logger: quietLogger(), NewInterface: func(f proxier.IPFamily) (knftables.Interface, error) {
		return fakes[f], nil
	}})
	if err != nil {
		return nil, err
	}
	if _, err := b.Sync(context.Background(), snaps); err != nil {
		return nil, fmt.Errorf("sync into fakes: %w", err)
	}
	return &nftablesTracer{fakes: fakes}, nil
}

type nftablesTracer struct {
	fakes map[proxier.IPFamily]*knftables.Fake
}

func (t *nftablesTracer) Trace(p scenarios.Packet, src netip.Addr) (*Trace, error) {
	pkt := nfttrace.Packet{Src: src, Dst: p.Dst.Addr(), Proto: p.Proto.Lower(), DstPort: p.Dst.Port()}
	switch p.Origin {
	case scenarios.FromPod:
		pkt.Origin, pkt.InIface = nfttrace.FromPod, "pod0"
	case scenarios.FromNode:
		pkt.Origin = nfttrace.FromNode
	case scenarios.FromOutside:
		pkt.Origin, pkt.InIface = nfttrace.FromOutside, "ext0"
	default:
		return nil, fmt.Errorf("unknown origin %q", p.Origin)
	}
	fake := t.fakes[proxier.FamilyOf(p.Dst.Addr())]
	res, err := nfttrace.Trace(fake.Table, nfttrace.Node{LocalAddrs: scenarios.Topology.NodeAddrs}, pkt)
	if err != nil {
		return nil, err
	}
	out := &Trace{Affinity: res.AffinityRules}
	for _, o := range res.Outcomes {
		c := Outcome{Endpoint: o.DNAT, Masqueraded: o.Masqueraded, Detail: strings.Join(o.Path, " > ")}
		switch o.Verdict {
		case nfttrace.Accept:
			c.Verdict = Delivered
		case nfttrace.Drop:
			c.Verdict = Dropped
		case nfttrace.Reject:
			c.Verdict = Refused
		}
		out.Outcomes = append(out.Outcomes, c)
	}
	return out, nil
}

// Rules returns the traced tables, for failure messages.
func (t *nftablesTracer) Rules() string {
	return t.fakes[proxier.IPv4].Dump() + t.fakes[proxier.IPv6].Dump()
}
