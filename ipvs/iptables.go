package ipvs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// ipt names the tools of one iptables flavour and family.
type ipt struct{ iptables, save, restore string }

func iptTools(m iptables.Mode, f proxier.IPFamily) ipt {
	base := "iptables"
	if f == proxier.IPv6 {
		base = "ip6tables"
	}
	base += "-" + string(m)
	return ipt{iptables: base, save: base + "-save", restore: base + "-restore"}
}

// detectFlavour picks the flavour holding more rules (nft on a tie), as
// the iptables mode does.
func detectFlavour(ctx context.Context, ex iptables.Executor) (iptables.Mode, error) {
	count := func(m iptables.Mode) int {
		n, ran := 0, false
		for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
			out, _, err := ex.Run(ctx, nil, iptTools(m, f).save)
			if err != nil {
				continue
			}
			ran = true
			n += bytes.Count(out, []byte("\n-A "))
		}
		if !ran {
			return -1
		}
		return n
	}
	legacy, nft := count(iptables.ModeLegacy), count(iptables.ModeNFT)
	switch {
	case legacy < 0 && nft < 0:
		return "", fmt.Errorf("neither iptables-nft-save nor iptables-legacy-save runs")
	case legacy > nft:
		return iptables.ModeLegacy, nil
	}
	return iptables.ModeNFT, nil
}

// ownChains parses `iptables-save -t TABLE`: the chains starting with
// prefix, and the rules of other chains that jump to them.
func ownChains(out []byte, prefix string) (chains []string, jumps []string) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"+prefix):
			name, _, _ := strings.Cut(line[1:], " ")
			chains = append(chains, name)
		case strings.HasPrefix(line, "-A ") && !strings.HasPrefix(line, "-A "+prefix):
			if strings.Contains(line, " -j "+prefix) || strings.Contains(line, " -g "+prefix) {
				jumps = append(jumps, line)
			}
		}
	}
	return chains, jumps
}

// restoreIPT runs one iptables-restore --noflush --wait.
func restoreIPT(ctx context.Context, ex iptables.Executor, t ipt, text []byte) error {
	_, stderr, err := ex.Run(ctx, text, t.restore, "--noflush", "--wait")
	if err != nil {
		return fmt.Errorf("%s: %s: %w", t.restore, strings.TrimSpace(string(stderr)), err)
	}
	return nil
}

// hookPresent checks one jump rule with `iptables -C`.
func hookPresent(ctx context.Context, ex iptables.Executor, t ipt, h jumpRule) bool {
	args := append([]string{"-w", "-t", h.table, "-C", h.chain}, h.args...)
	_, _, err := ex.Run(ctx, nil, t.iptables, args...)
	return err == nil
}

// quoteArgs prints rule arguments as restore input.
func quoteArgs(args []string) string {
	var b strings.Builder
	for _, a := range args {
		if strings.ContainsAny(a, " \"") {
			a = `"` + a + `"`
		}
		b.WriteString(" " + a)
	}
	return b.String()
}

// writeRules makes one family's tables match fr: our chains rewritten,
// stale SWY- chains (ours or the iptables mode's, after a mode switch)
// deleted with the jumps to them, and missing hooks inserted, in one
// restore.
func writeRules(ctx context.Context, ex iptables.Executor, t ipt, fr FamilyRules) error {
	var b strings.Builder
	for _, part := range strings.SplitAfter(fr.Text, "COMMIT\n") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		table := tableOf(part)
		out, stderr, err := ex.Run(ctx, nil, t.save, "-t", table)
		if err != nil {
			return fmt.Errorf("%s -t %s: %s: %w", t.save, table, strings.TrimSpace(string(stderr)), err)
		}
		have, jumps := ownChains(out, "SWY-")
		want := map[string]bool{}
		for _, c := range fr.Chains[table] {
			want[c] = true
		}
		var stale []string
		for _, c := range have {
			if !want[c] {
				stale = append(stale, c)
			}
		}
		body := strings.TrimSuffix(part, "COMMIT\n")
		b.WriteString(body)
		for _, c := range stale {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, j := range jumps {
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
			if h.table == table && !hookPresent(ctx, ex, t, h) {
				fmt.Fprintf(&b, "-I %s 1%s\n", h.chain, quoteArgs(h.args))
			}
		}
		b.WriteString("COMMIT\n")
	}
	return restoreIPT(ctx, ex, t, []byte(b.String()))
}

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
// family and flavour. Missing tools are not an error.
func cleanupRules(ctx context.Context, ex iptables.Executor, t ipt) error {
	var b strings.Builder
	for _, table := range tables {
		out, _, err := ex.Run(ctx, nil, t.save, "-t", table)
		if err != nil {
			continue
		}
		chains, jumps := ownChains(out, ChainPrefix)
		if len(chains) == 0 && len(jumps) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range chains {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, j := range jumps {
			b.WriteString("-D" + strings.TrimPrefix(j, "-A") + "\n")
		}
		for _, c := range chains {
			fmt.Fprintf(&b, "-X %s\n", c)
		}
		b.WriteString("COMMIT\n")
	}
	if b.Len() == 0 {
		return nil
	}
	return restoreIPT(ctx, ex, t, []byte(b.String()))
}
