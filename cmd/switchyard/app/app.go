package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/pflag"

	"github.com/switchyard-proxy/switchyard/conntrack"
	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/ipvs"
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
	log, err := newLogger(o.LogLevel, stderr)
	if err != nil {
		return usageError{err}
	}
	if o.ConfigFile != "" {
		explicit := map[string]bool{}
		fs.Visit(func(f *pflag.Flag) { explicit[f.Name] = true })
		warnings, err := o.loadConfigFile(o.ConfigFile, explicit)
		if err != nil {
			return usageError{err}
		}
		for _, w := range warnings {
			log.Warn(w)
		}
	}
	s, err := o.validate()
	if err != nil {
		return usageError{err}
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

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// backendFactory builds backends, with conntrack cleanup in every mode;
// tests replace it with fakes.
var backendFactory = func(o *Options, log *slog.Logger) (proxier.Backend, error) {
	b, err := newBackend(o, log)
	if err != nil {
		return nil, err
	}
	return conntrack.Wrap(b, conntrack.Config{Logger: log}), nil
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
		b, err := ipvs.New(ipvs.Config{
			Scheduler:    o.IPVSScheduler,
			GracePeriod:  o.IPVSGracePeriod,
			StrictARP:    o.IPVSStrictARP,
			NodePortMin:  lo,
			NodePortMax:  hi,
			IPTablesMode: iptables.Mode(o.IPTablesBackend),
			Logger:       log,
		})
		if err != nil {
			return nil, fmt.Errorf("ipvs mode: %w", err)
		}
		return b, nil
	case ModeNFTables:
		return nil, fmt.Errorf("proxy mode %s is not implemented yet (use --proxy-mode=iptables or ipvs)", o.ProxyMode)
	}
	return nil, usageError{fmt.Errorf("unknown proxy mode %q", o.ProxyMode)}
}

// cleanupAll removes what every mode may have left: like kube-proxy's
// --cleanup, it does not depend on the mode the node ran before.
func cleanupAll(ctx context.Context, o *Options, log *slog.Logger) error {
	var errs []error
	for _, mode := range []string{ModeIPTables, ModeIPVS} {
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
