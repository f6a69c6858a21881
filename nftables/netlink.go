package nftables

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// ruleSummarizer is implemented by knftables interfaces that can report
// each chain's rule count and comments more cheaply than ListRules (which
// makes nft print and knftables parse the whole table as JSON).
type ruleSummarizer interface {
	ruleSummary(ctx context.Context) (map[string]*seenChain, error)
}

// kernelNFT is the production interface: knftables (with its netlink
// listing of names) plus a netlink dump of the table's rules for verify.
type kernelNFT struct {
	knftables.Interface
	family proxier.IPFamily
}

func newKernelNFT(f proxier.IPFamily) (knftables.Interface, error) {
	nft, err := knftables.New(knftablesFamily(f), TableName, knftables.UseNetlink)
	if err != nil {
		return nil, err
	}
	return &kernelNFT{Interface: nft, family: f}, nil
}

func (k *kernelNFT) ruleSummary(ctx context.Context) (map[string]*seenChain, error) {
	return netlinkRuleSummary(k.family)
}

// netlinkRuleSummary dumps every rule of switchyard's table of the family
// in the current network namespace (one NFT_MSG_GETRULE dump filtered by
// table) and returns, per chain, the number of rules and their comments in
// order. Expressions are not decoded.
func netlinkRuleSummary(f proxier.IPFamily) (map[string]*seenChain, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer conn.Close()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(TableName + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	fam := byte(unix.NFPROTO_IPV4)
	if f == proxier.IPv6 {
		fam = unix.NFPROTO_IPV6
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{fam, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		return nil, fmt.Errorf("netlink dump of the rules of table %s: %w", TableName, err)
	}
	out := map[string]*seenChain{}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		var chain, table, cmt string
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_TABLE:
				table = ad.String()
			case unix.NFTA_RULE_CHAIN:
				chain = ad.String()
			case unix.NFTA_RULE_USERDATA:
				cmt = udataComment(ad.Bytes())
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		if table != TableName || chain == "" {
			continue
		}
		s := out[chain]
		if s == nil {
			s = &seenChain{}
			out[chain] = s
		}
		s.n++
		s.comments = append(s.comments, cmt)
	}
	return out, nil
}

// udataComment returns the comment of a rule's user data (libnftnl's
// type-length-value records; type 0 is the comment, NUL-terminated).
func udataComment(b []byte) string {
	for len(b) >= 2 {
		typ, l := b[0], int(b[1])
		if len(b) < 2+l {
			return ""
		}
		if typ == 0 {
			return strings.TrimRight(string(b[2:2+l]), "\x00")
		}
		b = b[2+l:]
	}
	return ""
}

// listNames is ListAll without the kernel's anonymous sets and maps
// ("__set0", "__map0": they belong to rules, which a netlink listing
// shows and nft's does not).
func listNames(ctx context.Context, nft knftables.Interface) (map[string][]string, error) {
	all, err := nft.ListAll(ctx)
	if err != nil {
		return nil, err
	}
	for typ, names := range all {
		kept := names[:0]
		for _, n := range names {
			if !strings.HasPrefix(n, "__") {
				kept = append(kept, n)
			}
		}
		all[typ] = kept
	}
	return all, nil
}

// isNotFound reports whether err says the table (or object) does not
// exist: knftables' own error from nft, or ENOENT from its netlink listing.
func isNotFound(err error) bool {
	return knftables.IsNotFound(err) || errors.Is(err, unix.ENOENT) ||
		strings.Contains(err.Error(), "no such file or directory")
}

// summaryFromRules is the generic summary (knftables fakes, or any
// interface without a cheaper way): ListRules of the whole table.
func summaryFromRules(ctx context.Context, nft knftables.Interface) (map[string]*seenChain, error) {
	if rs, ok := nft.(ruleSummarizer); ok {
		return rs.ruleSummary(ctx)
	}
	rules, err := nft.ListRules(ctx, "")
	if err != nil {
		return nil, err
	}
	out := map[string]*seenChain{}
	for _, rl := range rules {
		s := out[rl.Chain]
		if s == nil {
			s = &seenChain{}
			out[rl.Chain] = s
		}
		s.n++
		c := ""
		if rl.Comment != nil {
			c = *rl.Comment
		}
		s.comments = append(s.comments, c)
	}
	return out, nil
}
