package iptables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
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
