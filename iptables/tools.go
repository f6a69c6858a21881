package iptables

import (
	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// Mode selects which iptables implementation the backend drives.
type Mode = iptexec.Mode

// The flavours (see internal/iptexec).
const (
	// ModeAuto picks the implementation kubelet's hint chain names, else
	// the one that already holds more rules on this node (nft on a tie),
	// like kube-proxy's iptables-wrapper.
	ModeAuto = iptexec.ModeAuto
	// ModeNFT uses iptables-nft (the nf_tables kernel API).
	ModeNFT = iptexec.ModeNFT
	// ModeLegacy uses iptables-legacy (the x_tables kernel API).
	ModeLegacy = iptexec.ModeLegacy
)

// Executor runs one command (see iptexec.Executor); tests run everything
// inside a network namespace with NetnsExecutor.
type Executor = iptexec.Executor

// CommandExecutor runs commands on this machine with os/exec.
type CommandExecutor = iptexec.CommandExecutor

// RestoreError is returned when iptables-restore rejects its input.
type RestoreError = iptexec.RestoreError

// NetnsExecutor returns an Executor that runs every command inside the
// named network namespace (`ip netns exec NAME ...`).
func NetnsExecutor(name string) *CommandExecutor { return iptexec.NetnsExecutor(name) }

// tools names the binaries of one flavour and family.
type tools = iptexec.Tools

func toolsFor(m Mode, f proxier.IPFamily) tools { return iptexec.ToolsFor(m, f) }
