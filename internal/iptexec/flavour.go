package iptexec

import (
	"bytes"
	"context"
	"fmt"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Mode selects which iptables implementation (flavour) is driven.
type Mode string

const (
	// ModeAuto picks the implementation kubelet's hint chain names, else
	// the one that already holds more rules on this node (nft on a tie),
	// like kube-proxy's iptables-wrapper (see Detect).
	ModeAuto Mode = "auto"
	// ModeNFT uses iptables-nft (the nf_tables kernel API).
	ModeNFT Mode = "nft"
	// ModeLegacy uses iptables-legacy (the x_tables kernel API).
	ModeLegacy Mode = "legacy"
)

// Tools names the three binaries of one flavour and family. They are
// always called by their flavoured names (iptables-nft-restore, ...).
type Tools struct {
	IPTables, Save, Restore string
	// NFT is true for the iptables-nft flavour.
	NFT bool
}

// ToolsFor returns the binaries of flavour m (ModeNFT or ModeLegacy) for
// family f.
func ToolsFor(m Mode, f proxier.IPFamily) Tools {
	base := "iptables"
	if f == proxier.IPv6 {
		base = "ip6tables"
	}
	base += "-" + string(m)
	return Tools{IPTables: base, Save: base + "-save", Restore: base + "-restore", NFT: m == ModeNFT}
}

// kubeletHints are the chains kubelet creates in the mangle table of the
// iptables flavour it uses (KUBE-IPTABLES-HINT; KUBE-KUBELET-CANARY in
// older kubelets): the host's own statement of its flavour.
var kubeletHints = [][]byte{[]byte(":KUBE-IPTABLES-HINT "), []byte(":KUBE-KUBELET-CANARY ")}

// scan runs the save tool of mode m for both families and counts rule
// lines; hint reports a kubelet hint chain. rules is -1 when neither tool
// could run.
func scan(ctx context.Context, ex Executor, m Mode) (rules int, hint bool) {
	ran := false
	for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
		out, _, err := ex.Run(ctx, nil, ToolsFor(m, f).Save)
		if err != nil {
			continue
		}
		ran = true
		for _, line := range bytes.Split(out, []byte("\n")) {
			if bytes.HasPrefix(line, []byte("-A ")) {
				rules++
			}
			for _, h := range kubeletHints {
				hint = hint || bytes.HasPrefix(line, h)
			}
		}
	}
	if !ran {
		return -1, false
	}
	return rules, hint
}

// Detect resolves ModeAuto as kube-proxy's iptables-wrapper does: the
// flavour holding kubelet's hint chain (nft looked at first); otherwise the
// flavour holding more rules (both families) wins, nft on a tie; a flavour
// whose tools do not run loses.
func Detect(ctx context.Context, ex Executor) (Mode, error) {
	legacy, legacyHint := scan(ctx, ex, ModeLegacy)
	nft, nftHint := scan(ctx, ex, ModeNFT)
	switch {
	case legacy < 0 && nft < 0:
		return "", fmt.Errorf("neither iptables-nft-save nor iptables-legacy-save runs")
	case nftHint:
		return ModeNFT, nil
	case legacyHint:
		return ModeLegacy, nil
	case legacy > nft:
		return ModeLegacy, nil
	default:
		return ModeNFT, nil
	}
}
