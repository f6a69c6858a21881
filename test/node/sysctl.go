package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// kubeletSysctls are the global (not per network namespace) kernel
// settings kubelet sets when it starts.
var kubeletSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// sysctlState is where beds running at the same time on a host agree on
// the host's own values: the first bed records them, every bed adds its
// PID, and the last one to stop (dead PIDs do not count) writes them back.
const (
	sysctlState = "/run/swynode-sysctls.json"
	sysctlLock  = "/run/swynode-sysctls.lock"
)

type sysctlFile struct {
	Values map[string]string `json:"values"`
	PIDs   []int             `json:"pids"`
}

// withSysctlState runs fn on the shared state under the host-wide lock and
// writes it back (or removes it when fn leaves no PID).
func withSysctlState(fn func(*sysctlFile) error) error {
	lock, err := os.OpenFile(sysctlLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("sysctl lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("take sysctl lock: %w", err)
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()
	var st sysctlFile
	data, err := os.ReadFile(sysctlState)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &st); err != nil {
			return fmt.Errorf("parse %s: %w", sysctlState, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("read %s: %w", sysctlState, err)
	}
	alive := st.PIDs[:0]
	for _, p := range st.PIDs {
		if syscall.Kill(p, 0) == nil {
			alive = append(alive, p)
		}
	}
	st.PIDs = alive
	if err := fn(&st); err != nil {
		return err
	}
	if len(st.PIDs) == 0 {
		if err := os.Remove(sysctlState); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", sysctlState, err)
		}
		return nil
	}
	data, err = json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode sysctl state: %w", err)
	}
	if err := os.WriteFile(sysctlState, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", sysctlState, err)
	}
	return nil
}

// saveSysctls registers this bed and, if no other bed (or a crashed one
// that never restored them) recorded them already, the host's values.
func (b *Bed) saveSysctls() error {
	return withSysctlState(func(st *sysctlFile) error {
		if st.Values == nil {
			st.Values = map[string]string{}
			for _, k := range kubeletSysctls {
				v, err := os.ReadFile("/proc/sys/" + k)
				if err != nil {
					return fmt.Errorf("read sysctl %s: %w", k, err)
				}
				st.Values[k] = strings.TrimSpace(string(v))
			}
		}
		st.PIDs = append(st.PIDs, os.Getpid())
		b.sysctlsSaved = true
		return nil
	})
}

// restoreSysctls unregisters this bed and, if it was the last one, puts
// the host's values back.
func (b *Bed) restoreSysctls() error {
	if !b.sysctlsSaved {
		return nil
	}
	return withSysctlState(func(st *sysctlFile) error {
		for i, p := range st.PIDs {
			if p == os.Getpid() {
				st.PIDs = append(st.PIDs[:i], st.PIDs[i+1:]...)
				break
			}
		}
		if len(st.PIDs) > 0 {
			return nil
		}
		var errs []error
		for k, v := range st.Values {
			cur, err := os.ReadFile("/proc/sys/" + k)
			if err == nil && strings.TrimSpace(string(cur)) == v {
				continue
			}
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restore sysctl %s: %w", k, err))
			}
		}
		return errors.Join(errs...)
	})
}
