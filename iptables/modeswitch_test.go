package iptables

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// ipvsModeRules imitate what switchyard's IPVS mode leaves in a node that
// switches to the iptables mode: SWY-IPVS- chains hooked from built-in
// chains.
const ipvsModeRules = `*nat
:SWY-IPVS-SERVICES - [0:0]
:SWY-IPVS-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment "switchyard ipvs service portals" -j SWY-IPVS-SERVICES
-A OUTPUT -m comment --comment "switchyard ipvs service portals" -j SWY-IPVS-SERVICES
-A POSTROUTING -j SWY-IPVS-POSTROUTING
-A SWY-IPVS-SERVICES -d 10.96.0.1/32 -j ACCEPT
COMMIT
*filter
:SWY-IPVS-FORWARD - [0:0]
-A FORWARD -j SWY-IPVS-FORWARD
COMMIT
`

// The iptables mode neither lists nor deletes nor unhooks the IPVS mode's
// chains: its syncs succeed while they exist (no "chain busy" from trying
// to delete a referenced chain) and its Cleanup leaves them to the IPVS
// mode's own Cleanup, which a node switching modes runs.
func TestParseSaveIgnoresIPVSModeChains(t *testing.T) {
	st := thisMode(iptexec.ParseSave([]byte(ipvsModeRules+"*nat\n:SWY-SERVICES - [0:0]\n-A PREROUTING -j SWY-SERVICES\nCOMMIT\n"), ChainPrefix))
	if strings.Join(st.Own, " ") != "SWY-SERVICES" {
		t.Errorf("own chains %v, want only SWY-SERVICES", st.Own)
	}
	if len(st.ForeignJumps) != 1 || !strings.HasSuffix(st.ForeignJumps[0], "-j SWY-SERVICES") {
		t.Errorf("jumps %v, want only the one to SWY-SERVICES", st.ForeignJumps)
	}
}

func TestKernelIPVSModeChainsUntouched(t *testing.T) {
	requireRoot(t)
	for _, m := range flavours(t) {
		t.Run(string(m), func(t *testing.T) {
			ns := newNetns(t, "swy-ipt-")
			ex := NetnsExecutor(ns)
			ctx := context.Background()
			if _, stderr, err := ex.Run(ctx, []byte(ipvsModeRules), toolsFor(m, proxier.IPv4).Restore); err != nil {
				t.Fatalf("load IPVS-mode rules: %v: %s", err, stderr)
			}
			ipvsPart := func() string {
				var keep []string
				for _, l := range strings.Split(saveAll(t, ex, m, proxier.IPv4), "\n") {
					if strings.Contains(l, "SWY-IPVS-") {
						keep = append(keep, l)
					}
				}
				return strings.Join(keep, "\n")
			}
			before := ipvsPart()
			b, err := New(Config{Mode: m, Executor: ex, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 2; i++ {
				if _, err := b.Sync(ctx, goldenCases()["external"]); err != nil {
					t.Fatalf("sync %d next to IPVS-mode chains: %v", i, err)
				}
			}
			if err := b.Cleanup(ctx); err != nil {
				t.Fatalf("cleanup: %v", err)
			}
			if after := ipvsPart(); after != before {
				t.Errorf("IPVS-mode rules changed:\nbefore\n%s\nafter\n%s", before, after)
			}
			for table, chains := range ownChains(saveAll(t, ex, m, proxier.IPv4)) {
				for _, c := range chains {
					if !strings.HasPrefix(c, otherModePrefix) {
						t.Errorf("iptables-mode chain %s/%s left after cleanup", table, c)
					}
				}
			}
		})
	}
}
