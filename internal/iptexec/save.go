package iptexec

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Table is the part of one table's iptables-save output the backends use.
type Table struct {
	// Own lists the chains whose name starts with the prefix given to
	// ParseSave, in save order.
	Own []string
	// ForeignJumps are rules of other chains that jump (-j or -g) to an
	// owned chain, as saved ("-A CHAIN ...").
	ForeignJumps []string
	// Rules counts the rules of each chain that is not owned.
	Rules map[string]int
	// Sums fingerprints the rules of each owned chain (only from
	// SaveSums and ParseSaveSums).
	Sums map[string]Sum
}

// Save runs `iptables-save -t table` of t and parses it with prefix.
func Save(ctx context.Context, ex Executor, t Tools, table, prefix string) (*Table, error) {
	out, stderr, err := ex.Run(ctx, nil, t.Save, "-t", table)
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %s: %w", t.Save, table, Trim(stderr), err)
	}
	return ParseSave(out, prefix), nil
}

// SaveAllSums runs one iptables-save of t for every table (iptables-nft
// fetches the whole ruleset even for one table, so one run is cheaper than
// one per table) and parses each table with the Sums of its owned chains.
func SaveAllSums(ctx context.Context, ex Executor, t Tools, prefix string) (map[string]*Table, error) {
	out, stderr, err := ex.Run(ctx, nil, t.Save)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", t.Save, Trim(stderr), err)
	}
	return ParseSaveAllSums(out, prefix), nil
}

// ParseSaveAllSums parses the output of iptables-save for several tables
// ("*TABLE" ... "COMMIT" each), with the Sums of the owned chains.
func ParseSaveAllSums(out []byte, prefix string) map[string]*Table {
	tables := map[string]*Table{}
	text := string(out)
	name, start := "", -1
	for off := 0; off < len(text); {
		line, _, _ := strings.Cut(text[off:], "\n")
		next := off + len(line) + 1
		switch {
		case strings.HasPrefix(line, "*"):
			name, start = line[1:], next
		case line == "COMMIT" && start >= 0:
			tables[name] = parseSave(text[start:off], prefix, true)
			start = -1
		}
		off = next
	}
	return tables
}

// ListBatch is how many chains one ListChains process lists: iptables-nft
// keeps the chains a restore names in a sorted list (quadratic), so
// batches stay small.
const ListBatch = 2000

// ListChains lists the given chains of one table ("-S CHAIN" lines fed to
// `iptables-restore --noflush`, ListBatch per process) and parses them like
// ParseSaveSums: Sums of the listed owned chains, rules of the listed
// other (built-in) chains. iptables-nft then fetches only these chains
// from the kernel, which is much cheaper than a full iptables-save of a
// large ruleset. A chain that does not exist fails the listing.
func ListChains(ctx context.Context, ex Executor, t Tools, table string, chains []string, prefix string) (*Table, error) {
	var all strings.Builder
	for start := 0; start < len(chains); start += ListBatch {
		batch := chains[start:min(start+ListBatch, len(chains))]
		var in strings.Builder
		in.WriteString("*" + table + "\n")
		for _, c := range batch {
			in.WriteString("-S " + c + "\n")
		}
		in.WriteString("COMMIT\n")
		out, stderr, err := ex.Run(ctx, []byte(in.String()), t.Restore, "--noflush", "--wait")
		if err != nil {
			return nil, fmt.Errorf("%s: list %d chains of %s: %s: %w", t.Restore, len(batch), table, Trim(stderr), err)
		}
		all.Write(out)
	}
	return parseSave(all.String(), prefix, true), nil
}

// SaveSums is Save with the Sums of the owned chains: what a drift check
// compares with the Sums of what was written (SumRules).
func SaveSums(ctx context.Context, ex Executor, t Tools, table, prefix string) (*Table, error) {
	out, stderr, err := ex.Run(ctx, nil, t.Save, "-t", table)
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %s: %w", t.Save, table, Trim(stderr), err)
	}
	return parseSave(string(out), prefix, true), nil
}

// ParseSave parses iptables-save output of one table: the chains whose
// name starts with prefix are owned.
func ParseSave(out []byte, prefix string) *Table { return parseSave(string(out), prefix, false) }

// ParseSaveSums is ParseSave with the Sums of the owned chains.
func ParseSaveSums(out []byte, prefix string) *Table { return parseSave(string(out), prefix, true) }

func parseSave(text string, prefix string, sums bool) *Table {
	st := &Table{Rules: map[string]int{}}
	var summers map[string]*summer
	if sums {
		summers = map[string]*summer{}
	}
	// Lines are substrings of one string: no allocation per line.
	for len(text) > 0 {
		line, rest, _ := strings.Cut(text, "\n")
		text = rest
		switch {
		case strings.HasPrefix(line, ":"+prefix) || strings.HasPrefix(line, "-N "+prefix):
			name, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(line, ":"), "-N "), " ")
			st.Own = append(st.Own, name)
			if sums {
				summers[name] = newSummer()
			}
		case strings.HasPrefix(line, "-A "+prefix):
			if sums {
				name, args, _ := strings.Cut(line[3:], " ")
				if s := summers[name]; s != nil {
					s.add(args)
				}
			}
		case strings.HasPrefix(line, "-A "):
			name, _, _ := strings.Cut(line[3:], " ")
			st.Rules[name]++
			if strings.Contains(line, " -j "+prefix) || strings.Contains(line, " -g "+prefix) {
				st.ForeignJumps = append(st.ForeignJumps, line)
			}
		}
	}
	if sums {
		st.Sums = make(map[string]Sum, len(summers))
		for c, s := range summers {
			st.Sums[c] = s.sum()
		}
	}
	return st
}

// DeleteText returns restore input for table that deletes every owned
// chain of saved and every foreign rule jumping to one ("" when there is
// nothing). listAll adds "-S" first (iptables-nft: one dump instead of one
// request per named chain).
func DeleteText(table string, saved *Table, listAll bool) string {
	if len(saved.Own) == 0 && len(saved.ForeignJumps) == 0 {
		return ""
	}
	var sb strings.Builder
	sb.WriteString("*" + table + "\n")
	if listAll {
		sb.WriteString("-S\n")
	}
	for _, c := range saved.Own {
		sb.WriteString(":" + c + " - [0:0]\n")
	}
	for _, r := range saved.ForeignJumps {
		sb.WriteString("-D " + strings.TrimPrefix(r, "-A ") + "\n")
	}
	for _, c := range saved.Own {
		sb.WriteString("-X " + c + "\n")
	}
	sb.WriteString("COMMIT\n")
	return sb.String()
}

// ChainExists tells whether table holds chain, by listing that chain alone
// (`iptables -t table -S chain`): milliseconds, where a save of a big nat
// table takes seconds. Exit status 1 (both flavours' "no such chain") is
// false; a tool that cannot run is an error.
func ChainExists(ctx context.Context, ex Executor, t Tools, table, chain string) (bool, error) {
	_, stderr, err := ex.Run(ctx, nil, t.IPTables, "-w", "-t", table, "-S", chain)
	if err == nil {
		return true, nil
	}
	var exit interface{ ExitCode() int } // *exec.ExitError, or a fake's
	// `ip netns exec` also exits 1 when the tool cannot run.
	if errors.As(err, &exit) && exit.ExitCode() == 1 && !strings.Contains(string(stderr), "exec of") {
		return false, nil
	}
	return false, fmt.Errorf("%s -t %s -S %s: %s: %w", t.IPTables, table, chain, Trim(stderr), err)
}
