// Package ruletexttest compares rendered iptables-restore text by what the
// rules do, ignoring their comments, for the renderers' injection tests:
// text rendered from hostile object names must hold exactly the rules the
// same snapshot renders with benign names.
package ruletexttest

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/switchyard-proxy/switchyard/test/iptrace"
)

// commentMatch finds a comment match in a rule as the tracer prints it
// (quoted when the text holds a space or a quote, with \" escapes).
var commentMatch = regexp.MustCompile(`-m comment --comment ("(?:[^"\\]|\\.)*"|[^ ]+) ?`)

// Tables are the tables Canonical lists, in order.
var Tables = []string{"mangle", "nat", "filter"}

// Canonical parses restore text with the packet tracer (test/iptrace) and
// returns a listing of every chain and rule of every table with the
// comment matches removed, chain names and rules passed through rename
// (nil: unchanged) and chains sorted by their renamed name; and the
// comments found, unquoted. A parse error is returned as is: text that the
// tracer cannot parse is as broken as text iptables-restore rejects.
func Canonical(text string, rename func(string) string) (string, []string, error) {
	if rename == nil {
		rename = func(s string) string { return s }
	}
	rs, err := iptrace.Parse(text)
	if err != nil {
		return "", nil, fmt.Errorf("parse rendered rules: %w", err)
	}
	var b strings.Builder
	var comments []string
	for _, t := range Tables {
		type chain struct {
			name  string
			rules []string
		}
		var chains []chain
		for _, c := range rs.ChainNames(t) {
			rules, _ := rs.Rules(t, c)
			out := make([]string, 0, len(rules))
			for _, r := range rules {
				for _, m := range commentMatch.FindAllStringSubmatch(r, -1) {
					comments = append(comments, unquote(m[1]))
				}
				out = append(out, rename(commentMatch.ReplaceAllString(r, "")))
			}
			chains = append(chains, chain{rename(c), out})
		}
		// Sort by renamed name (insertion sort: the lists are short).
		for i := 1; i < len(chains); i++ {
			for j := i; j > 0 && chains[j].name < chains[j-1].name; j-- {
				chains[j], chains[j-1] = chains[j-1], chains[j]
			}
		}
		for _, c := range chains {
			fmt.Fprintf(&b, "*%s :%s %s (%d rules)\n", t, c.name, rs.Policy(t, c.name), len(c.rules))
			for _, r := range c.rules {
				b.WriteString("  " + r + "\n")
			}
		}
	}
	return b.String(), comments, nil
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return strings.ReplaceAll(s[1:len(s)-1], `\"`, `"`)
	}
	return s
}

// Hostile are object names that try to break out of a quoted comment, end
// the restore input early or exceed the kernel's limits: the seed corpus of
// the renderers' fuzz tests and the names of the real-kernel test.
var Hostile = []string{
	"\"\n-A INPUT -j ACCEPT",
	"x\"\n-A INPUT -j ACCEPT\n-A INPUT -j REJECT\n#",
	`"`,
	`x" -j ACCEPT -m comment --comment "y`,
	`x" ! -s 10.0.0.0/8 -m comment --comment "`,
	`\`,
	`a\"b`,
	`\\"`,
	"'",
	"COMMIT\n*filter\n-F INPUT",
	"\r-A FORWARD -j ACCEPT",
	"\x00",
	"-j ACCEPT",
	"% %25 %%",
	"ünïcødé/名前:ポート",
	"a b\tc",
	"#",
	"",
	strings.Repeat("n", 300),
	strings.Repeat("\"", 300),
	strings.Repeat("é", 200),
}
