package iptexec

import (
	"context"
	"strconv"
	"strings"
)

// Jump is a rule in a built-in chain that hands packets to an owned chain.
type Jump struct {
	Table, Chain string
	// Args are the rule's matches, comment and target ("-j", CHAIN last).
	Args []string
}

// NewJump returns the jump from chain from of table to chain to, with a
// comment and the given matches before it.
func NewJump(table, from, to, commentText string, matches ...string) Jump {
	args := append(append([]string(nil), matches...), "-m", "comment", "--comment", commentText, "-j", to)
	return Jump{Table: table, Chain: from, Args: args}
}

// QuoteArgs prints rule arguments as restore input, each after a space,
// quoting those that hold a space or a double quote.
func QuoteArgs(args []string) string {
	var b strings.Builder
	for _, a := range args {
		if strings.ContainsAny(a, " \"") {
			a = `"` + a + `"`
		}
		b.WriteString(" " + a)
	}
	return b.String()
}

// Line returns the rule as restore input after op ("-A CHAIN" or
// "-I CHAIN N").
func (j Jump) Line(op string) string { return op + QuoteArgs(j.Args) }

// Target returns the chain the rule jumps to.
func (j Jump) Target() string { return j.Args[len(j.Args)-1] }

// Comment returns the rule's comment text.
func (j Jump) Comment() string {
	for i, a := range j.Args {
		if a == "--comment" && i+1 < len(j.Args) {
			return j.Args[i+1]
		}
	}
	return ""
}

// In reports whether the saved table holds this jump: a rule of the same
// built-in chain with the same comment and target.
func (j Jump) In(saved *Table) bool {
	prefix := "-A " + j.Chain + " "
	suffix := " -j " + j.Target()
	c := `--comment "` + j.Comment() + `"`
	for _, r := range saved.ForeignJumps {
		if strings.HasPrefix(r, prefix) && strings.HasSuffix(r, suffix) && strings.Contains(r, c) {
			return true
		}
	}
	return false
}

// Present checks the jump with `iptables -C` (one process).
func (j Jump) Present(ctx context.Context, ex Executor, t Tools) bool {
	args := append([]string{"-w", "-t", j.Table, "-C", j.Chain}, j.Args...)
	_, _, err := ex.Run(ctx, nil, t.IPTables, args...)
	return err == nil
}

// MissingJumps returns, per table, the lines that add the jumps the saved
// tables lack, at the top of their built-in chain in the order of jumps:
// "-I CHAIN 1", "-I CHAIN 2", ... so that each insert goes before a rule
// the kernel already holds (iptables-nft cannot insert before a rule added
// in the same transaction), or "-A CHAIN" when the chain is empty.
func MissingJumps(jumps []Jump, saved map[string]*Table) map[string][]string {
	out := map[string][]string{}
	added := map[string]int{} // "table chain" -> jumps added so far
	for _, j := range jumps {
		st := saved[j.Table]
		if st != nil && j.In(st) {
			continue
		}
		key := j.Table + " " + j.Chain
		added[key]++
		op := "-A " + j.Chain
		if st != nil && st.Rules[j.Chain] > 0 {
			op = "-I " + j.Chain + " " + strconv.Itoa(added[key])
		}
		out[j.Table] = append(out[j.Table], j.Line(op))
	}
	return out
}
