// Package kubeproxyclean removes what upstream kube-proxy leaves on a node
// (any mode: iptables, ipvs, nftables) so switchyard can take the node
// over: kube-proxy's iptables chains and the rules jumping to them (both
// flavours, both families), its nftables `kube-proxy` tables, its IPVS
// virtual servers and kube-ipvs0, and its ipsets. It never touches the
// chains kubelet owns (KUBE-FIREWALL, KUBE-KUBELET-CANARY,
// KUBE-IPTABLES-HINT, KUBE-MARK-DROP) nor anything of switchyard's.
//
// Callers run it only after switchyard's own rules are in place (the
// daemon does it after its first successful sync), so the node is never
// without service rules.
package kubeproxyclean

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// IPVSLink is the dummy interface kube-proxy's IPVS mode binds service
// addresses to.
const IPVSLink = "kube-ipvs0"

// kubeletChains are KUBE- chains kubelet creates; they are never removed.
var kubeletChains = map[string]bool{
	"KUBE-FIREWALL": true, "KUBE-KUBELET-CANARY": true,
	"KUBE-IPTABLES-HINT": true, "KUBE-MARK-DROP": true,
}

// fixedChains are kube-proxy's chains with fixed names (iptables and ipvs
// modes, upstream's CleanupLeftovers lists).
var fixedChains = map[string]bool{
	"KUBE-SERVICES": true, "KUBE-EXTERNAL-SERVICES": true, "KUBE-NODEPORTS": true,
	"KUBE-POSTROUTING": true, "KUBE-MARK-MASQ": true, "KUBE-FORWARD": true,
	"KUBE-PROXY-FIREWALL": true, "KUBE-PROXY-CANARY": true,
	"KUBE-SOURCE-RANGES-FIREWALL": true, "KUBE-NODE-PORT": true, "KUBE-LOAD-BALANCER": true,
}

// chainPrefixes are the prefixes of kube-proxy's per-service chains
// (KUBE-XLB- is the name before v1.24) and of the ipvs mode's chains.
var chainPrefixes = []string{"KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-", "KUBE-IPVS-", "KUBE-LOAD-BALANCER"}

// IsKubeProxyChain reports whether an iptables chain name is kube-proxy's.
func IsKubeProxyChain(name string) bool {
	if kubeletChains[name] {
		return false
	}
	if fixedChains[name] {
		return true
	}
	for _, p := range chainPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// kubeProxySets are the ipsets of kube-proxy's IPVS mode (upstream's
// ipset.go; the IPv6 ones are named KUBE-6-...). An exact list, not a
// prefix: other agents name sets KUBE-... too (kube-router's network
// policy sets are KUBE-SRC-..., KUBE-DST-...).
var kubeProxySets = map[string]bool{
	"KUBE-LOOP-BACK": true, "KUBE-CLUSTER-IP": true, "KUBE-EXTERNAL-IP": true, "KUBE-EXTERNAL-IP-LOCAL": true,
	"KUBE-LOAD-BALANCER": true, "KUBE-LOAD-BALANCER-LOCAL": true, "KUBE-LOAD-BALANCER-FW": true,
	"KUBE-LOAD-BALANCER-SOURCE-IP": true, "KUBE-LOAD-BALANCER-SOURCE-CIDR": true,
	"KUBE-NODE-PORT-TCP": true, "KUBE-NODE-PORT-LOCAL-TCP": true, "KUBE-NODE-PORT-UDP": true,
	"KUBE-NODE-PORT-LOCAL-UDP": true, "KUBE-NODE-PORT-SCTP-HASH": true, "KUBE-NODE-PORT-LOCAL-SCTP-HASH": true,
	"KUBE-HEALTH-CHECK-NODE-PORT": true, "KUBE-IPVS-IPS": true,
}

// IsKubeProxySet reports whether an ipset is kube-proxy's (IPVS mode).
// Switchyard's are SWY-.
func IsKubeProxySet(name string) bool {
	if rest, ok := strings.CutPrefix(name, "KUBE-6-"); ok {
		name = "KUBE-" + rest
	}
	return kubeProxySets[name]
}

// VirtualServer is one IPVS virtual server as the cleaner sees it.
type VirtualServer struct {
	Addr     netip.Addr
	Protocol string
	Port     uint16
	FWMark   uint32
}

func (v VirtualServer) String() string {
	if v.FWMark != 0 {
		return fmt.Sprintf("FWM %d", v.FWMark)
	}
	return fmt.Sprintf("%s %s", v.Protocol, netip.AddrPortFrom(v.Addr, v.Port))
}

// IPVS lists and deletes virtual servers. Open returns ErrNoIPVS when the
// kernel has no IPVS.
type IPVS interface {
	VirtualServers() ([]VirtualServer, error)
	Delete(VirtualServer) error
}

// Links reads and deletes network interfaces.
type Links interface {
	// Addresses lists the addresses of link name; exists is false when
	// there is no such link.
	Addresses(name string) (addrs []netip.Addr, exists bool, err error)
	// Delete removes link name.
	Delete(name string) error
}

// ErrNoIPVS means the kernel has no IPVS: there is nothing to clean there.
var ErrNoIPVS = errors.New("kernel has no IPVS")

// Config is what Clean needs. Nil fields take the real implementations.
type Config struct {
	// Executor runs iptables-*, nft and ipset (default: on this machine).
	Executor iptexec.Executor
	// OpenIPVS opens the IPVS handle (default: netlink). It returns
	// ErrNoIPVS (wrapped) when the kernel has none.
	OpenIPVS func() (IPVS, error)
	// Links reads and deletes kube-ipvs0 (default: netlink).
	Links Links
	// KeepVirtualServers is set when switchyard itself runs in IPVS mode:
	// only virtual servers on kube-ipvs0's addresses are deleted (the
	// others, node ports on node addresses, are switchyard's to reconcile).
	// Otherwise, when kube-ipvs0 exists, every virtual server but
	// switchyard's own (KeepVirtualServer) is deleted, as upstream does.
	KeepVirtualServers bool
	// KeepVirtualServer protects switchyard's own virtual servers (e.g.
	// those on swy-ipvs0 or with its fwmarks); nil keeps none.
	KeepVirtualServer func(VirtualServer) bool
	// Log receives one line per removed kind of state.
	Log *slog.Logger
}

// Report counts what Clean removed.
type Report struct {
	Chains, JumpRules, NFTables, VirtualServers, IPSets int
	IPVSLinkDeleted                                     bool
}

// Clean removes kube-proxy's state. It goes on after a failure and
// returns every error joined; what it could not remove stays in place.
// The order matters: iptables rules go before the ipsets they match on.
func Clean(ctx context.Context, cfg Config) (Report, error) {
	if cfg.Executor == nil {
		cfg.Executor = &iptexec.CommandExecutor{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.OpenIPVS == nil {
		cfg.OpenIPVS = openNetlinkIPVS
	}
	if cfg.Links == nil {
		cfg.Links = netlinkLinks{}
	}
	var rep Report
	var errs []error
	for _, m := range []iptexec.Mode{iptexec.ModeNFT, iptexec.ModeLegacy} {
		for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
			if err := cleanIPTables(ctx, cfg, iptexec.ToolsFor(m, f), &rep); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := cleanNFTables(ctx, cfg, &rep); err != nil {
		errs = append(errs, err)
	}
	if err := cleanIPVS(cfg, &rep); err != nil {
		errs = append(errs, err)
	}
	if err := cleanIPSets(ctx, cfg, &rep); err != nil {
		errs = append(errs, err)
	}
	cfg.Log.Info("kube-proxy leftovers removed", "chains", rep.Chains, "jumpRules", rep.JumpRules,
		"nftTables", rep.NFTables, "virtualServers", rep.VirtualServers, "ipsets", rep.IPSets,
		"kubeIPVS0Deleted", rep.IPVSLinkDeleted, "errors", len(errs))
	return rep, errors.Join(errs...)
}

// cleanIPTables removes kube-proxy's chains from nat, filter and mangle of
// one flavour and family, with the rules of other chains jumping to them,
// in one restore per table. One save without -t lists only the tables
// that exist (asking for a table would create it in the legacy flavour).
// A flavour whose save tool does not run (not installed, no kernel
// support) has nothing to clean.
func cleanIPTables(ctx context.Context, cfg Config, t iptexec.Tools, rep *Report) error {
	out, _, err := cfg.Executor.Run(ctx, nil, t.Save)
	if err != nil {
		return nil
	}
	tables := splitTables(out)
	var errs []error
	for _, table := range []string{"nat", "filter", "mangle"} {
		save, ok := tables[table]
		if !ok {
			continue
		}
		doomed := Plan(save)
		text := iptexec.DeleteText(table, doomed, t.NFT)
		if text == "" {
			continue
		}
		if err := iptexec.Restore(ctx, cfg.Executor, t, []byte(text)); err != nil {
			errs = append(errs, fmt.Errorf("removing kube-proxy chains from %s %s: %w", t.IPTables, table, err))
			continue
		}
		rep.Chains += len(doomed.Own)
		rep.JumpRules += len(doomed.ForeignJumps)
		cfg.Log.Info("removed kube-proxy's iptables chains", "tool", t.IPTables, "table", table,
			"chains", len(doomed.Own), "jumpRules", len(doomed.ForeignJumps))
	}
	return errors.Join(errs...)
}

// splitTables splits iptables-save output into its tables ("*nat" ...
// "COMMIT"), each with its header line.
func splitTables(out []byte) map[string][]byte {
	tables := map[string][]byte{}
	var name string
	var cur []string
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			name, cur = line[1:], []string{line}
		case line == "COMMIT" && name != "":
			tables[name] = []byte(strings.Join(append(cur, line), "\n") + "\n")
			name, cur = "", nil
		case name != "":
			cur = append(cur, line)
		}
	}
	return tables
}

// Plan reads iptables-save output of one table and returns kube-proxy's
// chains (Own) and the rules of the other chains that jump to them
// (ForeignJumps, as saved), ready for iptexec.DeleteText.
func Plan(save []byte) *iptexec.Table {
	t := &iptexec.Table{Rules: map[string]int{}}
	doomed := map[string]bool{}
	lines := strings.Split(string(save), "\n")
	for _, line := range lines {
		if name, ok := strings.CutPrefix(line, ":"); ok {
			name, _, _ = strings.Cut(name, " ")
			if IsKubeProxyChain(name) {
				doomed[name] = true
				t.Own = append(t.Own, name)
			}
		}
	}
	for _, line := range lines {
		rest, ok := strings.CutPrefix(line, "-A ")
		if !ok {
			continue
		}
		chain, _, _ := strings.Cut(rest, " ")
		if doomed[chain] {
			continue
		}
		if target := jumpTarget(rest); doomed[target] {
			t.ForeignJumps = append(t.ForeignJumps, line)
		}
	}
	return t
}

// jumpTarget returns the chain a saved rule jumps or goes to ("" if none).
func jumpTarget(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" || f[i] == "--jump" || f[i] == "--goto" {
			return f[i+1]
		}
	}
	return ""
}

// cleanNFTables deletes the `kube-proxy` tables (ip and ip6) that
// kube-proxy's nftables mode writes, as its own cleanup does.
func cleanNFTables(ctx context.Context, cfg Config, rep *Report) error {
	out, _, err := cfg.Executor.Run(ctx, nil, "nft", "list", "tables")
	if err != nil {
		return nil // no nft, or no nf_tables: nothing to clean
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "table" || f[2] != "kube-proxy" || (f[1] != "ip" && f[1] != "ip6") {
			continue
		}
		if _, stderr, err := cfg.Executor.Run(ctx, nil, "nft", "delete", "table", f[1], "kube-proxy"); err != nil {
			errs = append(errs, fmt.Errorf("nft delete table %s kube-proxy: %s: %w", f[1], iptexec.Trim(stderr), err))
			continue
		}
		rep.NFTables++
		cfg.Log.Info("removed kube-proxy's nftables table", "family", f[1])
	}
	return errors.Join(errs...)
}

// cleanIPVS deletes kube-proxy's virtual servers and kube-ipvs0. Without
// kube-ipvs0, kube-proxy did not run in IPVS mode and no virtual server is
// touched.
func cleanIPVS(cfg Config, rep *Report) error {
	addrs, exists, err := cfg.Links.Addresses(IPVSLink)
	if err != nil {
		return fmt.Errorf("reading %s: %w", IPVSLink, err)
	}
	if !exists {
		return nil
	}
	var errs []error
	h, err := cfg.OpenIPVS()
	switch {
	case errors.Is(err, ErrNoIPVS):
		cfg.Log.Info("no IPVS in this kernel; no virtual servers to remove")
	case err != nil:
		errs = append(errs, fmt.Errorf("opening IPVS: %w", err))
	default:
		onLink := map[netip.Addr]bool{}
		for _, a := range addrs {
			onLink[a.Unmap()] = true
		}
		servers, err := h.VirtualServers()
		if err != nil {
			errs = append(errs, fmt.Errorf("listing IPVS virtual servers: %w", err))
		}
		for _, v := range servers {
			if cfg.KeepVirtualServer != nil && cfg.KeepVirtualServer(v) {
				continue
			}
			if !onLink[v.Addr.Unmap()] && (cfg.KeepVirtualServers || v.FWMark != 0) {
				continue
			}
			if err := h.Delete(v); err != nil {
				errs = append(errs, fmt.Errorf("deleting IPVS virtual server %s: %w", v, err))
				continue
			}
			rep.VirtualServers++
		}
		cfg.Log.Info("removed kube-proxy's IPVS virtual servers", "count", rep.VirtualServers)
	}
	if err := cfg.Links.Delete(IPVSLink); err != nil {
		errs = append(errs, fmt.Errorf("deleting %s: %w", IPVSLink, err))
	} else {
		rep.IPVSLinkDeleted = true
		cfg.Log.Info("removed " + IPVSLink)
	}
	return errors.Join(errs...)
}

// cleanIPSets destroys kube-proxy's ipsets (after the iptables rules that
// matched on them are gone), one at a time, so a set still in use (named
// by someone else's rule) fails alone. No ipset tool means nothing to
// clean.
func cleanIPSets(ctx context.Context, cfg Config, rep *Report) error {
	out, _, err := cfg.Executor.Run(ctx, nil, "ipset", "list", "-n")
	if err != nil {
		return nil
	}
	var sets []string
	for _, name := range strings.Fields(string(out)) {
		if IsKubeProxySet(name) {
			sets = append(sets, name)
		}
	}
	var errs []error
	for _, set := range sets {
		if _, stderr, err := cfg.Executor.Run(ctx, nil, "ipset", "destroy", set); err != nil {
			errs = append(errs, fmt.Errorf("ipset destroy %s: %s: %w", set, iptexec.Trim(stderr), err))
			continue
		}
		rep.IPSets++
	}
	if rep.IPSets > 0 {
		cfg.Log.Info("removed kube-proxy's ipsets", "count", rep.IPSets)
	}
	return errors.Join(errs...)
}
