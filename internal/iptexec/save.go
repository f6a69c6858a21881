package iptexec

import (
	"bufio"
	"bytes"
	"context"
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

// SaveSums is Save with the Sums of the owned chains: what a drift check
// compares with the Sums of what was written (SumRules).
func SaveSums(ctx context.Context, ex Executor, t Tools, table, prefix string) (*Table, error) {
	out, stderr, err := ex.Run(ctx, nil, t.Save, "-t", table)
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %s: %w", t.Save, table, Trim(stderr), err)
	}
	return ParseSaveSums(out, prefix), nil
}

// ParseSave parses iptables-save output of one table: the chains whose
// name starts with prefix are owned.
func ParseSave(out []byte, prefix string) *Table { return parseSave(out, prefix, false) }

// ParseSaveSums is ParseSave with the Sums of the owned chains.
func ParseSaveSums(out []byte, prefix string) *Table { return parseSave(out, prefix, true) }

func parseSave(out []byte, prefix string, sums bool) *Table {
	st := &Table{Rules: map[string]int{}}
	var summers map[string]*summer
	if sums {
		summers = map[string]*summer{}
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"+prefix):
			name, _, _ := strings.Cut(line[1:], " ")
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
