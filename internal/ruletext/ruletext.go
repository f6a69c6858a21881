// Package ruletext makes strings that come from API objects (namespaces,
// names, port names) safe to write into kernel rule text: iptables-restore
// input and the comments of its rules. It is the one place that decides
// what such a string may contain, so that no object can add, remove or
// reorder a rule by what it says.
package ruletext

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// MaxComment is the longest comment the kernel's xt_comment match keeps
// (256 bytes with the terminating NUL).
const MaxComment = 255

// hashLen is the length of the hash that ends a shortened comment.
const hashLen = 16

// safe reports whether b may appear as itself in a comment: printable
// ASCII except the double quote and backslash (iptables-restore's quoting
// characters), the apostrophe (a quote for shells and some parsers), and
// the percent sign (the escape character of Comment).
func safe(b byte) bool {
	return b >= 0x20 && b < 0x7f && b != '"' && b != '\\' && b != '\'' && b != '%'
}

// Writable reports whether text can be written between double quotes in
// iptables-restore input and read back unchanged, within the kernel's
// comment limit: at most MaxComment bytes of printable ASCII other than
// " \ and '. Every result of Comment is.
func Writable(text string) bool {
	if len(text) > MaxComment {
		return false
	}
	for i := 0; i < len(text); i++ {
		if b := text[i]; !safe(b) && b != '%' {
			return false
		}
	}
	return true
}

// IsSafe reports whether Comment returns text unchanged: every byte is
// printable ASCII other than " \ ' % and the text fits in MaxComment bytes.
// The comments switchyard builds from valid Kubernetes names
// ("namespace/name:port ...") always are.
func IsSafe(text string) bool {
	if len(text) > MaxComment {
		return false
	}
	for i := 0; i < len(text); i++ {
		if !safe(text[i]) {
			return false
		}
	}
	return true
}

// Comment returns text in a form that can be written, between double
// quotes, as an iptables rule comment and read back unchanged: text itself
// when IsSafe(text); otherwise every unsafe byte (control characters,
// newlines, quotes, backslashes, non-ASCII bytes, %) is written %XX in
// upper-case hex, and a result longer than MaxComment bytes is cut and
// ends with "~" and a hash of the whole of text, so that distinct long
// inputs keep distinct comments. The result never holds a quote, a
// backslash or a control character and is at most MaxComment bytes.
func Comment(text string) string {
	return CommentMax(text, MaxComment)
}

// MaxNFTComment is the longest comment nft accepts on a rule or element.
const MaxNFTComment = 128

// CommentMax is Comment with another length limit (at least 32), for
// rule languages whose comments are shorter than xt_comment's: nft keeps
// MaxNFTComment bytes.
func CommentMax(text string, limit int) string {
	if limit < 32 {
		limit = 32
	}
	if len(text) <= limit && IsSafe(text) {
		return text
	}
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(text) + 16)
	for i := 0; i < len(text); i++ {
		c := text[i]
		if safe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	out := b.String()
	if len(out) <= limit {
		return out
	}
	cut := limit - 1 - hashLen
	// Do not split a %XX escape.
	if i := strings.LastIndexByte(out[:cut], '%'); i >= 0 && i > cut-3 {
		cut = i
	}
	return out[:cut] + "~" + Hash(text)
}

// Hash returns 16 characters of the base32 SHA-256 of s: a stable,
// rule-text-safe stand-in for a string.
func Hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:hashLen]
}
