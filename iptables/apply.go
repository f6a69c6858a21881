package iptables

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/switchyard-proxy/switchyard/proxier"
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

// restoreError maps the tool's complaint back to the line of input.
func restoreError(tool string, input, stderr []byte, err error) *RestoreError {
	e := &RestoreError{Tool: tool, Stderr: trim(stderr), Err: err}
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

// chainRE finds the chain iptables-nft names in "Chain 'X' does not exist".
var chainRE = regexp.MustCompile(`Chain '([^']+)'`)

func trim(b []byte) string {
	s := strings.TrimSpace(string(b))
	s = strings.ReplaceAll(s, "\n", "; ")
	if len(s) > 2000 {
		s = s[:2000] + "..."
	}
	return s
}

// restore feeds text to one iptables-restore --noflush --wait.
func (b *Backend) restore(ctx context.Context, t tools, text []byte) error {
	_, stderr, err := b.cfg.Executor.Run(ctx, text, t.restore, "--noflush", "--wait")
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", t.restore, ctx.Err())
		}
		re := restoreError(t.restore, text, stderr, err)
		b.log.Error("iptables-restore failed; previous rules stay, next sync is full",
			"tool", t.restore, "line", re.Line, "text", re.Text, "stderr", re.Stderr)
		return re
	}
	return nil
}

// savedTable is the part of one table's iptables-save output we care about.
type savedTable struct {
	// own lists our chains (SWY- prefix), in save order.
	own []string
	// foreignJumps are rules of other chains that jump to ours, as saved
	// ("-A CHAIN ...").
	foreignJumps []string
}

// saveTable runs iptables-save for one table and parses it.
func saveTable(ctx context.Context, ex Executor, t tools, table string) (*savedTable, error) {
	out, stderr, err := ex.Run(ctx, nil, t.save, "-t", table)
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %s: %w", t.save, table, trim(stderr), err)
	}
	return parseSave(out), nil
}

func parseSave(out []byte) *savedTable {
	st := &savedTable{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"+ChainPrefix):
			name, _, _ := strings.Cut(line[1:], " ")
			st.own = append(st.own, name)
		case strings.HasPrefix(line, "-A ") && !strings.HasPrefix(line, "-A "+ChainPrefix):
			if strings.Contains(line, " -j "+ChainPrefix) || strings.Contains(line, " -g "+ChainPrefix) {
				st.foreignJumps = append(st.foreignJumps, line)
			}
		}
	}
	return st
}

// listOwnChains returns our chains per table as the kernel holds them.
func listOwnChains(ctx context.Context, ex Executor, t tools) (map[string][]string, error) {
	out := map[string][]string{}
	for _, table := range tableOrder {
		st, err := saveTable(ctx, ex, t, table)
		if err != nil {
			return nil, fmt.Errorf("list chains: %w", err)
		}
		out[table] = st.own
	}
	return out, nil
}

// jumpRule is a rule in a built-in chain that hands packets to ours.
type jumpRule struct {
	table, chain string
	args         []string // matches, comment and target
}

func jr(table, from, to, commentText string, matches ...string) jumpRule {
	args := append(matches, "-m", "comment", "--comment", commentText, "-j", to)
	return jumpRule{table: table, chain: from, args: args}
}

var ctNew = []string{"-m", "conntrack", "--ctstate", "NEW"}

// jumpRules lists the jumps from built-in chains, in the order they end up
// at the top of each built-in chain.
var jumpRules = []jumpRule{
	jr(tableNAT, "PREROUTING", chainServices, "switchyard service portals"),
	jr(tableNAT, "OUTPUT", chainServices, "switchyard service portals"),
	jr(tableNAT, "POSTROUTING", chainPostrouting, "switchyard postrouting rules"),
	jr(tableFilter, "INPUT", chainFirewall, "switchyard load balancer firewall", ctNew...),
	jr(tableFilter, "INPUT", chainNodePorts, "switchyard health check service ports"),
	jr(tableFilter, "INPUT", chainExternalServices, "switchyard externally-visible service portals", ctNew...),
	jr(tableFilter, "FORWARD", chainFirewall, "switchyard load balancer firewall", ctNew...),
	jr(tableFilter, "FORWARD", chainForward, "switchyard forwarding rules"),
	jr(tableFilter, "FORWARD", chainServices, "switchyard service portals", ctNew...),
	jr(tableFilter, "FORWARD", chainExternalServices, "switchyard externally-visible service portals", ctNew...),
	jr(tableFilter, "OUTPUT", chainFirewall, "switchyard load balancer firewall", ctNew...),
	jr(tableFilter, "OUTPUT", chainServices, "switchyard service portals", ctNew...),
}

// ensureJumps checks each jump rule with -C and inserts the missing ones.
// Rules are inserted at the top, walking the list backwards so that a
// fresh node ends up with the list's order.
func (b *Backend) ensureJumps(ctx context.Context, t tools) error {
	for i := len(jumpRules) - 1; i >= 0; i-- {
		j := jumpRules[i]
		check := append([]string{"-w", "-t", j.table, "-C", j.chain}, j.args...)
		if _, _, err := b.cfg.Executor.Run(ctx, nil, t.iptables, check...); err == nil {
			continue
		} else if ctx.Err() != nil {
			return ctx.Err()
		}
		ins := append([]string{"-w", "-t", j.table, "-I", j.chain, "1"}, j.args...)
		if _, stderr, err := b.cfg.Executor.Run(ctx, nil, t.iptables, ins...); err != nil {
			return fmt.Errorf("insert jump %s %s -> %s: %s: %w", j.table, j.chain, j.args[len(j.args)-1], trim(stderr), err)
		}
		b.log.Info("inserted jump rule", "table", j.table, "chain", j.chain, "target", j.args[len(j.args)-1])
	}
	return nil
}

// Cleanup implements proxier.Backend: it deletes every rule that jumps to
// a SWY- chain and every SWY- chain, in both families, with one
// iptables-restore per table, leaving all other rules as they were. In
// ModeAuto it cleans both flavours.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	modes := []Mode{b.cfg.Mode}
	if b.cfg.Mode == ModeAuto {
		modes = []Mode{ModeNFT, ModeLegacy}
	}
	var errs []error
	for _, m := range modes {
		for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
			if err := b.cleanupTools(ctx, toolsFor(m, f)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	b.state = map[proxier.IPFamily]*familyState{}
	return errors.Join(errs...)
}

func (b *Backend) cleanupTools(ctx context.Context, t tools) error {
	for _, table := range tableOrder {
		out, stderr, err := b.cfg.Executor.Run(ctx, nil, t.save, "-t", table)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// A flavour or family this node cannot list (tool missing,
			// IPv6 off) holds nothing we could have written.
			b.log.Warn("cleanup: cannot list table, skipping", "tool", t.save, "table", table,
				"stderr", trim(stderr), "err", err)
			return nil
		}
		saved := parseSave(out)
		if len(saved.own) == 0 && len(saved.foreignJumps) == 0 {
			continue
		}
		var sb strings.Builder
		sb.WriteString("*" + table + "\n")
		own := slices.Clone(saved.own)
		for _, c := range own {
			sb.WriteString(":" + c + " - [0:0]\n")
		}
		for _, r := range saved.foreignJumps {
			sb.WriteString("-D " + strings.TrimPrefix(r, "-A ") + "\n")
		}
		for _, c := range own {
			sb.WriteString("-X " + c + "\n")
		}
		sb.WriteString("COMMIT\n")
		if err := b.restore(ctx, t, []byte(sb.String())); err != nil {
			return fmt.Errorf("cleanup %s: %w", table, err)
		}
		b.log.Info("cleaned up", "tool", t.restore, "table", table, "chains", len(own), "jumps", len(saved.foreignJumps))
	}
	return nil
}
