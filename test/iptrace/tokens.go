package iptrace

import (
	"fmt"
	"strings"
)

type token struct {
	s      string
	quoted bool
}

// tokenize splits a line like a shell would for iptables-save output:
// whitespace separates words, double or single quotes group them, and a
// backslash escapes the next character inside double quotes or outside quotes.
func tokenize(line string) ([]token, error) {
	var out []token
	var cur strings.Builder
	inWord, quoted := false, false
	var quote rune
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else if c == '\\' && quote == '"' && i+1 < len(rs) {
				i++
				cur.WriteRune(rs[i])
			} else {
				cur.WriteRune(c)
			}
		case c == '"' || c == '\'':
			quote, inWord, quoted = c, true, true
		case c == '\\' && i+1 < len(rs):
			i++
			cur.WriteRune(rs[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				out = append(out, token{cur.String(), quoted})
				cur.Reset()
				inWord, quoted = false, false
			}
		default:
			cur.WriteRune(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated quote")
	}
	if inWord {
		out = append(out, token{cur.String(), quoted})
	}
	return out, nil
}

// stripCounters drops a leading "[packets:bytes]" (iptables-save -c).
func stripCounters(toks []token) []token {
	if len(toks) > 0 && strings.HasPrefix(toks[0].s, "[") && strings.HasSuffix(toks[0].s, "]") && !toks[0].quoted {
		return toks[1:]
	}
	return toks
}

// joinTokens renders tokens back to one canonical string, quoting words
// with spaces.
func joinTokens(toks []token) string {
	parts := make([]string, len(toks))
	for i, t := range toks {
		if t.s == "" || strings.ContainsAny(t.s, " \t\"") {
			parts[i] = `"` + strings.ReplaceAll(t.s, `"`, `\"`) + `"`
		} else {
			parts[i] = t.s
		}
	}
	return strings.Join(parts, " ")
}
