// Command iptables-wrapper makes the unflavoured iptables commands of
// switchyard's image (iptables, iptables-save, iptables-restore and their
// ip6tables twins) use the flavour the host already uses, as kube-proxy's
// images do.
//
// The image links those six names to this program. On its first run it
// decides the flavour with internal/iptexec.Detect, the rule of switchyard's
// own --iptables-backend=auto:
//
//  1. kubelet's hint chains (KUBE-IPTABLES-HINT, or the older
//     KUBE-KUBELET-CANARY) in the mangle table: the flavour holding them is
//     the one kubelet uses (nft looked at first);
//  2. otherwise the flavour holding more rules in both families wins, nft on
//     a tie.
//
// It then re-points the six links at xtables-<flavour>-multi, so later calls
// do not come here again, and executes the command it was called as. When
// the links cannot be changed (a read-only root file system) it still
// executes the right binary and decides again next time.
//
// Run by its own name, `iptables-wrapper` prints the flavour it would pick.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
)

// names are the commands the wrapper stands in for.
var names = []string{
	"iptables", "iptables-save", "iptables-restore",
	"ip6tables", "ip6tables-save", "ip6tables-restore",
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "iptables-wrapper: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	dir := "/usr/sbin" // where the image installs it
	if self, err := os.Executable(); err == nil {
		dir = filepath.Dir(self)
	}
	called := filepath.Base(os.Args[0])

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	mode, err := iptexec.Detect(ctx, &iptexec.CommandExecutor{})
	cancel()
	if err != nil {
		return fmt.Errorf("pick the iptables flavour: %w", err)
	}
	multi := filepath.Join(dir, "xtables-"+string(mode)+"-multi")
	if !isWrapped(called) {
		fmt.Println(mode)
		return nil
	}
	if err := relink(dir, filepath.Base(multi)); err != nil {
		fmt.Fprintf(os.Stderr, "iptables-wrapper: using iptables-%s without relinking: %v\n", mode, err)
	}
	// xtables-*-multi dispatches on the base name of argv[0].
	if err := syscall.Exec(multi, append([]string{called}, os.Args[1:]...), os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", multi, err)
	}
	return nil
}

func isWrapped(name string) bool {
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// relink points every wrapped name in dir at target, each atomically (a
// new link renamed over the old one).
func relink(dir, target string) error {
	for _, n := range names {
		tmp := filepath.Join(dir, "."+n+".iptables-wrapper")
		_ = os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			return fmt.Errorf("link %s: %w", n, err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, n)); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("link %s: %w", n, err)
		}
	}
	return nil
}
