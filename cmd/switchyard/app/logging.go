package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation/field"
	logsapi "k8s.io/component-base/logs/api/v1"
	jsonlogs "k8s.io/component-base/logs/json"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json, as kube-proxy
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"
)

// Logging follows kube-proxy: klog's flags (-v, --vmodule,
// --logging-format=text|json, --log-flush-frequency) through
// k8s.io/component-base's LoggingConfiguration, klog's text format by
// default. switchyard's own code logs with log/slog; its records go
// through the same logr sink as klog's (client-go's), so every line has
// one format: slog's Warn becomes klog's W line, Debug is V(4).

// addLoggingFlags registers component-base's logging flags on fs.
func addLoggingFlags(c *logsapi.LoggingConfiguration, fs *pflag.FlagSet) {
	logsapi.AddFlags(c, fs)
}

// newLoggingConfiguration returns kube-proxy's logging defaults.
func newLoggingConfiguration() *logsapi.LoggingConfiguration {
	return logsapi.NewLoggingConfiguration()
}

// newLogger builds the logger from the logging configuration and
// --log-level (which filters slog records: debug also raises -v to 4 so
// that debug records are not dropped by verbosity). It also routes klog
// (client-go) to the same sink. The returned function flushes buffered
// output.
func newLogger(c *logsapi.LoggingConfiguration, level string, w io.Writer) (*slog.Logger, func(), error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	if errs := logsapi.Validate(c, nil, field.NewPath("logging")); len(errs) > 0 {
		return nil, nil, fmt.Errorf("logging: %w", errs.ToAggregate())
	}
	verbosity := int(c.Verbosity)
	if lvl <= slog.LevelDebug && verbosity < 4 {
		verbosity = 4
	}
	var logger logr.Logger
	flush := func() {}
	switch c.Format {
	case "json":
		cc := *c
		cc.Verbosity = logsapi.VerbosityLevel(verbosity)
		l, control := jsonlogs.Factory{}.Create(cc, logsapi.LoggingOptions{ErrorStream: w, InfoStream: w})
		logger = l
		if control.Flush != nil {
			flush = control.Flush
		}
	default: // "text", validated above
		cfg := textlogger.NewConfig(textlogger.Verbosity(verbosity), textlogger.Output(w))
		if err := cfg.VModule().Set(logsapi.VModuleConfigurationPflag(&c.VModule).String()); err != nil {
			return nil, nil, fmt.Errorf("--vmodule: %w", err)
		}
		logger = textlogger.NewLogger(cfg)
	}
	klog.SetLogger(logger)
	if d := c.FlushFrequency.Duration.Duration; d > 0 {
		klog.StartFlushDaemon(d)
	}
	return slog.New(&levelFilter{min: lvl, h: logr.ToSlogHandler(logger)}), flush, nil
}

// levelFilter drops slog records below --log-level.
type levelFilter struct {
	min slog.Level
	h   slog.Handler
}

func (f *levelFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= f.min && f.h.Enabled(ctx, l)
}

func (f *levelFilter) Handle(ctx context.Context, r slog.Record) error { return f.h.Handle(ctx, r) }

func (f *levelFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return &levelFilter{min: f.min, h: f.h.WithAttrs(a)}
}

func (f *levelFilter) WithGroup(name string) slog.Handler {
	return &levelFilter{min: f.min, h: f.h.WithGroup(name)}
}
