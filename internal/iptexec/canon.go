package iptexec

import (
	"hash/maphash"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
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
// a chain is kept by Sum. (Sums hash the same normalised options without
// building this string.)
func Canonical(args string) string {
	var opts []string
	var c canon
	c.options(args, func(opt []byte) { opts = append(opts, string(opt)) })
	slices.Sort(opts)
	return strings.Join(opts, " ")
}

// canon normalises rule arguments with reusable buffers: after warm-up it
// does not allocate for the rules switchyard writes.
type canon struct {
	toks []string
	opt  []byte
	unq  strings.Builder
}

// options calls fn with each normalised option of args (fn must not keep
// the slice).
func (c *canon) options(args string, fn func(opt []byte)) {
	c.toks = c.tokens(args, c.toks[:0])
	start := 0
	for i := 1; i <= len(c.toks); i++ {
		if i < len(c.toks) && !c.startsOption(i) {
			continue
		}
		if o := c.option(c.toks[start:i]); len(o) > 0 {
			fn(o)
		}
		start = i
	}
}

// startsOption reports whether token i opens a new option: an option
// name not preceded by "!", or a "!".
func (c *canon) startsOption(i int) bool {
	t := c.toks[i]
	if t == "!" {
		return true
	}
	// Option names are "-x" or "--xyz"; values such as "-1" are not.
	if len(t) < 2 || t[0] != '-' || !(t[1] == '-' || 'a' <= t[1] && t[1] <= 'z' || 'A' <= t[1] && t[1] <= 'Z') {
		return false
	}
	return c.toks[i-1] != "!"
}

// tokens splits rule arguments at spaces, honouring double quotes (with
// backslash escapes inside them), and unquotes. Plain and simply quoted
// tokens are substrings of s.
func (c *canon) tokens(s string, out []string) []string {
	for i := 0; i < len(s); {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		if i == len(s) {
			break
		}
		j := i
		simple := true
		for j < len(s) && s[j] != ' ' && s[j] != '\t' {
			if s[j] == '"' || s[j] == '\\' {
				simple = false
				break
			}
			j++
		}
		if simple {
			out = append(out, s[i:j])
			i = j
			continue
		}
		// Quoted: "text" with no escape inside is a substring.
		if s[i] == '"' {
			if k := strings.IndexAny(s[i+1:], `"\`); k >= 0 && s[i+1+k] == '"' &&
				(i+2+k == len(s) || s[i+2+k] == ' ' || s[i+2+k] == '\t') {
				out = append(out, s[i+1:i+1+k])
				i = i + 2 + k
				continue
			}
		}
		c.unq.Reset()
		quoted, esc := false, false
		for ; i < len(s); i++ {
			ch := s[i]
			if esc {
				c.unq.WriteByte(ch)
				esc = false
				continue
			}
			if quoted && ch == '\\' {
				esc = true
				continue
			}
			if ch == '"' {
				quoted = !quoted
				continue
			}
			if !quoted && (ch == ' ' || ch == '\t') {
				break
			}
			c.unq.WriteByte(ch)
		}
		out = append(out, c.unq.String())
	}
	return out
}

// option normalises one option ("-d", "10.0.0.1"), ("!", "-s", ...) into
// c.opt, returning nil for one iptables adds implicitly.
func (c *canon) option(o []string) []byte {
	neg := o[0] == "!"
	name, vals := o[0], o[1:]
	if neg {
		if len(o) < 2 {
			return append(c.opt[:0], '!')
		}
		name, vals = o[1], o[2:]
	}
	b := c.opt[:0]
	if neg {
		b = append(b, "! "...)
	}
	one := ""
	if len(vals) == 1 {
		one = vals[0]
	}
	switch name {
	case "-m", "--match":
		if one == "tcp" || one == "udp" || one == "sctp" {
			return nil // implied by -p
		}
		name = "-m"
	case "-s", "--source", "-d", "--destination":
		if name[1] == '-' {
			name = "-" + name[2:3]
		}
		if strings.Contains(one, "/") {
			if p, err := netip.ParsePrefix(one); err == nil {
				b = append(append(b, name...), ' ')
				c.opt = p.Masked().AppendTo(b)
				return c.opt
			}
		} else if a, err := netip.ParseAddr(one); err == nil {
			b = append(append(b, name...), ' ')
			c.opt = netip.PrefixFrom(a, a.BitLen()).AppendTo(b)
			return c.opt
		}
	case "-p", "--protocol":
		name = "-p"
		b = append(b, "-p "...)
		for i := 0; i < len(one); i++ {
			ch := one[i]
			if 'A' <= ch && ch <= 'Z' {
				ch += 'a' - 'A'
			}
			b = append(b, ch)
		}
		c.opt = b
		return b
	case "-j", "--jump":
		name = "-j"
	case "--probability":
		if f, err := strconv.ParseFloat(one, 64); err == nil {
			b = append(b, "--probability "...)
			c.opt = strconv.AppendInt(b, int64(math.Round(f*0x80000000)), 10)
			return c.opt
		}
	case "--or-mark", "--xor-mark", "--set-mark", "--set-xmark":
		val, mask, ok := strings.Cut(one, "/")
		switch {
		case name == "--or-mark":
			mask = val
		case name == "--xor-mark":
			mask = "0"
		case !ok:
			mask = "0xffffffff"
		}
		b = append(b, "--set-xmark "...)
		b = appendMark(b, val)
		b = append(b, '/')
		c.opt = appendMark(b, mask)
		return c.opt
	case "--mark":
		val, mask, ok := strings.Cut(one, "/")
		b = append(b, "--mark "...)
		b = appendMark(b, val)
		if ok {
			if n, err := strconv.ParseUint(mask, 0, 32); err != nil || n != 0xffffffff {
				b = append(b, '/')
				b = appendMark(b, mask)
			}
		}
		c.opt = b
		return b
	case "--reject-with":
		if one == "icmp-port-unreachable" || one == "icmp6-port-unreachable" {
			return nil // REJECT's default
		}
	case "--mask":
		if one == "255.255.255.255" || one == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" {
			return nil // recent's default
		}
	case "--rsource":
		return nil // recent's default
	case "--ctstate", "--state":
		if strings.Contains(one, ",") {
			parts := strings.Split(one, ",")
			slices.Sort(parts)
			vals = []string{strings.Join(parts, ",")}
		}
	}
	b = append(b, name...)
	for _, v := range vals {
		b = append(append(b, ' '), v...)
	}
	c.opt = b
	return b
}

// appendMark appends a mark or mask in hexadecimal.
func appendMark(b []byte, v string) []byte {
	n, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return append(b, v...)
	}
	return strconv.AppendUint(append(b, "0x"...), n, 16)
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
	c canon
	h maphash.Hash
	n int
}

func newSummer() *summer {
	s := &summer{}
	s.h.SetSeed(sumSeed)
	return s
}

// add adds one rule: the options' hashes are summed (so their order does
// not matter, as in Canonical), the rules' are hashed in order.
func (s *summer) add(args string) {
	var acc uint64
	s.c.options(args, func(opt []byte) { acc += maphash.Bytes(sumSeed, opt) })
	var buf [8]byte
	for i := range buf {
		buf[i] = byte(acc >> (8 * i))
	}
	s.h.Write(buf[:])
	s.n++
}

func (s *summer) sum() Sum { return Sum{Rules: s.n, Hash: s.h.Sum64()} }

func (s *summer) reset() {
	s.h.Reset()
	s.n = 0
}

var summers = sync.Pool{New: func() any { return newSummer() }}

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
	s := summers.Get().(*summer)
	defer summers.Put(s)
	s.reset()
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
