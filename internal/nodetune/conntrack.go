// Package nodetune applies the node-wide kernel settings kube-proxy owns
// besides its rules: the conntrack sysctls of --conntrack-* and the
// process's own oom_score_adj (--oom-score-adj). It follows kube-proxy
// v1.37's cmd/kube-proxy/app and pkg/proxy/conntrack semantics: which
// values are written, when, and the nf_conntrack hashsize rule.
package nodetune

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxConntrackLimit caps MaxPerCore × CPUs, as kube-proxy does, so that
// machines with many cores do not reserve an excessive table.
const maxConntrackLimit = 1 << 20

// Conntrack holds the --conntrack-* settings. Zero values mean "leave the
// kernel's value as it is", as in kube-proxy.
type Conntrack struct {
	// MaxPerCore × the node's CPUs, but at least Min, becomes
	// nf_conntrack_max (only ever raised). 0 leaves it and ignores Min.
	MaxPerCore int32
	// Min is the floor of nf_conntrack_max.
	Min int32
	// TCPEstablishedTimeout is nf_conntrack_tcp_timeout_established.
	TCPEstablishedTimeout time.Duration
	// TCPCloseWaitTimeout is nf_conntrack_tcp_timeout_close_wait.
	TCPCloseWaitTimeout time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal to 1.
	TCPBeLiberal bool
	// UDPTimeout is nf_conntrack_udp_timeout.
	UDPTimeout time.Duration
	// UDPStreamTimeout is nf_conntrack_udp_timeout_stream.
	UDPStreamTimeout time.Duration
}

// Tuner writes the settings. The zero value uses the real /proc/sys and
// /sys and the slog default logger.
type Tuner struct {
	// ProcSys is the sysctl root; "" means /proc/sys.
	ProcSys string
	// Sys is the sysfs root holding module/nf_conntrack/parameters/hashsize;
	// "" means /sys.
	Sys string
	// NumCPU returns the node's CPU count; nil reads the online CPUs from
	// sysfs, falling back to runtime.NumCPU.
	NumCPU func() int
	// InInitialNetns reports whether this process shares the network
	// namespace of PID 1. The hashsize is a module parameter, global to the
	// host, so it is only changed from the node's own namespace. nil
	// compares /proc/self/ns/net with /proc/1/ns/net.
	InInitialNetns func() bool
	// Log receives what was changed and what was skipped; nil means
	// slog.Default().
	Log *slog.Logger
}

// ErrReadOnly marks a setting the kernel did not let us write because
// /proc/sys (or the entry) is read-only here, e.g. in a container or in a
// network namespace other than the host's.
var ErrReadOnly = errors.New("read-only")

func (t *Tuner) log() *slog.Logger {
	if t.Log != nil {
		return t.Log
	}
	return slog.Default()
}

func (t *Tuner) sysctlPath(name string) string {
	root := t.ProcSys
	if root == "" {
		root = "/proc/sys"
	}
	return filepath.Join(root, "net", "netfilter", name)
}

func (t *Tuner) hashsizePath() string {
	root := t.Sys
	if root == "" {
		root = "/sys"
	}
	return filepath.Join(root, "module", "nf_conntrack", "parameters", "hashsize")
}

// MaxFor returns the nf_conntrack_max kube-proxy would want for c on a
// node with numCPU CPUs; 0 means leave it alone.
func MaxFor(c Conntrack, numCPU int) int {
	if c.MaxPerCore <= 0 {
		return 0
	}
	scaled := int(c.MaxPerCore) * numCPU
	if scaled > maxConntrackLimit {
		return maxConntrackLimit
	}
	if floor := int(c.Min); floor > scaled {
		return floor
	}
	return scaled
}

// ApplyConntrack writes the conntrack sysctls of c. A read-only /proc/sys
// skips the setting with a warning (the error returned then wraps
// ErrReadOnly, so the caller can go on); any other failure is returned.
func (t *Tuner) ApplyConntrack(c Conntrack) error {
	var readOnly []error
	if want := MaxFor(c, t.numCPU()); want > 0 {
		if err := t.raiseMax(want); err != nil {
			if !errors.Is(err, ErrReadOnly) {
				return err
			}
			readOnly = append(readOnly, err)
		}
	}
	for _, s := range []struct {
		name  string
		value int
	}{
		{"nf_conntrack_tcp_timeout_established", seconds(c.TCPEstablishedTimeout)},
		{"nf_conntrack_tcp_timeout_close_wait", seconds(c.TCPCloseWaitTimeout)},
		{"nf_conntrack_tcp_be_liberal", boolInt(c.TCPBeLiberal)},
		{"nf_conntrack_udp_timeout", seconds(c.UDPTimeout)},
		{"nf_conntrack_udp_timeout_stream", seconds(c.UDPStreamTimeout)},
	} {
		if s.value <= 0 {
			continue
		}
		if err := t.setSysctl(s.name, s.value); err != nil {
			if !errors.Is(err, ErrReadOnly) {
				return err
			}
			readOnly = append(readOnly, err)
		}
	}
	return errors.Join(readOnly...)
}

// raiseMax sets nf_conntrack_max to want unless it is already at least
// that, then grows the hashsize to want/4 if it is smaller (kube-proxy's
// rule). When the max cannot be written, the hashsize is left alone.
func (t *Tuner) raiseMax(want int) error {
	cur, err := t.readInt(t.sysctlPath("nf_conntrack_max"))
	if err != nil || cur < want {
		if err := t.write(t.sysctlPath("nf_conntrack_max"), want); err != nil {
			return err
		}
	}
	hashsize, err := t.readInt(t.hashsizePath())
	if err != nil {
		return fmt.Errorf("reading the conntrack hashsize: %w", err)
	}
	if hashsize >= want/4 {
		return nil
	}
	if !t.inInitialNetns() {
		t.log().Warn("not raising the conntrack hashsize: it is global to the host and this process is not in the host's network namespace",
			"hashsize", hashsize, "wanted", want/4)
		return nil
	}
	t.log().Info("setting the conntrack hashsize", "hashsize", want/4)
	return t.writeRaw(t.hashsizePath(), want/4, 0o640)
}

// setSysctl writes a net/netfilter sysctl if it differs.
func (t *Tuner) setSysctl(name string, value int) error {
	p := t.sysctlPath(name)
	if cur, err := t.readInt(p); err == nil && cur == value {
		return nil
	}
	return t.write(p, value)
}

func (t *Tuner) write(path string, value int) error {
	t.log().Info("setting sysctl", "entry", "net/netfilter/"+filepath.Base(path), "value", value)
	return t.writeRaw(path, value, 0o644)
}

func (t *Tuner) writeRaw(path string, value int, perm fs.FileMode) error {
	err := os.WriteFile(path, []byte(strconv.Itoa(value)), perm)
	if err == nil {
		return nil
	}
	if errors.Is(err, syscall.EROFS) || errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("setting %s to %d: %w (%w)", path, value, ErrReadOnly, err)
	}
	return fmt.Errorf("setting %s to %d: %w", path, value, err)
}

func (t *Tuner) readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

func (t *Tuner) numCPU() int {
	if t.NumCPU != nil {
		return t.NumCPU()
	}
	return OnlineCPUs()
}

func (t *Tuner) inInitialNetns() bool {
	if t.InInitialNetns != nil {
		return t.InInitialNetns()
	}
	self, err1 := os.Readlink("/proc/self/ns/net")
	init, err2 := os.Readlink("/proc/1/ns/net")
	return err1 == nil && err2 == nil && self == init
}

// OnlineCPUs counts the node's online CPUs from
// /sys/devices/system/cpu/online (not the process's cpuset, since the
// conntrack table is host-wide); it falls back to runtime.NumCPU.
func OnlineCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, ranged := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return runtime.NumCPU()
		}
		b := a
		if ranged {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return runtime.NumCPU()
			}
		}
		n += b - a + 1
	}
	if n <= 0 {
		return runtime.NumCPU()
	}
	return n
}

func seconds(d time.Duration) int { return int(d / time.Second) }

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
