package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/switchyard-proxy/switchyard/conntrack"
	"github.com/switchyard-proxy/switchyard/hostport"
	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/internal/kubeproxyclean"
	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/ipvs"
	"github.com/switchyard-proxy/switchyard/nftables"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// Version is switchyard's version, set at build time with
// -ldflags "-X github.com/switchyard-proxy/switchyard/cmd/switchyard/app.Version=...".
var Version = "v0.1.0-dev"

// usageError marks errors in flags or configuration: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

const usage = `switchyard: a drop-in replacement for kube-proxy.

Usage:
  switchyard [flags]          run the proxy (see --help for flags)
  switchyard plan [flags]     print the plan (Snapshot) for --manifests DIR as YAML
  switchyard rules [flags]    print what --proxy-mode would program for --manifests DIR
  switchyard version          print the version
`

// Main runs switchyard with the given arguments (without the program
// name) and returns the process exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := run(ctx, args, stdout, stderr)
	if err == nil {
		return 0
	}
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "switchyard:", oneLine(err.Error()))
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, "switchyard", Version)
		return nil
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	case "", "plan", "rules":
	default:
		return usageError{fmt.Errorf("unknown command %q (want plan, rules or version)", cmd)}
	}
	o := defaultOptions()
	name := "switchyard"
	if cmd != "" {
		name += " " + cmd
	}
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetNormalizeFunc(normalizeFlagName)
	fs.SetOutput(stderr)
	o.addFlags(fs, cmd == "")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage, "\nFlags:\n", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	switch o.Version {
	case "", "false":
	case "true", "raw":
		fmt.Fprintln(stdout, "switchyard", Version)
		return nil
	default:
		// kube-proxy's --version=vX.Y.Z overrides the reported version.
		fmt.Fprintln(stdout, "switchyard", o.Version)
		return nil
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { explicit[f.Name] = true })
	var warnings []string
	if o.ConfigFile != "" {
		w, err := o.loadConfigFile(o.ConfigFile, explicit)
		if err != nil {
			return usageError{err}
		}
		warnings = w
	}
	o.applyKubeProxyFlags(explicit)
	if !explicit["log-level"] && o.Logging.Verbosity >= 4 {
		// kube-proxy's -v=4 and up shows debug records.
		o.LogLevel = "debug"
	}
	log, flush, err := newLogger(o.Logging, o.LogLevel, stderr)
	if err != nil {
		return usageError{err}
	}
	defer flush()
	fs.Visit(func(f *pflag.Flag) {
		if reason, ok := noEffectFlags[f.Name]; ok {
			log.Warn("flag has no effect in switchyard", "flag", "--"+f.Name, "reason", reason)
		}
	})
	for _, w := range warnings {
		log.Warn(w)
	}
	s, err := o.validate()
	if err != nil {
		return usageError{err}
	}
	if o.WriteConfigTo != "" {
		if err := o.writeConfig(o.WriteConfigTo); err != nil {
			return err
		}
		log.Info("wrote configuration", "file", o.WriteConfigTo)
		return nil
	}
	switch cmd {
	case "plan":
		snaps, problems, err := loadPlan(o, s, stderr, log)
		if err != nil {
			return err
		}
		return writePlan(stdout, snaps, problems)
	case "rules":
		snaps, problems, err := loadPlan(o, s, stderr, log)
		if err != nil {
			return err
		}
		for _, p := range problems {
			fmt.Fprintln(stderr, "warning:", p.String())
		}
		b, err := backendFactory(o, log)
		if err != nil {
			return err
		}
		r, ok := b.(proxier.Renderer)
		if !ok {
			return fmt.Errorf("proxy mode %s cannot render its rules", o.ProxyMode)
		}
		text, err := r.Render(snaps)
		if err != nil {
			return fmt.Errorf("rendering %s rules: %w", o.ProxyMode, err)
		}
		_, err = io.WriteString(stdout, text)
		return err
	}
	return runProxy(ctx, o, s, log)
}

// backendFactory builds backends, with host ports and conntrack cleanup in
// every mode; tests replace it with fakes.
var backendFactory = func(o *Options, log *slog.Logger) (proxier.Backend, error) {
	b, err := newBackend(o, log)
	if err != nil {
		return nil, err
	}
	hp := hostport.Wrap(b, hostport.Config{Mode: iptexec.Mode(o.IPTablesBackend), Logger: log,
		Auto: o.HostPortMode == "auto", Disabled: o.HostPortMode == "off", NoReserve: o.Once})
	return conntrack.Wrap(hp, conntrack.Config{Logger: log}), nil
}

// modeOnly returns the proxy mode inside backendFactory's decorations
// without the host ports: cleaning another mode's leftovers must not remove
// the host-port chains, which every mode shares.
func modeOnly(b proxier.Backend) proxier.Backend {
	for {
		switch x := b.(type) {
		case *conntrack.Reconciler:
			b = x.Unwrap()
		case *hostport.Programmer:
			return x.Unwrap()
		default:
			return b
		}
	}
}

// newBackend builds the backend of the chosen proxy mode.
func newBackend(o *Options, log *slog.Logger) (proxier.Backend, error) {
	switch o.ProxyMode {
	case ModeIPTables:
		b, err := iptables.New(iptables.Config{Mode: iptables.Mode(o.IPTablesBackend), Logger: log})
		if err != nil {
			return nil, fmt.Errorf("iptables mode: %w", err)
		}
		return b, nil
	case ModeIPVS:
		lo, hi, err := parsePortRange(o.NodePortRange)
		if err != nil {
			return nil, usageError{err}
		}
		exclude, err := o.ipvsExcludeCIDRs()
		if err != nil {
			return nil, usageError{err}
		}
		b, err := ipvs.New(ipvs.Config{
			Scheduler:    o.IPVSScheduler,
			Timeouts:     o.ipvsTimeouts(),
			ExcludeCIDRs: exclude,
			GracePeriod:  o.IPVSGracePeriod,
			StrictARP:    o.IPVSStrictARP,
			NodePortMin:  lo,
			NodePortMax:  hi,
			IPTablesMode: iptables.Mode(o.IPTablesBackend),
			QuickCleanup: o.quickCleanup,
			Logger:       log,
		})
		if err != nil {
			return nil, fmt.Errorf("ipvs mode: %w", err)
		}
		return b, nil
	case ModeNFTables:
		b, err := nftables.New(nftables.Config{Logger: log})
		if err != nil {
			return nil, fmt.Errorf("nftables mode: %w", err)
		}
		return b, nil
	}
	return nil, usageError{fmt.Errorf("unknown proxy mode %q", o.ProxyMode)}
}

// cleanupOtherModes removes what the other switchyard modes may have left
// on the node (chains, ipsets, swy-ipvs0, virtual servers), as upstream
// cleans other modes when it starts. Each mode owns distinct names, so the
// active mode's state is untouched. Failures are logged: a mode the kernel
// cannot run (IPVS here) has nothing to clean.
func cleanupOtherModes(ctx context.Context, o *Options, active proxier.Backend, log *slog.Logger) {
	for _, mode := range []string{ModeIPTables, ModeIPVS, ModeNFTables} {
		if mode == o.ProxyMode {
			continue
		}
		mo := *o
		mo.ProxyMode = mode
		mo.quickCleanup = true
		b, err := backendFactory(&mo, log)
		if err != nil {
			log.Info("no leftovers of another mode to clean", "mode", mode, "reason", err.Error())
			continue
		}
		if b == active || b.Name() == active.Name() {
			continue
		}
		if err := modeOnly(b).Cleanup(ctx); err != nil {
			log.Info("cleaning another mode's leftovers failed", "mode", mode, "err", err)
			continue
		}
		log.Info("removed what another switchyard mode left (if anything)", "mode", mode)
	}
}

// cleanupKubeProxy removes upstream kube-proxy's leftovers
// (--cleanup-kube-proxy); it runs after switchyard's own first successful
// sync, so the node always has service rules. Failures are logged, not
// fatal: what could not be removed stays (a later start with the flag
// tries again). In IPVS mode only the virtual servers on kube-ipvs0's
// addresses are removed: the node-port ones have the same keys as
// switchyard's and its own sync reconciles them.
func cleanupKubeProxy(ctx context.Context, o *Options, log *slog.Logger) {
	cfg := kubeproxyclean.Config{Log: log, KeepVirtualServers: o.ProxyMode == ModeIPVS}
	// --ipvs-exclude-cidrs protects other IPVS users' virtual servers here
	// too (the flag was validated at start).
	if exclude, _ := o.ipvsExcludeCIDRs(); len(exclude) > 0 {
		cfg.KeepVirtualServer = func(v kubeproxyclean.VirtualServer) bool {
			return v.FWMark == 0 && slices.ContainsFunc(exclude, func(p netip.Prefix) bool { return p.Contains(v.Addr) })
		}
	}
	if _, err := kubeProxyCleaner(ctx, cfg); err != nil {
		log.Warn("removing kube-proxy's leftovers failed in part; what failed stays", "err", err)
	}
}

// kubeProxyCleaner is kubeproxyclean.Clean; tests replace it.
var kubeProxyCleaner = kubeproxyclean.Clean

// cleanupAll removes what every mode may have left: like kube-proxy's
// --cleanup, it does not depend on the mode the node ran before.
func cleanupAll(ctx context.Context, o *Options, log *slog.Logger) error {
	var errs []error
	for _, mode := range []string{ModeIPTables, ModeIPVS, ModeNFTables} {
		mo := *o
		mo.ProxyMode = mode
		b, err := backendFactory(&mo, log)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := b.Cleanup(ctx); err != nil {
			errs = append(errs, fmt.Errorf("cleanup of %s mode: %w", b.Name(), err))
			continue
		}
		log.Info("cleanup done", "mode", b.Name())
	}
	return errors.Join(errs...)
}
