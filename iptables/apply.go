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
	// rules counts the rules of each chain that is not ours.
	rules map[string]int
}

// saveTable runs iptables-save for one table and parses it.
func saveTable(ctx context.Context, ex Executor, t tools, table string) (*savedTable, error) {
	out, stderr, err := ex.Run(ctx, nil, t.save, "-t", table)
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %s: %w", t.save, table, trim(stderr), err)
	}
	return parseSave(out), nil
}

// otherModePrefix starts the chains of switchyard's IPVS mode: they share
// the SWY- prefix but belong to that mode (its Cleanup removes them, and a
// node switching modes runs it), so this mode never lists, deletes or
// unhooks them.
const otherModePrefix = "SWY-IPVS-"

func parseSave(out []byte) *savedTable {
	st := &savedTable{rules: map[string]int{}}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"+otherModePrefix):
		case strings.HasPrefix(line, ":"+ChainPrefix):
			name, _, _ := strings.Cut(line[1:], " ")
			st.own = append(st.own, name)
		case strings.HasPrefix(line, "-A ") && !strings.HasPrefix(line, "-A "+ChainPrefix):
			name, _, _ := strings.Cut(line[3:], " ")
			st.rules[name]++
			if (strings.Contains(line, " -j "+ChainPrefix) || strings.Contains(line, " -g "+ChainPrefix)) &&
				!strings.Contains(line, " -j "+otherModePrefix) && !strings.Contains(line, " -g "+otherModePrefix) {
				st.foreignJumps = append(st.foreignJumps, line)
			}
		}
	}
	return st
}

// saveTables runs iptables-save for each of our tables.
func saveTables(ctx context.Context, ex Executor, t tools) (map[string]*savedTable, error) {
	out := map[string]*savedTable{}
	for _, table := range tableOrder {
		st, err := saveTable(ctx, ex, t, table)
		if err != nil {
			return nil, fmt.Errorf("list chains: %w", err)
		}
		out[table] = st
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

// line returns the rule as restore input after op ("-A CHAIN" or
// "-I CHAIN N"), quoting arguments that hold spaces.
func (j jumpRule) line(op string) string {
	var sb strings.Builder
	sb.WriteString(op)
	for _, a := range j.args {
		sb.WriteByte(' ')
		if strings.Contains(a, " ") {
			a = `"` + a + `"`
		}
		sb.WriteString(a)
	}
	return sb.String()
}

// target returns the chain the rule jumps to.
func (j jumpRule) target() string { return j.args[len(j.args)-1] }

// comment returns the rule's comment text.
func (j jumpRule) comment() string {
	for i, a := range j.args {
		if a == "--comment" && i+1 < len(j.args) {
			return j.args[i+1]
		}
	}
	return ""
}

// in reports whether the saved rules hold this jump: a rule of the same
// built-in chain with the same comment and target.
func (j jumpRule) in(saved *savedTable) bool {
	prefix := "-A " + j.chain + " "
	suffix := " -j " + j.target()
	c := `--comment "` + j.comment() + `"`
	for _, r := range saved.foreignJumps {
		if strings.HasPrefix(r, prefix) && strings.HasSuffix(r, suffix) && strings.Contains(r, c) {
			return true
		}
	}
	return false
}

// missingJumps returns, per table, the lines that add the jump rules the
// saved tables lack, at the top of their built-in chain in jumpRules'
// order: "-I CHAIN 1", "-I CHAIN 2", ... so that each insert goes before a
// rule the kernel already holds (iptables-nft cannot insert before a rule
// added in the same transaction), or "-A CHAIN" when the chain is empty.
func missingJumps(saved map[string]*savedTable) map[string][]string {
	out := map[string][]string{}
	added := map[string]int{} // "table chain" -> jumps added so far
	for _, j := range jumpRules {
		st := saved[j.table]
		if st != nil && j.in(st) {
			continue
		}
		key := j.table + " " + j.chain
		added[key]++
		op := "-A " + j.chain
		if st != nil && st.rules[j.chain] > 0 {
			op = "-I " + j.chain + " " + strconv.Itoa(added[key])
		}
		out[j.table] = append(out[j.table], j.line(op))
	}
	return out
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
		if t.nft {
			// See restoreWriter.listAll.
			sb.WriteString("-S\n")
		}
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
