package node

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// teardown stops everything the bed started and removes what it made:
// kubelets first (no pod restarts behind our back), then every process in
// the nodes' pod cgroups, containerd's shims, containerd, the control
// plane; then mounts under the scratch folder (the nodes' mount namespace
// files: with their last process gone, the namespaces and every mount in
// them go too), the pod cgroups, the network namespaces and the scratch
// folder. Global sysctls kubelet changed are put back by the last bed
// running on the host. It keeps going on errors and returns them all.
func (b *Bed) teardown() error {
	var errs []error
	for _, n := range b.Nodes {
		if n.kubelet != nil {
			n.kubelet.stop(10 * time.Second)
		}
	}
	for _, n := range b.Nodes {
		if err := killCgroup(n.CgroupRoot); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range b.Nodes {
		for _, pid := range shimPIDs(n.Socket()) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if n.containerd != nil {
			n.containerd.stop(10 * time.Second)
		}
	}
	b.mu.Lock()
	procs := append([]*proc(nil), b.procs...)
	b.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(10 * time.Second)
	}
	if b.Cluster != nil {
		if err := b.Cluster.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop control plane: %w", err))
		}
	}
	if err := unmountUnder(b.Dir); err != nil {
		errs = append(errs, err)
	}
	for _, n := range b.Nodes {
		if err := removeCgroupRoot(n.CgroupRoot); err != nil {
			errs = append(errs, err)
		}
	}
	nss := []string{b.OutNS, b.CPNS}
	for _, n := range b.Nodes {
		nss = append(nss, n.NS)
	}
	for _, ns := range nss {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			if err := ipCmd("netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := b.restoreSysctls(); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(b.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove scratch dir: %w", err))
	}
	return errors.Join(errs...)
}

// killCgroup SIGKILLs every process in the cgroup tree root (pids
// hierarchy: every pod container and sandbox of a node) until it is empty.
func killCgroup(root string) error {
	dir := filepath.Join("/sys/fs/cgroup/pids", root)
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := cgroupPIDs(dir)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes left in %s: %v", dir, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func cgroupPIDs(dir string) []int {
	var pids []int
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// removeCgroupRoot removes the cgroup tree root in every hierarchy,
// deepest folders first.
func removeCgroupRoot(root string) error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		top := filepath.Join(h, root)
		var dirs []string
		_ = filepath.WalkDir(top, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for i := 0; i < 50; i++ { // a cgroup is busy for a moment after its last process exits
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// shimPIDs finds the containerd shims serving the containerd at address
// (their command line names it).
func shimPIDs(address string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := bytes.Split(cmdline, []byte{0})
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(string(args[0])), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if string(args[i]) == "-address" && string(args[i+1]) == address {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// unmountUnder detaches every mount point below dir (deepest first),
// repeating while kubelet's shared bind mounts bring new ones.
func unmountUnder(dir string) error {
	for round := 0; round < 10; round++ {
		mps, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mps) == 0 {
			return nil
		}
		sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
		for _, mp := range mps {
			_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		}
	}
	mps, _ := mountsUnder(dir)
	if len(mps) > 0 {
		return fmt.Errorf("mounts left under %s: %v", dir, mps)
	}
	return nil
}

func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, s.Err()
}

// unescapeMount decodes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
