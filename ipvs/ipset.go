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

// parseIPSetSave reads `ipset save` output and returns the sets whose name
// starts with SetPrefix, members normalised (host nets as plain addresses)
// and sorted.
func parseIPSetSave(out []byte) []*IPSet {
	var sets []*IPSet
	byName := map[string]*IPSet{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !strings.HasPrefix(f[1], SetPrefix) {
			continue
		}
		switch f[0] {
		case "create":
			s := &IPSet{Name: f[1], Type: f[2], Family: proxier.IPv4}
			for i := 3; i+1 < len(f); i++ {
				if f[i] == "family" && f[i+1] == "inet6" {
					s.Family = proxier.IPv6
				}
			}
			if strings.HasPrefix(s.Name, SetPrefix+"6-") {
				s.Family = proxier.IPv6
			}
			byName[s.Name] = s
			sets = append(sets, s)
		case "add":
			if s := byName[f[1]]; s != nil {
				s.Members = append(s.Members, normaliseMember(f[2]))
			}
		}
	}
	for _, s := range sets {
		sortMembers(s.Members)
	}
	return sets
}

// normaliseMember drops "/32" and "/128" host masks ipset may print.
func normaliseMember(m string) string {
	for _, suf := range []string{"/32", "/128"} {
		m = strings.TrimSuffix(m, suf)
	}
	return m
}

// ipsetScript renders set operations as `ipset restore` input.
func ipsetScript(ops []Op) []byte {
	var b bytes.Buffer
	for _, o := range ops {
		switch o.Kind {
		case OpCreateSet:
			fmt.Fprintf(&b, "create %s %s %s\n", o.Set.Name, o.Set.Type, o.Set.CreateOptions())
		case OpAddMember:
			fmt.Fprintf(&b, "add %s %s\n", o.Set.Name, o.Member)
		case OpDelMember:
			fmt.Fprintf(&b, "del %s %s\n", o.Set.Name, o.Member)
		case OpDestroySet:
			fmt.Fprintf(&b, "flush %s\ndestroy %s\n", o.Set.Name, o.Set.Name)
		}
	}
	return b.Bytes()
}

// ipsetSave dumps our sets.
func ipsetSave(ctx context.Context, ex iptables.Executor) ([]*IPSet, error) {
	out, stderr, err := ex.Run(ctx, nil, "ipset", "save")
	if err != nil {
		return nil, fmt.Errorf("ipset save: %s: %w", strings.TrimSpace(string(stderr)), err)
	}
	return parseIPSetSave(out), nil
}

// ipsetRestore feeds a script to `ipset restore -exist`.
func ipsetRestore(ctx context.Context, ex iptables.Executor, script []byte) error {
	if len(script) == 0 {
		return nil
	}
	_, stderr, err := ex.Run(ctx, script, "ipset", "restore", "-exist")
	if err != nil {
		return fmt.Errorf("ipset restore: %s: %w", strings.TrimSpace(string(stderr)), err)
	}
	return nil
}
