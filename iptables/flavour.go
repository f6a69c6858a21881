package iptables

import (
	"bytes"
	"context"
	"fmt"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Mode selects which iptables implementation the backend drives.
type Mode string

const (
	// ModeAuto picks the implementation that already holds more rules on
	// this node (nft on a tie), like kube-proxy's iptables-wrapper.
	ModeAuto Mode = "auto"
	// ModeNFT uses iptables-nft (the nf_tables kernel API).
	ModeNFT Mode = "nft"
	// ModeLegacy uses iptables-legacy (the x_tables kernel API).
	ModeLegacy Mode = "legacy"
)

// tools names the three binaries of one flavour and family.
type tools struct {
	iptables, save, restore string
	// nft is true for the iptables-nft flavour.
	nft bool
}

func toolsFor(m Mode, f proxier.IPFamily) tools {
	base := "iptables"
	if f == proxier.IPv6 {
		base = "ip6tables"
	}
	base += "-" + string(m)
	return tools{iptables: base, save: base + "-save", restore: base + "-restore", nft: m == ModeNFT}
}

// countRules runs the save tool of mode m for both families and counts rule
// lines. It returns -1 when neither tool could run.
func countRules(ctx context.Context, ex Executor, m Mode) int {
	n, ran := 0, false
	for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
		out, _, err := ex.Run(ctx, nil, toolsFor(m, f).save)
		if err != nil {
			continue
		}
		ran = true
		for _, line := range bytes.Split(out, []byte("\n")) {
			if bytes.HasPrefix(line, []byte("-A ")) {
				n++
			}
		}
	}
	if !ran {
		return -1
	}
	return n
}

// detectMode resolves ModeAuto: the flavour holding more rules wins, nft on
// a tie; a flavour whose tools do not run loses.
func detectMode(ctx context.Context, ex Executor) (Mode, error) {
	legacy := countRules(ctx, ex, ModeLegacy)
	nft := countRules(ctx, ex, ModeNFT)
	switch {
	case legacy < 0 && nft < 0:
		return "", fmt.Errorf("neither iptables-nft-save nor iptables-legacy-save runs")
	case legacy > nft:
		return ModeLegacy, nil
	default:
		return ModeNFT, nil
	}
}
