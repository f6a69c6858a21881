package ipvs

import (
	"context"
	"fmt"
	"strings"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
)

// writeRules makes one family's tables match fr: our chains rewritten,
// stale SWY- chains (ours or the iptables mode's, after a mode switch)
// deleted with the jumps to them, and missing hooks inserted, in one
// restore.
func writeRules(ctx context.Context, ex iptexec.Executor, t iptexec.Tools, fr FamilyRules) error {
	var b strings.Builder
	for _, part := range strings.SplitAfter(fr.Text, "COMMIT\n") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		table := tableOf(part)
		saved, err := iptexec.Save(ctx, ex, t, table, "SWY-")
		if err != nil {
			return err
		}
		want := map[string]bool{}
		for _, c := range fr.Chains[table] {
			want[c] = true
		}
		var stale []string
		for _, c := range saved.Own {
			if !want[c] && !strings.HasPrefix(c, hostPortPrefix) {
				stale = append(stale, c)
			}
		}
		body := strings.TrimSuffix(part, "COMMIT\n")
		b.WriteString(body)
		for _, c := range stale {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, j := range saved.ForeignJumps {
			for _, c := range stale {
				if strings.HasSuffix(j, " "+c) || strings.Contains(j, " "+c+" ") {
					b.WriteString("-D" + strings.TrimPrefix(j, "-A") + "\n")
					break
				}
			}
		}
		for _, c := range stale {
			fmt.Fprintf(&b, "-X %s\n", c)
		}
		for _, h := range hooks {
			if h.Table == table && !h.Present(ctx, ex, t) {
				b.WriteString(h.Line("-I "+h.Chain+" 1") + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	return iptexec.Restore(ctx, ex, t, []byte(b.String()))
}

// hooksPresent tells whether a chain some hook of table jumps to exists
// (true when that cannot be told).
func hooksPresent(ctx context.Context, ex iptexec.Executor, t iptexec.Tools, table string) bool {
	for _, h := range hooks {
		if h.Table != table {
			continue
		}
		if ok, err := iptexec.ChainExists(ctx, ex, t, table, h.Args[len(h.Args)-1]); ok || err != nil {
			return true
		}
	}
	return false
}

// hostPortPrefix starts the chains of package hostport, which programs
// host ports beside every mode: never stale here.
const hostPortPrefix = "SWY-HOSTPORT"

// tableOf returns the table a restore fragment opens ("*nat" → "nat").
func tableOf(part string) string {
	for _, line := range strings.Split(part, "\n") {
		if strings.HasPrefix(line, "*") {
			return line[1:]
		}
	}
	return ""
}

// cleanupRules deletes every SWY-IPVS- chain and the jumps to them in one
// family and flavour. Missing tools are not an error. quick skips the save
// of a table where none of the chains the hooks jump to exists: the mode
// writes all of a table's chains in one restore, so such a table holds
// none of ours (a mode switch need not dump another mode's big tables).
func cleanupRules(ctx context.Context, ex iptexec.Executor, t iptexec.Tools, quick bool) error {
	var b strings.Builder
	for _, table := range tables {
		if quick && !hooksPresent(ctx, ex, t, table) {
			continue
		}
		out, _, err := ex.Run(ctx, nil, t.Save, "-t", table)
		if err != nil {
			continue
		}
		b.WriteString(iptexec.DeleteText(table, iptexec.ParseSave(out, ChainPrefix), false))
	}
	if b.Len() == 0 {
		return nil
	}
	return iptexec.Restore(ctx, ex, t, []byte(b.String()))
}
