package ruletext

import (
	"strings"
	"testing"
)

func TestComment(t *testing.T) {
	long := strings.Repeat("a", 300)
	cases := []struct{ in, want string }{
		{"default/web:http", "default/web:http"},
		{"kube-system/dns:dns -> 10.244.1.2:53", "kube-system/dns:dns -> 10.244.1.2:53"},
		{"switchyard service nodeports; NOTE: this must be the last rule in this chain", "switchyard service nodeports; NOTE: this must be the last rule in this chain"},
		{`ns/web:"` + "\n-A INPUT -j ACCEPT", "ns/web:%22%0A-A INPUT -j ACCEPT"},
		{`a\b'c%d`, "a%5Cb%27c%25d"},
		{"tab\there\x00\x7f", "tab%09here%00%7F"},
		{"é", "%C3%A9"},
	}
	for _, c := range cases {
		if got := Comment(c.in); got != c.want {
			t.Errorf("Comment(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	// Long text is cut to the kernel's limit, ends with a hash of the
	// whole text, and never splits an escape.
	for _, in := range []string{long, long + "b", strings.Repeat("\"", 200), "x" + strings.Repeat("\n", 120), strings.Repeat("ab\n", 90)} {
		got := Comment(in)
		if len(got) > MaxComment || !Writable(got) {
			t.Errorf("Comment(%d bytes) = %q (%d bytes), not writable", len(in), got, len(got))
		}
		if !strings.HasSuffix(got, "~"+Hash(in)) {
			t.Errorf("Comment(%q...) = %q does not end with its hash", in[:10], got)
		}
		body := strings.TrimSuffix(got, "~"+Hash(in))
		if i := strings.LastIndexByte(body, '%'); i >= 0 && i > len(body)-3 {
			t.Errorf("Comment(%q...) splits an escape: %q", in[:10], got)
		}
	}
	if Comment(long) == Comment(long+"b") {
		t.Error("two long names share a comment")
	}
	if got := Comment(strings.Repeat("a", MaxComment)); got != strings.Repeat("a", MaxComment) {
		t.Errorf("a safe comment of exactly %d bytes was changed", MaxComment)
	}
}

func FuzzComment(f *testing.F) {
	for _, s := range []string{"", "default/web:http", "\"\n-A INPUT -j ACCEPT", strings.Repeat("%", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := Comment(s)
		if !Writable(got) {
			t.Fatalf("Comment(%q) = %q is not writable", s, got)
		}
		if IsSafe(s) != (got == s) {
			t.Fatalf("Comment(%q) = %q: IsSafe says %v", s, got, IsSafe(s))
		}
	})
}
