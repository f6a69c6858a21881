package iptexec

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"
)

// RestoreError is returned when iptables-restore rejects its input. The
// kernel keeps the previous rules (restore commits each table atomically).
type RestoreError struct {
	// Tool is the restore binary that failed.
	Tool string
	// Line is the 1-based input line the tool named, or 0 if it named none.
	Line int
	// Text is that input line.
	Text string
	// Stderr is what the tool printed.
	Stderr string
	// Err is the exit error.
	Err error
}

func (e *RestoreError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s failed at input line %d %q: %s: %v", e.Tool, e.Line, e.Text, e.Stderr, e.Err)
	}
	return fmt.Sprintf("%s failed: %s: %v", e.Tool, e.Stderr, e.Err)
}

func (e *RestoreError) Unwrap() error { return e.Err }

// lineRE finds the line number in the restore tools' messages: "line 7
// failed" (legacy), "Error occurred at line: 5", "line 7: CHAIN_DEL failed"
// (nft).
var lineRE = regexp.MustCompile(`line:? (\d+)`)

// chainRE finds the chain iptables-nft names in "Chain 'X' does not exist".
var chainRE = regexp.MustCompile(`Chain '([^']+)'`)

// NewRestoreError maps the tool's complaint back to the line of input.
func NewRestoreError(tool string, input, stderr []byte, err error) *RestoreError {
	e := &RestoreError{Tool: tool, Stderr: Trim(stderr), Err: err}
	if m := lineRE.FindSubmatch(stderr); m != nil {
		n, _ := strconv.Atoi(string(m[1]))
		e.Line = n
		lines := bytes.Split(input, []byte("\n"))
		if n >= 1 && n <= len(lines) {
			e.Text = string(lines[n-1])
		}
		// iptables-nft finds missing jump targets only at COMMIT: point at
		// the first rule of that table that names the chain instead.
		if e.Text == "COMMIT" {
			if cm := chainRE.FindSubmatch(stderr); cm != nil {
				target := " " + string(cm[1])
				for i := n - 2; i >= 0 && !bytes.HasPrefix(lines[i], []byte("*")); i-- {
					l := lines[i]
					if bytes.HasSuffix(l, []byte(target)) || bytes.Contains(l, []byte(target+" ")) {
						e.Line, e.Text = i+1, string(l)
					}
				}
			}
		}
	}
	return e
}

// Restore feeds text to one `iptables-restore --noflush --wait` of t. A
// rejected input returns a *RestoreError; a cancelled ctx returns its
// error.
func Restore(ctx context.Context, ex Executor, t Tools, text []byte) error {
	_, stderr, err := ex.Run(ctx, text, t.Restore, "--noflush", "--wait")
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", t.Restore, ctx.Err())
		}
		return NewRestoreError(t.Restore, text, stderr, err)
	}
	return nil
}
