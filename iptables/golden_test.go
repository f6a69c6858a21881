package iptables

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func TestGolden(t *testing.T) {
	cases := goldenCases()
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			got, err := Render(cases[name])
			if err != nil {
				t.Fatal(err)
			}
			again, _ := Render(cases[name])
			if again != got {
				t.Fatal("Render is not deterministic")
			}
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if d := lineDiff(string(want), got); d != "" {
				t.Errorf("%s differs (-want +got; run `go test ./iptables -run TestGolden -update` to accept):\n%s", path, d)
			}
		})
	}
}

// lineDiff returns a unified-style diff of two texts ("" when equal),
// showing only changed lines with two lines of context.
func lineDiff(a, b string) string {
	if a == b {
		return ""
	}
	x, y := strings.Split(a, "\n"), strings.Split(b, "\n")
	// Longest common subsequence table (fixtures are small).
	n, m := len(x), len(y)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type op struct {
		kind byte
		text string
	}
	var ops []op
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && x[i] == y[j]:
			ops = append(ops, op{' ', x[i]})
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			ops = append(ops, op{'+', y[j]})
			j++
		default:
			ops = append(ops, op{'-', x[i]})
			i++
		}
	}
	var sb strings.Builder
	last := -10
	for k, o := range ops {
		if o.kind == ' ' {
			continue
		}
		for c := max(k-2, last+1, 0); c < k; c++ {
			fmt.Fprintf(&sb, "%d   %s\n", c+1, ops[c].text)
		}
		fmt.Fprintf(&sb, "%d %c %s\n", k+1, o.kind, o.text)
		last = k
		for c := k + 1; c < len(ops) && c <= k+2 && ops[c].kind == ' '; c++ {
			fmt.Fprintf(&sb, "%d   %s\n", c+1, ops[c].text)
			last = c
		}
	}
	return sb.String()
}

func TestLineDiff(t *testing.T) {
	if d := lineDiff("a\nb\nc", "a\nb\nc"); d != "" {
		t.Fatalf("equal texts diff to %q", d)
	}
	d := lineDiff("a\nb\nc\nd", "a\nB\nc\nd")
	if !strings.Contains(d, "- b") || !strings.Contains(d, "+ B") {
		t.Fatalf("diff misses the change:\n%s", d)
	}
}
