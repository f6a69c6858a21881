// Package iptexec is the iptables plumbing every switchyard mode that
// writes iptables rules shares: running the tools (Executor), picking the
// flavour (iptables-nft or iptables-legacy, Detect), naming the binaries
// (ToolsFor), parsing iptables-save output (ParseSave), feeding
// iptables-restore (Restore) and the jump rules from built-in chains
// (Jump). It knows nothing about services: the backends render the rules.
package iptexec

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Executor runs one command with the given standard input and returns what
// it printed. A command that exits non-zero returns a non-nil error (stdout
// and stderr are still returned). Tests use it to run everything inside a
// network namespace or to record commands without running them.
type Executor interface {
	Run(ctx context.Context, stdin []byte, name string, args ...string) (stdout, stderr []byte, err error)
}

// CommandExecutor runs commands on this machine with os/exec, each prefixed
// by Prefix (e.g. "ip netns exec NS") when set.
type CommandExecutor struct {
	Prefix []string
}

// NetnsExecutor returns an Executor that runs every command inside the
// named network namespace (`ip netns exec NAME ...`).
func NetnsExecutor(name string) *CommandExecutor {
	return &CommandExecutor{Prefix: []string{"ip", "netns", "exec", name}}
}

// Run implements Executor.
func (e *CommandExecutor) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, []byte, error) {
	argv := append(append(append([]string(nil), e.Prefix...), name), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s: %w", name, err)
	}
	return out.Bytes(), errb.Bytes(), err
}

// Trim shortens a tool's stderr for errors and logs: one line, at most
// 2000 bytes.
func Trim(b []byte) string {
	s := strings.TrimSpace(string(b))
	s = strings.ReplaceAll(s, "\n", "; ")
	if len(s) > 2000 {
		s = s[:2000] + "..."
	}
	return s
}
