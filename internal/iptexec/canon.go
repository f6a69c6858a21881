package iptexec

import (
	"hash/maphash"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Canonical returns a form of one rule's arguments (what follows
// "-A CHAIN") that is the same for the rule as switchyard writes it and as
// iptables-save (nft and legacy) prints it back. iptables-save reorders
// (-s, -d, -p before the matches), adds what was implicit (-m tcp, /32,
// --reject-with icmp-port-unreachable, recent's --mask and --rsource),
// rewrites (--or-mark X as --set-xmark X/X, --xor-mark X as --set-xmark
// X/0x0) and reformats (--probability with 11 decimals). Canonical
// therefore splits the arguments into options (an option with its values,
// and a leading "!"), normalises each, drops the implicit ones and sorts
// them. Sorting loses the order of options inside a rule, which does not
// matter for finding rules changed behind our back; the order of rules in
// a chain is kept by Sum.
func Canonical(args string) string {
	toks := tokens(args)
	var opts []string
	var cur []string
	flush := func() {
		if len(cur) > 0 {
			if o := canonOption(cur); o != "" {
				opts = append(opts, o)
			}
			cur = cur[:0]
		}
	}
	neg := false
	for _, t := range toks {
		switch {
		case t == "!":
			flush()
			neg = true
			continue
		case strings.HasPrefix(t, "-") && len(t) > 1 && !isNumber(t):
			flush()
			if neg {
				cur = append(cur, "!")
				neg = false
			}
		}
		cur = append(cur, t)
	}
	flush()
	slices.Sort(opts)
	return strings.Join(opts, " ")
}

func isNumber(t string) bool {
	_, err := strconv.ParseFloat(t, 64)
	return err == nil
}

// tokens splits rule arguments at spaces, honouring double quotes (with
// backslash escapes inside them), and unquotes.
func tokens(s string) []string {
	var out []string
	var b strings.Builder
	in, quoted, esc := false, false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case esc:
			b.WriteByte(c)
			esc = false
		case quoted && c == '\\':
			esc = true
		case c == '"':
			quoted = !quoted
			in = true
		case !quoted && (c == ' ' || c == '\t'):
			if in {
				out = append(out, b.String())
				b.Reset()
				in = false
			}
		default:
			b.WriteByte(c)
			in = true
		}
	}
	if in {
		out = append(out, b.String())
	}
	return out
}

// canonOption normalises one option ("-d", "10.0.0.1"), ("!", "-s", ...),
// returning "" for one iptables adds implicitly.
func canonOption(o []string) string {
	neg := o[0] == "!"
	name, vals := o[0], o[1:]
	if neg {
		if len(o) < 2 {
			return "!"
		}
		name, vals = o[1], o[2:]
	}
	v := strings.Join(vals, " ")
	switch name {
	case "-m", "--match":
		if v == "tcp" || v == "udp" || v == "sctp" {
			return "" // implied by -p
		}
		name = "-m"
	case "-s", "--source":
		name, v = "-s", canonPrefix(v)
	case "-d", "--destination":
		name, v = "-d", canonPrefix(v)
	case "-p", "--protocol":
		name, v = "-p", strings.ToLower(v)
	case "-j", "--jump":
		name = "-j"
	case "--probability":
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			v = strconv.FormatInt(int64(math.Round(f*0x80000000)), 10)
		}
	case "--or-mark":
		name, v = "--set-xmark", canonMark(v)+"/"+canonMark(v)
	case "--xor-mark":
		name, v = "--set-xmark", canonMark(v)+"/0x0"
	case "--set-mark":
		val, mask, ok := strings.Cut(v, "/")
		if !ok {
			mask = "0xffffffff"
		}
		name, v = "--set-xmark", canonMark(val)+"/"+canonMark(mask)
	case "--set-xmark":
		val, mask, ok := strings.Cut(v, "/")
		if !ok {
			mask = "0xffffffff"
		}
		v = canonMark(val) + "/" + canonMark(mask)
	case "--mark":
		val, mask, ok := strings.Cut(v, "/")
		v = canonMark(val)
		if ok && canonMark(mask) != "0xffffffff" {
			v += "/" + canonMark(mask)
		}
	case "--reject-with":
		if v == "icmp-port-unreachable" || v == "icmp6-port-unreachable" {
			return "" // REJECT's default
		}
	case "--mask":
		if v == "255.255.255.255" || v == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" {
			return "" // recent's default
		}
	case "--rsource":
		return "" // recent's default
	case "--ctstate", "--state":
		parts := strings.Split(v, ",")
		slices.Sort(parts)
		v = strings.Join(parts, ",")
	}
	out := name
	if neg {
		out = "! " + name
	}
	if v != "" {
		out += " " + v
	}
	return out
}

// canonPrefix prints an address or prefix as iptables-save does: always
// with a length, the host bits cleared.
func canonPrefix(v string) string {
	if p, err := netip.ParsePrefix(v); err == nil {
		return p.Masked().String()
	}
	if a, err := netip.ParseAddr(v); err == nil {
		return netip.PrefixFrom(a, a.BitLen()).String()
	}
	return v
}

// canonMark prints a mark or mask in hexadecimal.
func canonMark(v string) string {
	n, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return v
	}
	return "0x" + strconv.FormatUint(n, 16)
}

// Sum fingerprints the rules of one chain: how many, and a hash of their
// canonical forms in order. Sums are comparable only within one process.
type Sum struct {
	Rules int
	Hash  uint64
}

var sumSeed = maphash.MakeSeed()

// summer accumulates a Sum rule by rule.
type summer struct {
	h maphash.Hash
	n int
}

func newSummer() *summer {
	s := &summer{}
	s.h.SetSeed(sumSeed)
	return s
}

func (s *summer) add(args string) {
	s.h.WriteString(Canonical(args))
	s.h.WriteByte('\n')
	s.n++
}

func (s *summer) sum() Sum { return Sum{Rules: s.n, Hash: s.h.Sum64()} }

// SumRules returns the Sum of each chain named in restore-style text
// ("-A CHAIN args" lines; other lines are ignored). A chain declared
// (":CHAIN ...") without rules gets the Sum of no rules.
func SumRules(text string) map[string]Sum {
	sums := map[string]*summer{}
	for len(text) > 0 {
		line, rest, _ := strings.Cut(text, "\n")
		text = rest
		switch {
		case strings.HasPrefix(line, "-A "):
			chain, args, _ := strings.Cut(line[3:], " ")
			s := sums[chain]
			if s == nil {
				s = newSummer()
				sums[chain] = s
			}
			s.add(args)
		case strings.HasPrefix(line, ":"):
			chain, _, _ := strings.Cut(line[1:], " ")
			if sums[chain] == nil {
				sums[chain] = newSummer()
			}
		}
	}
	out := make(map[string]Sum, len(sums))
	for c, s := range sums {
		out[c] = s.sum()
	}
	return out
}

// SumBody returns the Sum of restore-style rule lines ("-A CHAIN args",
// newline terminated), whatever chain they name: the Sum of one chain as
// a backend renders it.
func SumBody(body string) Sum {
	s := newSummer()
	for len(body) > 0 {
		line, rest, _ := strings.Cut(body, "\n")
		body = rest
		if strings.HasPrefix(line, "-A ") {
			_, args, _ := strings.Cut(line[3:], " ")
			s.add(args)
		}
	}
	return s.sum()
}
