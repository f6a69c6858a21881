package ipvs

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Timeouts are IPVS's connection timeouts of the network namespace
// (`ipvsadm --set TCP TCPFIN UDP`, shown by `ipvsadm -L --timeout`):
// kube-proxy's --ipvs-tcp-timeout, --ipvs-tcpfin-timeout and
// --ipvs-udp-timeout. A zero field keeps the kernel's value. The kernel
// counts whole seconds.
type Timeouts struct {
	TCP, TCPFin, UDP time.Duration
}

// IsZero reports whether no timeout is set.
func (t Timeouts) IsZero() bool { return t == Timeouts{} }

// Validate rejects negative timeouts and positive ones under a second
// (the kernel counts seconds: they would silently mean "keep").
func (t Timeouts) Validate() error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"tcp", t.TCP}, {"tcpfin", t.TCPFin}, {"udp", t.UDP}} {
		if f.d < 0 {
			return fmt.Errorf("ipvs %s timeout %v: must not be negative", f.name, f.d)
		}
		if f.d > 0 && f.d < time.Second {
			return fmt.Errorf("ipvs %s timeout %v: the kernel counts whole seconds, want 0 or at least 1s", f.name, f.d)
		}
		if f.d > time.Duration(1<<31-1)*time.Second {
			return fmt.Errorf("ipvs %s timeout %v: too large", f.name, f.d)
		}
	}
	return nil
}

// TimeoutKernel is implemented by Kernels that can read and set IPVS's
// timeouts (NetlinkKernel does). Config.Timeouts needs one.
type TimeoutKernel interface {
	// Timeouts reads the namespace's current timeouts.
	Timeouts() (Timeouts, error)
	// SetTimeouts sets the non-zero fields of t.
	SetTimeouts(t Timeouts) error
}

// timeoutsToWrite returns what must be written for want given have: the
// wanted non-zero fields that differ (whole seconds), and whether any does.
func timeoutsToWrite(want, have Timeouts) (Timeouts, bool) {
	var w Timeouts
	changed := false
	for _, f := range []struct{ want, have, dst *time.Duration }{
		{&want.TCP, &have.TCP, &w.TCP}, {&want.TCPFin, &have.TCPFin, &w.TCPFin}, {&want.UDP, &have.UDP, &w.UDP},
	} {
		if *f.want == 0 {
			continue
		}
		if f.want.Truncate(time.Second) != f.have.Truncate(time.Second) {
			*f.dst = *f.want
			changed = true
		}
	}
	return w, changed
}

// ensureTimeouts reads the kernel's timeouts and writes the configured
// ones that differ (kube-proxy sets them once at start; checking at each
// sync also repairs an `ipvsadm --set` by someone else). It reports
// whether it wrote.
func ensureTimeouts(k Kernel, want Timeouts, log *slog.Logger) (bool, error) {
	if want.IsZero() {
		return false, nil
	}
	tk, ok := k.(TimeoutKernel)
	if !ok {
		return false, errors.New("ipvs: this kernel interface cannot set IPVS timeouts")
	}
	have, err := tk.Timeouts()
	if err != nil {
		return false, fmt.Errorf("ipvs: read timeouts: %w", err)
	}
	w, changed := timeoutsToWrite(want, have)
	if !changed {
		return false, nil
	}
	if err := tk.SetTimeouts(w); err != nil {
		return false, fmt.Errorf("ipvs: set timeouts (tcp %v, tcpfin %v, udp %v): %w", w.TCP, w.TCPFin, w.UDP, err)
	}
	log.Info("set IPVS timeouts", "tcp", want.TCP, "tcpfin", want.TCPFin, "udp", want.UDP,
		"wasTCP", have.TCP, "wasTCPFin", have.TCPFin, "wasUDP", have.UDP)
	return true, nil
}

// excluded reports whether a is inside one of cidrs (--ipvs-exclude-cidrs).
func excluded(a netip.Addr, cidrs []netip.Prefix) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range cidrs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
