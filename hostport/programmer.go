package hostport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/switchyard-proxy/switchyard/conntrack"
	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// Config configures a Programmer.
type Config struct {
	// Mode selects iptables-nft or iptables-legacy; "" means auto-detect.
	Mode iptexec.Mode
	// Executor runs the iptables tools; nil runs them on this machine.
	Executor iptexec.Executor
	// Logger receives logs; nil means slog.Default().
	Logger *slog.Logger
	// Listen opens reservation sockets; nil means Listen. NoReserve
	// turns reservation off.
	Listen    ListenFunc
	NoReserve bool
	// Conntrack is the table whose stale UDP entries are deleted when a
	// UDP mapping is added; nil means conntrack.NewNetlinkTable().
	Conntrack conntrack.Table
	// Disabled programs nothing (--hostport-mode=off): the first sync only
	// removes chains a previous run left.
	Disabled bool
	// Auto (--hostport-mode=auto) decides at the first sync: Disabled when
	// the CNI portmap plugin's PortmapChain exists in the nat table (of
	// either iptables flavour), else on. Render renders as on.
	Auto bool
}

// PortmapChain is the nat chain the CNI portmap plugin creates; its
// presence means the CNI programs host ports on this node.
const PortmapChain = "CNI-HOSTPORT-DNAT"

// PortmapPresent reports whether either iptables flavour's IPv4 or IPv6
// nat table holds PortmapChain (a flavour whose tools fail counts as
// without it).
func PortmapPresent(ctx context.Context, ex iptexec.Executor) bool {
	for _, m := range []iptexec.Mode{iptexec.ModeNFT, iptexec.ModeLegacy} {
		for _, fam := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
			if ok, err := iptexec.ChainExists(ctx, ex, iptexec.ToolsFor(m, fam), "nat", PortmapChain); err == nil && ok {
				return true
			}
		}
	}
	return false
}

// Programmer is a proxier.Backend that runs another backend's Sync and
// then programs the snapshots' host ports (see the package doc).
type Programmer struct {
	backend proxier.Backend
	cfg     Config
	log     *slog.Logger

	mu      sync.Mutex
	mode    iptexec.Mode
	written map[proxier.IPFamily]*Plan // what the kernel holds; nil: unknown
	sockets map[socketKey]io.Closer
	failed  map[socketKey]bool // reservation failed (logged once)
}

var (
	_ proxier.Backend  = (*Programmer)(nil)
	_ proxier.Renderer = (*Programmer)(nil)
)

// Wrap returns backend decorated with host-port programming.
func Wrap(backend proxier.Backend, cfg Config) *Programmer {
	if cfg.Executor == nil {
		cfg.Executor = &iptexec.CommandExecutor{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Listen == nil {
		cfg.Listen = Listen
	}
	if cfg.Conntrack == nil {
		cfg.Conntrack = conntrack.NewNetlinkTable()
	}
	return &Programmer{backend: backend, cfg: cfg, log: cfg.Logger.With("component", "hostport"),
		mode: cfg.Mode, written: map[proxier.IPFamily]*Plan{}, sockets: map[socketKey]io.Closer{}, failed: map[socketKey]bool{}}
}

// Unwrap returns the decorated backend.
func (p *Programmer) Unwrap() proxier.Backend { return p.backend }

// Name returns the decorated backend's mode name.
func (p *Programmer) Name() string { return p.backend.Name() }

// Render returns the decorated backend's rules followed by the host-port
// rules (none when Disabled).
func (p *Programmer) Render(snaps []*proxier.Snapshot) (string, error) {
	r, ok := p.backend.(proxier.Renderer)
	if !ok {
		return "", fmt.Errorf("proxy mode %s cannot render its rules", p.backend.Name())
	}
	text, err := r.Render(snaps)
	p.mu.Lock()
	disabled := p.cfg.Disabled
	p.mu.Unlock()
	if err != nil || disabled {
		return text, err
	}
	return text + Render(snaps), nil
}

// flavoured is a decorated backend that writes iptables rules too: host
// ports use its flavour instead of detecting again (a detection saves
// every table of both flavours: seconds with a big nat table).
type flavoured interface {
	Mode(ctx context.Context) (iptexec.Mode, error)
}

func (p *Programmer) tools(ctx context.Context, fam proxier.IPFamily) (iptexec.Tools, error) {
	if p.mode == "" || p.mode == iptexec.ModeAuto {
		if f, ok := p.backend.(flavoured); ok {
			if m, err := f.Mode(ctx); err == nil && m != "" && m != iptexec.ModeAuto {
				p.mode = m
				return iptexec.ToolsFor(m, fam), nil
			}
		}
		m, err := iptexec.Detect(ctx, p.cfg.Executor)
		if err != nil {
			return iptexec.Tools{}, fmt.Errorf("hostport: detect iptables flavour: %w", err)
		}
		p.mode = m
	}
	return iptexec.ToolsFor(p.mode, fam), nil
}

// Sync runs the decorated backend's Sync and, if it succeeds, programs each
// snapshot's host ports: nothing is written when they did not change; a
// change rewrites only the changed per-mapping chains and the dispatch
// chain. A full or verifying snapshot compares with the kernel first and
// repairs what differs. A failure is returned (the runner retries) and the
// next sync compares with the kernel.
func (p *Programmer) Sync(ctx context.Context, snaps []*proxier.Snapshot) (proxier.SyncResult, error) {
	res, err := p.backend.Sync(ctx, snaps)
	if err != nil {
		return res, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.Auto {
		p.cfg.Auto = false
		if PortmapPresent(ctx, p.cfg.Executor) {
			p.cfg.Disabled = true
			p.log.Info("the CNI portmap plugin's chain exists: host ports are left to it (--hostport-mode=auto)", "chain", PortmapChain)
		} else {
			p.log.Info("no CNI portmap chain: switchyard programs host ports (--hostport-mode=auto)", "chain", PortmapChain)
		}
	}
	var errs []error
	keep := map[socketKey]bool{}
	for _, s := range snaps {
		if s == nil {
			continue
		}
		if err := p.syncFamily(ctx, s, &res, keep); err != nil {
			p.written[s.Family] = nil
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		p.release(keep)
	}
	return res, errors.Join(errs...)
}

func (p *Programmer) syncFamily(ctx context.Context, snap *proxier.Snapshot, res *proxier.SyncResult, keep map[socketKey]bool) error {
	fam := snap.Family
	old := p.written[fam]
	if p.cfg.Disabled {
		if old != nil {
			return nil
		}
		if _, err := p.removeChains(ctx, fam); err != nil {
			return err
		}
		p.written[fam] = &Plan{Family: fam}
		return nil
	}
	plan := Build(snap)
	if len(plan.Mappings) == 0 {
		// No host port in this family: nothing of ours in the kernel at
		// all (no chain, no jump). Leftovers are removed on the first
		// sync, when the last mapping goes, and on full syncs; verifying
		// syncs read nothing (the mode's nat table can be huge).
		if old != nil && len(old.Mappings) == 0 && !snap.FullSync {
			return nil
		}
		n, err := p.removeChains(ctx, fam)
		if err != nil {
			return err
		}
		if n > 0 {
			res.Wrote = true
			res.Bytes += n
		}
		p.written[fam] = plan
		return nil
	}
	for _, n := range plan.sortedChains() {
		hp := plan.Mappings[n]
		if k, ok := reservation(fam, hp); ok {
			keep[k] = true
			p.reserve(k, hp)
		}
	}
	t, err := p.tools(ctx, fam)
	if err != nil {
		return err
	}
	var text string
	var added []string
	if old == nil || snap.FullSync || snap.Verify {
		saved, err := p.readKernel(ctx, t, old, snap.FullSync)
		if err != nil {
			return fmt.Errorf("hostport %s: %w", fam, err)
		}
		var repaired map[string]int
		text, added, repaired = kernelDiff(plan, saved, old)
		if len(repaired) > 0 && old != nil {
			p.log.Warn("host-port rules changed behind switchyard's back; repaired", "family", fam.String(), "repaired", repaired)
			if res.Repaired == nil {
				res.Repaired = map[string]int{}
			}
			for k, v := range repaired {
				res.Repaired[k] += v
			}
		}
	} else {
		text, added = diff(old, plan)
	}
	if text != "" {
		if err := iptexec.Restore(ctx, p.cfg.Executor, t, []byte(text)); err != nil {
			return fmt.Errorf("hostport %s: %w", fam, err)
		}
		res.Wrote = true
		res.Bytes += len(text)
		res.Rules += strings.Count(text, "\n-A ")
		p.log.Info("programmed host ports", "family", fam.String(), "mappings", len(plan.Mappings), "rewrittenChains", len(added))
	}
	p.written[fam] = plan
	p.flushConntrack(fam, plan, added)
	return nil
}

// readKernel reads the nat table's host-port chains and the built-in
// chains that jump to them. A verifying sync of iptables-nft with a known
// state lists only those chains (a big nat table of the iptables mode is
// not dumped every period); anything else, or a listing that fails (a
// chain is gone), runs iptables-save -t nat, which also finds leftovers.
func (p *Programmer) readKernel(ctx context.Context, t iptexec.Tools, old *Plan, full bool) (*iptexec.Table, error) {
	if t.NFT && old != nil && !full {
		list := append([]string{"PREROUTING", "OUTPUT", DispatchChain}, old.sortedChains()...)
		if tbl, err := iptexec.ListChains(ctx, p.cfg.Executor, t, "nat", list, ChainPrefix); err == nil {
			return tbl, nil
		}
	}
	return iptexec.SaveSums(ctx, p.cfg.Executor, t, "nat", ChainPrefix)
}

// diff returns restore input turning old into plan ("" when equal) and
// the per-mapping chains written.
func diff(old, plan *Plan) (string, []string) {
	var changed, removed []string
	for _, n := range plan.sortedChains() {
		if old.Chains[n] != plan.Chains[n] {
			changed = append(changed, n)
		}
	}
	for _, n := range old.sortedChains() {
		if _, ok := plan.Chains[n]; !ok {
			removed = append(removed, n)
		}
	}
	if len(changed) == 0 && len(removed) == 0 && old.Dispatch == plan.Dispatch {
		return "", nil
	}
	return writeText(plan, changed, removed, old.Dispatch != plan.Dispatch, nil), changed
}

// writeText builds restore input: flush and refill the changed chains (and
// the dispatch chain), then flush and delete the removed ones, then add
// the jump lines.
func writeText(plan *Plan, changed, removed []string, dispatch bool, jumps []string) string {
	var sb strings.Builder
	sb.WriteString("*nat\n")
	if dispatch {
		sb.WriteString(":" + DispatchChain + " - [0:0]\n")
	}
	for _, n := range changed {
		sb.WriteString(":" + n + " - [0:0]\n")
	}
	for _, n := range removed {
		sb.WriteString(":" + n + " - [0:0]\n")
	}
	for _, n := range changed {
		sb.WriteString(plan.Chains[n])
	}
	if dispatch {
		sb.WriteString(plan.Dispatch)
	}
	for _, n := range removed {
		sb.WriteString("-X " + n + "\n")
	}
	for _, j := range jumps {
		sb.WriteString(j + "\n")
	}
	sb.WriteString("COMMIT\n")
	return sb.String()
}

// kernelDiff compares plan with the saved nat table: chains whose rules
// differ or are missing are rewritten, owned chains not in the plan are
// deleted, missing jumps are added. repaired counts, when old (what was
// written) is known, what differed from it.
func kernelDiff(plan *Plan, saved *iptexec.Table, old *Plan) (string, []string, map[string]int) {
	want := iptexec.SumRules(plan.Text())
	repaired := map[string]int{}
	var changed, removed []string
	for _, n := range plan.sortedChains() {
		if got, ok := saved.Sums[n]; !ok || got != want[n] {
			changed = append(changed, n)
			if old != nil && old.Chains[n] == plan.Chains[n] {
				repaired["chain"]++
			}
		}
	}
	dispatch := false
	if got, ok := saved.Sums[DispatchChain]; !ok || got != want[DispatchChain] {
		dispatch = true
		if old != nil && old.Dispatch == plan.Dispatch {
			repaired["chain"]++
		}
	}
	for _, n := range saved.Own {
		if _, ok := plan.Chains[n]; !ok && n != DispatchChain {
			removed = append(removed, n)
			if old != nil && old.Chains[n] == "" {
				repaired["unexpected-chain"]++
			}
		}
	}
	jumps := iptexec.MissingJumps(Jumps, map[string]*iptexec.Table{"nat": saved})["nat"]
	if old != nil {
		repaired["jump"] += len(jumps)
	}
	for k, v := range repaired {
		if v == 0 {
			delete(repaired, k)
		}
	}
	if len(changed) == 0 && len(removed) == 0 && !dispatch && len(jumps) == 0 {
		return "", nil, repaired
	}
	sort.Strings(removed)
	return writeText(plan, changed, removed, dispatch, jumps), changed, repaired
}

// reserve opens the socket of k if it is not open; a failure is logged
// once (the mapping stays programmed) and retried at every sync.
func (p *Programmer) reserve(k socketKey, hp proxier.HostPort) {
	if p.cfg.NoReserve || p.sockets[k] != nil {
		return
	}
	c, err := p.cfg.Listen(k.network, k.address)
	if err != nil {
		if !p.failed[k] {
			p.log.Warn("host port is already in use on the node; the pod's mapping is programmed anyway (its DNAT takes the traffic first), the port is not reserved",
				"pod", hp.Pod, "hostPort", hp.HostPort, "protocol", string(hp.Protocol), "socket", k.String(), "err", err)
		}
		p.failed[k] = true
		return
	}
	if p.failed[k] {
		p.log.Info("host port reserved after all", "pod", hp.Pod, "socket", k.String())
	}
	delete(p.failed, k)
	p.sockets[k] = c
}

// release closes the sockets of mappings that are gone.
func (p *Programmer) release(keep map[socketKey]bool) {
	for k, c := range p.sockets {
		if !keep[k] {
			if err := c.Close(); err != nil {
				p.log.Info("closing host-port reservation", "socket", k.String(), "err", err)
			}
			delete(p.sockets, k)
		}
	}
	for k := range p.failed {
		if !keep[k] {
			delete(p.failed, k)
		}
	}
}

// flushConntrack deletes the UDP conntrack entries to the host port of
// each added or changed UDP mapping: entries made before the DNAT existed
// (or to an old pod) would otherwise keep a client's flow off the pod.
func (p *Programmer) flushConntrack(fam proxier.IPFamily, plan *Plan, chains []string) {
	var udp []proxier.HostPort
	for _, n := range chains {
		if hp := plan.Mappings[n]; hp.Protocol == proxier.UDP {
			udp = append(udp, hp)
		}
	}
	if len(udp) == 0 {
		return
	}
	r, err := p.cfg.Conntrack.Delete(fam, []proxier.Protocol{proxier.UDP}, func(f *conntrack.Flow) bool {
		for _, hp := range udp {
			if f.Orig.Dst.Port() == hp.HostPort && (!hp.HostIP.IsValid() || f.Orig.Dst.Addr() == hp.HostIP) &&
				f.Reply.Src != (netipAddrPort(hp)) {
				return true
			}
		}
		return false
	})
	if err != nil {
		p.log.Info("deleting stale conntrack entries of new UDP host ports failed", "family", fam.String(), "err", err)
		return
	}
	if r.Deleted > 0 {
		p.log.Info("deleted stale conntrack entries of new UDP host ports", "family", fam.String(), "deleted", r.Deleted)
	}
}

// Cleanup runs the decorated backend's Cleanup, then removes the host-port
// chains and jumps of both families and releases every reservation.
func (p *Programmer) Cleanup(ctx context.Context) error {
	errs := []error{p.backend.Cleanup(ctx)}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, fam := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
		_, err := p.removeChains(ctx, fam)
		errs = append(errs, err)
		p.written[fam] = nil
	}
	p.release(nil)
	return errors.Join(errs...)
}

func (p *Programmer) removeChains(ctx context.Context, fam proxier.IPFamily) (int, error) {
	t, err := p.tools(ctx, fam)
	if err != nil {
		return 0, err
	}
	// Every write adds or removes the per-mapping chains together with the
	// dispatch chain, atomically: without it there is nothing of ours, and
	// the big nat table need not be saved.
	if ok, err := iptexec.ChainExists(ctx, p.cfg.Executor, t, "nat", DispatchChain); err == nil && !ok {
		return 0, nil
	}
	saved, err := iptexec.Save(ctx, p.cfg.Executor, t, "nat", ChainPrefix)
	if err != nil {
		return 0, fmt.Errorf("hostport cleanup %s: %w", fam, err)
	}
	text := iptexec.DeleteText("nat", saved, false)
	if text == "" {
		return 0, nil
	}
	if err := iptexec.Restore(ctx, p.cfg.Executor, t, []byte(text)); err != nil {
		return 0, fmt.Errorf("hostport cleanup %s: %w", fam, err)
	}
	p.log.Info("removed host-port chains", "family", fam.String(), "chains", len(saved.Own))
	return len(text), nil
}
