package nodetune

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMaxFor(t *testing.T) {
	for _, c := range []struct {
		c    Conntrack
		cpus int
		want int
	}{
		{Conntrack{MaxPerCore: 0, Min: 131072}, 4, 0},
		{Conntrack{MaxPerCore: 32768, Min: 131072}, 2, 131072},
		{Conntrack{MaxPerCore: 32768, Min: 131072}, 8, 262144},
		{Conntrack{MaxPerCore: 131072}, 64, maxConntrackLimit},
	} {
		if got := MaxFor(c.c, c.cpus); got != c.want {
			t.Errorf("MaxFor(%+v, %d) = %d, want %d", c.c, c.cpus, got, c.want)
		}
	}
}

// fakeRoots lays out a /proc/sys and /sys with the entries Tuner uses.
func fakeRoots(t *testing.T, max, hashsize int) (string, string) {
	t.Helper()
	procSys, sys := t.TempDir(), t.TempDir()
	nf := filepath.Join(procSys, "net", "netfilter")
	mod := filepath.Join(sys, "module", "nf_conntrack", "parameters")
	for _, d := range []string{nf, mod} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string, v int) {
		if err := os.WriteFile(p, []byte(strconv.Itoa(v)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(nf, "nf_conntrack_max"), max)
	write(filepath.Join(mod, "hashsize"), hashsize)
	for _, n := range []string{"nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_close_wait",
		"nf_conntrack_tcp_be_liberal", "nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"} {
		write(filepath.Join(nf, n), 7)
	}
	return procSys, sys
}

func readInt(t *testing.T, p string) int {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestApplyConntrackRaisesMaxAndHashsize(t *testing.T) {
	procSys, sys := fakeRoots(t, 1000, 100)
	tu := &Tuner{ProcSys: procSys, Sys: sys, NumCPU: func() int { return 4 }, InInitialNetns: func() bool { return true }}
	c := Conntrack{MaxPerCore: 32768, Min: 131072, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour,
		TCPBeLiberal: true, UDPTimeout: 30 * time.Second, UDPStreamTimeout: 2 * time.Minute}
	if err := tu.ApplyConntrack(c); err != nil {
		t.Fatal(err)
	}
	nf := filepath.Join(procSys, "net", "netfilter")
	for name, want := range map[string]int{
		"nf_conntrack_max": 131072, "nf_conntrack_tcp_timeout_established": 86400, "nf_conntrack_tcp_timeout_close_wait": 3600,
		"nf_conntrack_tcp_be_liberal": 1, "nf_conntrack_udp_timeout": 30, "nf_conntrack_udp_timeout_stream": 120,
	} {
		if got := readInt(t, filepath.Join(nf, name)); got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	if got := readInt(t, filepath.Join(sys, "module", "nf_conntrack", "parameters", "hashsize")); got != 131072/4 {
		t.Errorf("hashsize = %d, want %d", got, 131072/4)
	}
}

func TestApplyConntrackLeavesWhatIsZeroOrLarger(t *testing.T) {
	procSys, sys := fakeRoots(t, 500000, 200000)
	tu := &Tuner{ProcSys: procSys, Sys: sys, NumCPU: func() int { return 4 }, InInitialNetns: func() bool { return true }}
	// k3s's line: --conntrack-max-per-core=0 --conntrack-tcp-timeout-*=0s.
	if err := tu.ApplyConntrack(Conntrack{MaxPerCore: 0, Min: 131072}); err != nil {
		t.Fatal(err)
	}
	nf := filepath.Join(procSys, "net", "netfilter")
	if got := readInt(t, filepath.Join(nf, "nf_conntrack_max")); got != 500000 {
		t.Errorf("max changed to %d", got)
	}
	for _, n := range []string{"nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_be_liberal", "nf_conntrack_udp_timeout"} {
		if got := readInt(t, filepath.Join(nf, n)); got != 7 {
			t.Errorf("%s changed to %d", n, got)
		}
	}
	// A larger current max is never lowered, and a large enough hashsize stays.
	if err := tu.ApplyConntrack(Conntrack{MaxPerCore: 32768, Min: 131072}); err != nil {
		t.Fatal(err)
	}
	if got := readInt(t, filepath.Join(nf, "nf_conntrack_max")); got != 500000 {
		t.Errorf("max lowered to %d", got)
	}
	if got := readInt(t, filepath.Join(sys, "module", "nf_conntrack", "parameters", "hashsize")); got != 200000 {
		t.Errorf("hashsize changed to %d", got)
	}
}

func TestHashsizeOnlyFromTheHostNamespace(t *testing.T) {
	procSys, sys := fakeRoots(t, 1000, 100)
	tu := &Tuner{ProcSys: procSys, Sys: sys, NumCPU: func() int { return 1 }, InInitialNetns: func() bool { return false }}
	if err := tu.ApplyConntrack(Conntrack{MaxPerCore: 4096}); err != nil {
		t.Fatal(err)
	}
	if got := readInt(t, filepath.Join(sys, "module", "nf_conntrack", "parameters", "hashsize")); got != 100 {
		t.Errorf("hashsize changed to %d from another network namespace", got)
	}
}

func TestMissingProcSysIsAnError(t *testing.T) {
	tu := &Tuner{ProcSys: filepath.Join(t.TempDir(), "nope"), Sys: t.TempDir(), NumCPU: func() int { return 1 }}
	err := tu.ApplyConntrack(Conntrack{TCPBeLiberal: true})
	if err == nil || errors.Is(err, ErrReadOnly) {
		t.Fatalf("want a plain error, got %v", err)
	}
}

func TestOnlineCPUs(t *testing.T) {
	if n := OnlineCPUs(); n < 1 {
		t.Fatalf("OnlineCPUs = %d", n)
	}
}
