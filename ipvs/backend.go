package ipvs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/nodeport"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// DefaultGracePeriod bounds graceful termination: a removed TCP/SCTP real
// server at weight 0 is deleted after this long even if it still has
// connections. (kube-proxy has no bound: it waits for zero connections.)
const DefaultGracePeriod = 15 * time.Minute

// Config configures a Backend.
type Config struct {
	// Scheduler is --ipvs-scheduler; "" means DefaultScheduler.
	Scheduler string
	// GracePeriod bounds graceful termination; 0 means DefaultGracePeriod.
	GracePeriod time.Duration
	// StrictARP sets arp_ignore=1 and arp_announce=2 (--ipvs-strict-arp).
	StrictARP bool
	// NodePortMin and NodePortMax bound the ports of node-port virtual
	// servers switchyard considers its own after a restart; zero means
	// 30000-32767.
	NodePortMin, NodePortMax uint16
	// IPTablesMode selects iptables-nft or -legacy; "" means auto.
	IPTablesMode iptables.Mode
	// QuickCleanup makes Cleanup skip tables where none of the chains its
	// hooks jump to exists (a mode switch); otherwise it saves every table.
	QuickCleanup bool
	// Timeouts are IPVS's connection timeouts (--ipvs-tcp-timeout,
	// --ipvs-tcpfin-timeout, --ipvs-udp-timeout); zero fields keep the
	// kernel's. Checked at every sync, written only when they differ.
	Timeouts Timeouts
	// ExcludeCIDRs is --ipvs-exclude-cidrs: virtual servers on an address
	// inside one of them are never deleted by Sync or Cleanup (other IPVS
	// users' services), even on a node address in the node-port range or
	// on an address of swy-ipvs0. Desired ones are still programmed.
	ExcludeCIDRs []netip.Prefix
	// Executor runs ipset and iptables; nil runs them here. (Stale UDP
	// conntrack entries are deleted by package conntrack, which wraps
	// every backend.)
	Executor iptables.Executor
	// Kernel drives IPVS and swy-ipvs0; nil opens a NetlinkKernel on the
	// first Sync or Cleanup.
	Kernel Kernel
	// Sysctl reads and writes kernel parameters; nil means /proc/sys.
	Sysctl Sysctl
	// LocalAddresses lists this node's addresses for node ports when
	// --nodeport-addresses is empty (every local address); nil means the
	// addresses of this network namespace's interfaces other than
	// swy-ipvs0. Loopback and link-local addresses are never used.
	LocalAddresses func() ([]netip.Addr, error)
	// Logger receives logs; nil means slog.Default().
	Logger *slog.Logger
	// Now returns the current time (tests); nil means time.Now.
	Now func() time.Time
}

// Backend is the IPVS proxy mode. It implements proxier.Backend and
// proxier.Renderer; calls are serialised.
type Backend struct {
	cfg Config
	log *slog.Logger

	mu          sync.Mutex
	kernel      Kernel
	flavour     iptables.Mode
	rules       map[proxier.IPFamily]string // restore text last written
	terminating map[DestKey]time.Time
	created     map[Key]bool // virtual servers this process created
	// last fingerprints what the last successful sync left in the kernel
	// (nil before it and after a failure): a dump that differs from it
	// drifted.
	last *written
}

var (
	_ proxier.Backend  = (*Backend)(nil)
	_ proxier.Renderer = (*Backend)(nil)
)

// New returns an IPVS Backend. It does not touch the kernel.
func New(cfg Config) (*Backend, error) {
	if cfg.Scheduler == "" {
		cfg.Scheduler = DefaultScheduler
	}
	if !validScheduler(cfg.Scheduler) {
		return nil, fmt.Errorf("ipvs: unknown scheduler %q (want one of %s)", cfg.Scheduler, strings.Join(Schedulers, ", "))
	}
	switch cfg.IPTablesMode {
	case "":
		cfg.IPTablesMode = iptables.ModeAuto
	case iptables.ModeAuto, iptables.ModeNFT, iptables.ModeLegacy:
	default:
		return nil, fmt.Errorf("ipvs: unknown iptables mode %q", cfg.IPTablesMode)
	}
	if cfg.GracePeriod <= 0 {
		cfg.GracePeriod = DefaultGracePeriod
	}
	if err := cfg.Timeouts.Validate(); err != nil {
		return nil, err
	}
	for _, p := range cfg.ExcludeCIDRs {
		if !p.IsValid() {
			return nil, fmt.Errorf("ipvs: invalid exclude CIDR %v", p)
		}
	}
	if cfg.NodePortMin == 0 && cfg.NodePortMax == 0 {
		cfg.NodePortMin, cfg.NodePortMax = 30000, 32767
	}
	if cfg.Executor == nil {
		cfg.Executor = &iptables.CommandExecutor{}
	}
	if cfg.Sysctl == nil {
		cfg.Sysctl = ProcSysctl{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LocalAddresses == nil {
		cfg.LocalAddresses = InterfaceAddresses
	}
	b := &Backend{
		cfg: cfg, log: cfg.Logger.With("backend", "ipvs"), kernel: cfg.Kernel,
		rules: map[proxier.IPFamily]string{}, terminating: map[DestKey]time.Time{}, created: map[Key]bool{},
	}
	if cfg.IPTablesMode != iptables.ModeAuto {
		b.flavour = cfg.IPTablesMode
	}
	return b, nil
}

// Name implements proxier.Backend.
func (b *Backend) Name() string { return "ipvs" }

// Render implements proxier.Renderer: the virtual servers in `ipvsadm -Ln`
// format, then the ipsets in `ipset save` format, then the iptables
// restore text of each family.
func (b *Backend) Render(snaps []*proxier.Snapshot) (string, error) {
	st, err := Render(snaps, b.renderOptions())
	if err != nil {
		return "", err
	}
	return FormatState(st), nil
}

// renderOptions returns the options of Render, with the node's current
// local addresses (a failure to list them is logged; node ports then
// answer on the snapshots' NodeIPs only).
func (b *Backend) renderOptions() RenderOptions {
	addrs, err := b.cfg.LocalAddresses()
	if err != nil {
		b.log.Warn("cannot list local addresses; node ports answer on the node IPs only", "err", err)
	}
	return RenderOptions{Scheduler: b.cfg.Scheduler, LocalAddrs: nodeport.Usable(addrs)}
}

// InterfaceAddresses returns the addresses of every interface of this
// network namespace except swy-ipvs0 (whose addresses are service VIPs).
func InterfaceAddresses() ([]netip.Addr, error) {
	return nodeport.LocalAddresses(DummyInterface)
}

// FormatState prints a state as Backend.Render does.
func FormatState(st *State) string {
	var s strings.Builder
	s.WriteString("# ipvsadm -Ln\n")
	s.WriteString(FormatIPVS(st.Servers))
	fmt.Fprintf(&s, "# addresses on %s\n", DummyInterface)
	for _, a := range st.Addresses {
		s.WriteString(a.String() + "\n")
	}
	s.WriteString("# ipset save\n")
	s.WriteString(FormatIPSets(st.Sets))
	for _, r := range st.Rules {
		s.WriteString(r.Text)
	}
	return s.String()
}

func (b *Backend) ensureKernel() (Kernel, error) {
	if b.kernel == nil {
		k, err := NewNetlinkKernel()
		if err != nil {
			return nil, err
		}
		b.kernel = k
	}
	return b.kernel, nil
}

// Mode returns the iptables flavour of the backend's rules, resolving auto
// if needed (the host-port decorator writes in the same flavour).
func (b *Backend) Mode(ctx context.Context) (iptables.Mode, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ensureFlavour(ctx)
}

func (b *Backend) ensureFlavour(ctx context.Context) (iptables.Mode, error) {
	if b.flavour == "" {
		m, err := iptexec.Detect(ctx, b.cfg.Executor)
		if err != nil {
			return "", fmt.Errorf("ipvs: pick iptables flavour: %w", err)
		}
		b.flavour = m
		b.log.Info("iptables flavour", "mode", m)
	}
	return b.flavour, nil
}

// Sync implements proxier.Backend: render, dump the kernel (one
// GetServices), diff, and apply only the difference.
func (b *Backend) Sync(ctx context.Context, snaps []*proxier.Snapshot) (proxier.SyncResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	res := proxier.SyncResult{Full: true}
	tm := newStageTimer()
	defer func() { b.log.Debug("ipvs sync stages", tm.attrs()...) }()
	opts := b.renderOptions()
	desired, err := Render(snaps, opts)
	if err != nil {
		return res, err
	}
	tm.stage("render")
	if _, err := ensureSysctls(b.cfg.Sysctl, b.cfg.StrictARP, b.log); err != nil {
		return res, fmt.Errorf("ipvs: sysctls: %w", err)
	}
	k, err := b.ensureKernel()
	if err != nil {
		return res, err
	}
	created, err := k.EnsureDummy()
	if err != nil {
		return res, err
	}
	if created {
		res.Wrote = true
		b.log.Info("created dummy interface", "name", DummyInterface)
	}
	if wrote, err := ensureTimeouts(k, b.cfg.Timeouts, b.log); err != nil {
		return res, err
	} else if wrote {
		res.Wrote = true
	}
	tm.stage("sysctls+dummy")
	addrs, err := k.DummyAddresses()
	if err != nil {
		return res, err
	}
	servers, err := k.VirtualServers()
	if err != nil {
		return res, err
	}
	tm.stage("dump-netlink")
	sets, err := ipsetSave(ctx, b.cfg.Executor)
	if err != nil {
		return res, fmt.Errorf("ipvs: %w", err)
	}
	tm.stage("dump-ipset")
	diffOpts := DiffOptions{
		Now: b.cfg.Now(), GracePeriod: b.cfg.GracePeriod, Terminating: b.terminating, Owned: b.ownedFunc(snaps, opts.LocalAddrs),
		Exclude: b.cfg.ExcludeCIDRs,
	}
	// Drift: the dump differs from what the last sync left. The Diff below
	// repairs it like any other difference; it is only reported.
	onDummy := map[netip.Addr]bool{}
	for _, a := range addrs {
		onDummy[a] = true
	}
	drift := stateDrift(b.last, fingerprint(servers, addrs, sets), func(k Key) bool {
		return owned(k, &State{}, onDummy, diffOpts)
	})
	b.last = nil // until this sync succeeds
	verify := false
	for _, s := range snaps {
		verify = verify || s != nil && (s.Verify || s.FullSync)
	}
	ops, terminating := Diff(desired, &Dump{Servers: servers, Addresses: addrs, Sets: sets}, diffOpts)
	b.terminating = terminating

	tm.stage("diff")
	// Phase 1: everything that adds (sets first: iptables rules name them).
	var setsAdd, setsDel []Op
	for _, o := range ops {
		switch o.Kind {
		case OpCreateSet, OpAddMember:
			setsAdd = append(setsAdd, o)
		case OpDelMember, OpDestroySet:
			setsDel = append(setsDel, o)
		}
	}
	// A set whose type changed is destroyed before it is re-created.
	var retype []Op
	for _, o := range setsDel {
		if o.Kind == OpDestroySet && desired.Set(o.Set.Name) != nil {
			retype = append(retype, o)
		}
	}
	if err := ipsetRestore(ctx, b.cfg.Executor, ipsetScript(append(retype, setsAdd...))); err != nil {
		return res, fmt.Errorf("ipvs: %w", err)
	}
	tm.stage("ipset-add")
	if n, rulesDrift, err := b.syncRules(ctx, desired, verify); err != nil {
		return res, err
	} else if n > 0 {
		res.Wrote = true
		res.Rules += n
		drift.merge(rulesDrift)
	}
	tm.stage("iptables")
	var errs []error
	for _, o := range ops {
		if err := b.applyOp(ctx, k, o); err != nil {
			errs = append(errs, err)
		}
	}
	tm.stage("netlink-writes")
	var lateSets []Op
	for _, o := range setsDel {
		if !slices.ContainsFunc(retype, func(r Op) bool { return r.Set.Name == o.Set.Name }) {
			lateSets = append(lateSets, o)
		}
	}
	if err := ipsetRestore(ctx, b.cfg.Executor, ipsetScript(lateSets)); err != nil {
		errs = append(errs, fmt.Errorf("ipvs: %w", err))
	}
	tm.stage("ipset-del")
	if len(ops) > 0 {
		res.Wrote = true
		res.Rules += len(ops)
		b.log.Info("ipvs sync", "operations", len(ops), "servers", len(desired.Servers), "terminating", len(b.terminating))
	}
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	b.last = fingerprint(desired.Servers, desired.Addresses, desired.Sets)
	if !drift.empty() {
		res.Repaired = drift.counts
		drift.log(b.log)
	}
	return res, nil
}

// ownedFunc reports node-port virtual servers switchyard may delete: ones
// it created, or ones on a node address in the node-port range.
func (b *Backend) ownedFunc(snaps []*proxier.Snapshot, local []netip.Addr) func(Key) bool {
	nodeAddrs := map[netip.Addr]bool{}
	for _, a := range local {
		nodeAddrs[a] = true
	}
	for _, s := range snaps {
		if s == nil {
			continue
		}
		for _, a := range s.NodeIPs {
			nodeAddrs[a] = true
		}
		for _, a := range s.NodePortAddresses.Addrs {
			nodeAddrs[a] = true
		}
	}
	return func(k Key) bool {
		return b.created[k] || nodeAddrs[k.Addr] && k.Port >= b.cfg.NodePortMin && k.Port <= b.cfg.NodePortMax
	}
}

// applyOp performs one netlink operation (set operations run elsewhere).
func (b *Backend) applyOp(ctx context.Context, k Kernel, o Op) error {
	var err error
	switch o.Kind {
	case OpAddAddress:
		err = k.AddAddress(o.Addr)
	case OpDelAddress:
		err = k.DelAddress(o.Addr)
	case OpAddService:
		if err = k.AddService(o.Server); err == nil {
			b.created[o.Server.Key] = true
		}
	case OpUpdateService:
		err = k.UpdateService(o.Server)
	case OpDelService:
		if err = k.DelService(o.Server.Key); err == nil {
			delete(b.created, o.Server.Key)
		}
	case OpAddDest:
		err = k.AddDest(o.Server.Key, o.Dest)
	case OpUpdateDest:
		err = k.UpdateDest(o.Server.Key, o.Dest)
		if err == nil && o.Dest.Weight == 0 {
			b.log.Info("real server quiesced (graceful termination)", "service", o.Server.Key.String(), "dest", o.Dest.Addr.String())
		}
	case OpDelDest:
		err = k.DelDest(o.Server.Key, o.Dest)
	default:
		return nil
	}
	return err
}

// syncRules writes the iptables rules of each family whose text changed
// since the last write, or that drifted: with verify, one iptables-save
// per family checks every SWY- chain and hook (rulesDrift); without, the
// hooks are checked with iptables -C. It returns how many families it
// wrote and the drift it repaired.
func (b *Backend) syncRules(ctx context.Context, desired *State, verify bool) (int, *driftReport, error) {
	m, err := b.ensureFlavour(ctx)
	if err != nil {
		return 0, nil, err
	}
	n := 0
	drift := &driftReport{}
	for _, fr := range desired.Rules {
		t := iptexec.ToolsFor(m, fr.Family)
		if b.rules[fr.Family] == fr.Text {
			var rep *driftReport
			if verify {
				if rep, err = rulesDrift(ctx, b.cfg.Executor, t, fr); err != nil {
					return n, drift, fmt.Errorf("ipvs: iptables rules (%s): %w", fr.Family, err)
				}
			} else {
				rep = b.missingHooks(ctx, t)
			}
			if rep.empty() {
				continue
			}
			drift.merge(rep)
		}
		delete(b.rules, fr.Family)
		if err := writeRules(ctx, b.cfg.Executor, t, fr); err != nil {
			return n, drift, fmt.Errorf("ipvs: iptables rules (%s): %w", fr.Family, err)
		}
		b.rules[fr.Family] = fr.Text
		n++
	}
	return n, drift, nil
}

// missingHooks checks each hook with iptables -C.
func (b *Backend) missingHooks(ctx context.Context, t iptexec.Tools) *driftReport {
	r := &driftReport{}
	for _, h := range hooks {
		if !h.Present(ctx, b.cfg.Executor, t) {
			r.add(driftJump, "missing "+h.Table+"/"+h.Chain+" -> "+h.Target())
		}
	}
	return r
}

// localAddresses returns the addresses of this network namespace's
// interfaces (node ports live on them).
func localAddresses() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, _ := nodeport.LocalAddresses()
	for _, a := range addrs {
		out[a] = true
	}
	return out
}

// Cleanup implements proxier.Backend: it deletes the virtual servers on
// the addresses of swy-ipvs0, those with a switchyard fwmark and those on
// a local address in the node-port range (none inside Config.ExcludeCIDRs), the
// dummy interface, every SWY-IPVS- chain (both families, both flavours)
// and every SWY- ipset. Foreign virtual servers are left alone.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	k, err := b.ensureKernel()
	var nk Kernel = &NetlinkKernel{}
	if err == nil {
		nk = k
		addrs, err := k.DummyAddresses()
		if err != nil {
			errs = append(errs, err)
		}
		// Diffing against an empty desired state deletes exactly what we own.
		servers, err := k.VirtualServers()
		if err != nil {
			errs = append(errs, err)
		}
		local := localAddresses()
		ops, _ := Diff(&State{}, &Dump{Servers: servers, Addresses: addrs}, DiffOptions{Now: b.cfg.Now(), Owned: func(k Key) bool {
			return b.created[k] || local[k.Addr] && k.Port >= b.cfg.NodePortMin && k.Port <= b.cfg.NodePortMax
		}, Exclude: b.cfg.ExcludeCIDRs})
		for _, o := range ops {
			if o.Kind == OpDelService {
				if err := b.applyOp(ctx, k, o); err != nil {
					errs = append(errs, err)
				}
			}
		}
	} else if b.cfg.Kernel == nil {
		b.log.Info("no IPVS in this kernel; removing interface, chains and sets only", "err", err)
	} else {
		errs = append(errs, err)
	}
	if err := nk.DeleteDummy(); err != nil {
		errs = append(errs, err)
	}
	for _, m := range []iptables.Mode{iptables.ModeNFT, iptables.ModeLegacy} {
		if b.flavour != "" && b.cfg.IPTablesMode != iptables.ModeAuto && m != b.flavour {
			continue
		}
		for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
			if err := cleanupRules(ctx, b.cfg.Executor, iptexec.ToolsFor(m, f), b.cfg.QuickCleanup); err != nil {
				errs = append(errs, err)
			}
		}
	}
	b.rules = map[proxier.IPFamily]string{}
	b.last = nil
	if sets, err := ipsetSave(ctx, b.cfg.Executor); err != nil {
		b.log.Info("ipset not usable; no sets to remove", "err", err)
	} else {
		var ops []Op
		for _, s := range sets {
			ops = append(ops, Op{Kind: OpDestroySet, Set: s})
		}
		if err := ipsetRestore(ctx, b.cfg.Executor, ipsetScript(ops)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stageTimer records how long each stage of a sync took (debug log).
type stageTimer struct {
	last  time.Time
	names []string
	took  []time.Duration
}

func newStageTimer() *stageTimer { return &stageTimer{last: time.Now()} }

// stage ends the stage called name.
func (t *stageTimer) stage(name string) {
	now := time.Now()
	t.names = append(t.names, name)
	t.took = append(t.took, now.Sub(t.last))
	t.last = now
}

func (t *stageTimer) attrs() []any {
	out := make([]any, 0, 2*len(t.names))
	for i, n := range t.names {
		out = append(out, n, t.took[i].Round(time.Millisecond))
	}
	return out
}
