package ipvs

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Sysctl reads and writes kernel parameters by their /proc/sys path
// ("net/ipv4/vs/conntrack").
type Sysctl interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// ProcSysctl is the real Sysctl under /proc/sys.
type ProcSysctl struct{}

// Get implements Sysctl.
func (ProcSysctl) Get(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Set implements Sysctl.
func (ProcSysctl) Set(name, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("write sysctl %s: %w", name, err)
	}
	return nil
}

// sysctlSetting is one wanted kernel parameter value.
type sysctlSetting struct{ name, value, why string }

// wantedSysctls lists what the IPVS mode needs, as kube-proxy sets it.
func wantedSysctls(s Sysctl, strictARP bool) []sysctlSetting {
	w := []sysctlSetting{
		{"net/ipv4/ip_forward", "1", "forward service traffic"},
		{"net/ipv4/vs/conntrack", "1", "keep conntrack entries for IPVS connections (iptables SNAT and marks)"},
		{"net/ipv4/vs/expire_nodest_conn", "1", "drop connections to deleted real servers"},
		{"net/ipv4/vs/expire_quiescent_template", "1", "expire persistence templates of weight-0 real servers"},
	}
	// Kernels 4.1 to 5.8 stall reused connections to removed real servers
	// with conn_reuse_mode=1; 5.9 fixed that, so it is left alone there.
	if rel, err := s.Get("kernel/osrelease"); err == nil {
		if maj, mnr, ok := kernelVersion(rel); ok && (maj > 4 || maj == 4 && mnr >= 1) && (maj < 5 || maj == 5 && mnr < 9) {
			w = append(w, sysctlSetting{"net/ipv4/vs/conn_reuse_mode", "0", "kernel older than 5.9"})
		}
	}
	if strictARP {
		w = append(w,
			sysctlSetting{"net/ipv4/conf/all/arp_ignore", "1", "strict ARP: answer only for addresses of the receiving interface"},
			sysctlSetting{"net/ipv4/conf/all/arp_announce", "2", "strict ARP: never announce swy-ipvs0 addresses"})
	}
	return w
}

// kernelVersion parses "6.1.0-26-amd64" into 6, 1.
func kernelVersion(rel string) (int, int, bool) {
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	maj, err1 := strconv.Atoi(parts[0])
	minStr := parts[1]
	if i := strings.IndexFunc(minStr, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minStr = minStr[:i]
	}
	mnr, err2 := strconv.Atoi(minStr)
	return maj, mnr, err1 == nil && err2 == nil
}

// ensureSysctls sets the wanted values that differ, logging each change.
// It returns how many it wrote.
func ensureSysctls(s Sysctl, strictARP bool, log *slog.Logger) (int, error) {
	n := 0
	for _, w := range wantedSysctls(s, strictARP) {
		cur, err := s.Get(w.name)
		if err != nil {
			return n, err
		}
		if cur == w.value {
			continue
		}
		if err := s.Set(w.name, w.value); err != nil {
			return n, err
		}
		n++
		log.Info("set sysctl", "name", w.name, "from", cur, "to", w.value, "why", w.why)
	}
	return n, nil
}
