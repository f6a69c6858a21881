package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/internal/ruletext"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// Chains of the IPVS mode (all start with "SWY-IPVS-").
const (
	ChainPrefix       = "SWY-IPVS-"
	chainPrerouting   = "SWY-IPVS-PREROUTING"
	chainETPLocal     = "SWY-IPVS-ETP-LOCAL"
	chainServices     = "SWY-IPVS-SERVICES"
	chainPostrouting  = "SWY-IPVS-POSTROUTING"
	chainMarkMasq     = "SWY-IPVS-MARK-MASQ"
	chainMasqOffClust = "SWY-IPVS-MASQ-OFFCLUSTER"
	chainLoadBalancer = "SWY-IPVS-LOAD-BALANCER"
	chainNodePort     = "SWY-IPVS-NODE-PORT"
	chainInput        = "SWY-IPVS-INPUT"
	chainSourceRanges = "SWY-IPVS-SOURCE-RANGES"
	chainForward      = "SWY-IPVS-FORWARD"
	tableOrderComment = "# switchyard ipvs-mode iptables rules (%s)\n"
)

// tables in restore order.
var tables = []string{"mangle", "nat", "filter"}

// hooks are the jump rules from the built-in chains, inserted at the top.
var hooks = []iptexec.Jump{
	iptexec.NewJump("mangle", "PREROUTING", chainPrerouting, "switchyard ipvs pod traffic marks"),
	iptexec.NewJump("mangle", "OUTPUT", chainETPLocal, "switchyard ipvs node traffic marks"),
	iptexec.NewJump("nat", "PREROUTING", chainServices, "switchyard ipvs services"),
	iptexec.NewJump("nat", "OUTPUT", chainServices, "switchyard ipvs services"),
	iptexec.NewJump("nat", "POSTROUTING", chainPostrouting, "switchyard ipvs postrouting"),
	iptexec.NewJump("filter", "INPUT", chainInput, "switchyard ipvs input filter", "-m", "conntrack", "--ctstate", "NEW"),
	iptexec.NewJump("filter", "FORWARD", chainForward, "switchyard ipvs forward"),
}

type rulesWriter struct {
	b      strings.Builder
	chains map[string][]string
	table  string
}

func (w *rulesWriter) begin(table string, chains ...string) {
	w.table = table
	fmt.Fprintf(&w.b, "*%s\n", table)
	for _, c := range chains {
		fmt.Fprintf(&w.b, ":%s - [0:0]\n", c)
	}
	w.chains[table] = chains
}

func (w *rulesWriter) rule(chain string, args ...string) {
	w.b.WriteString("-A " + chain)
	for _, a := range args {
		if strings.ContainsAny(a, " \"") || a == "" {
			a = `"` + strings.ReplaceAll(a, `"`, `\"`) + `"`
		}
		w.b.WriteString(" " + a)
	}
	w.b.WriteString("\n")
}

// comment returns the comment match for text, escaped by ruletext.Comment
// (object names reach these rules only through here).
func comment(text string) []string {
	return []string{"-m", "comment", "--comment", ruletext.Comment(text)}
}

func set(name, dirs string) []string { return []string{"-m", "set", "--match-set", name, dirs} }

func join(parts ...[]string) []string { return slices.Concat(parts...) }

// rules renders the restore text of the family.
func (r *familyRenderer) rules() FamilyRules {
	f := r.snap.Family
	s := func(base string) string { return SetName(f, base) }
	masq := r.snap.Masquerade
	mark := fmt.Sprintf("%#x", masq.Mark())
	markMatch := mark + "/" + mark
	fwBit := fmt.Sprintf("%#x/%#x", FWMarkBit, FWMarkBit)
	w := &rulesWriter{chains: map[string][]string{}}
	fmt.Fprintf(&w.b, tableOrderComment, f)

	// mangle: internal traffic to eTP Local addresses gets the port's
	// fwmark so IPVS picks the fwmark virtual server (cluster endpoints).
	w.begin("mangle", chainPrerouting, chainETPLocal)
	for _, c := range masq.ClusterCIDRs {
		w.rule(chainPrerouting, join([]string{"-s", c.String()}, comment("pod traffic"), []string{"-j", chainETPLocal})...)
	}
	if masq.PodInterface != "" {
		w.rule(chainPrerouting, join([]string{"-i", masq.PodInterface}, comment("pod traffic"), []string{"-j", chainETPLocal})...)
	}
	marks := slices.Clone(r.marks)
	slices.SortFunc(marks, func(a, b etpMark) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		if a.proto != b.proto {
			return strings.Compare(string(a.proto), string(b.proto))
		}
		return int(a.port) - int(b.port)
	})
	for _, m := range marks {
		w.rule(chainETPLocal, join(
			[]string{"-d", hostPrefix(m.addr), "-p", m.proto.Lower(), "--dport", fmt.Sprint(m.port)},
			comment(m.comment), []string{"-j", "MARK", "--set-xmark", fmt.Sprintf("%#x/0xffffffff", m.mark)})...)
	}
	w.b.WriteString("COMMIT\n")

	// nat
	natChains := []string{chainServices, chainPostrouting, chainMarkMasq, chainLoadBalancer, chainNodePort}
	if !masq.All && len(masq.ClusterCIDRs) > 1 {
		natChains = append(natChains, chainMasqOffClust)
	}
	w.begin("nat", natChains...)
	w.rule(chainMarkMasq, "-j", "MARK", "--or-mark", mark)
	w.rule(chainPostrouting, join(comment("hairpin: an endpoint reaching itself through a service"),
		set(s(setLoopBack), "dst,dst,src"), []string{"-j", "MASQUERADE"})...)
	w.rule(chainPostrouting, join(comment("node traffic to an externalTrafficPolicy Local address"),
		[]string{"-m", "mark", "--mark", fwBit, "-m", "addrtype", "--src-type", "LOCAL", "-j", "MASQUERADE"})...)
	w.rule(chainPostrouting, "-m", "mark", "!", "--mark", markMatch, "-j", "RETURN")
	w.rule(chainPostrouting, "-j", "MARK", "--xor-mark", mark)
	w.rule(chainPostrouting, join(comment("switchyard service traffic requiring SNAT"), []string{"-j", "MASQUERADE", "--random-fully"})...)

	clusterSet := set(s(setClusterIP), "dst,dst")
	switch {
	case masq.All:
		w.rule(chainServices, join(comment("masquerade all cluster IP traffic"), clusterSet, []string{"-j", chainMarkMasq})...)
	case masq.PodInterface != "":
		w.rule(chainServices, join([]string{"!", "-i", masq.PodInterface}, comment("cluster IP traffic from outside the pods' interfaces"), clusterSet, []string{"-j", chainMarkMasq})...)
	case len(masq.ClusterCIDRs) == 1:
		w.rule(chainServices, join([]string{"!", "-s", masq.ClusterCIDRs[0].String()}, comment("cluster IP traffic from outside the cluster CIDR"), clusterSet, []string{"-j", chainMarkMasq})...)
	case len(masq.ClusterCIDRs) > 1:
		w.rule(chainServices, join(comment("cluster IP traffic from outside the cluster CIDRs"), clusterSet, []string{"-j", chainMasqOffClust})...)
		for _, c := range masq.ClusterCIDRs {
			w.rule(chainMasqOffClust, "-s", c.String(), "-j", "RETURN")
		}
		w.rule(chainMasqOffClust, "-j", chainMarkMasq)
	default:
		w.rule(chainServices, join(comment("node traffic to cluster IPs"), []string{"-m", "addrtype", "--src-type", "LOCAL"}, clusterSet, []string{"-j", chainMarkMasq})...)
	}
	w.rule(chainServices, join(comment("external IPs, externalTrafficPolicy Cluster"), set(s(setExternalIP), "dst,dst"), []string{"-j", chainMarkMasq})...)
	w.rule(chainServices, join(comment("load-balancer IPs"), set(s(setLoadBalancer), "dst,dst"), []string{"-j", chainLoadBalancer})...)
	w.rule(chainServices, join(set(s(setIPVSIPs), "dst"), []string{"-j", "RETURN"})...)
	w.rule(chainServices, join(comment("node ports"), []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", chainNodePort})...)
	w.rule(chainLoadBalancer, join(set(s(setLoadBalancerLocal), "dst,dst"), []string{"-j", "RETURN"})...)
	w.rule(chainLoadBalancer, "-j", chainMarkMasq)
	for _, p := range []proxier.Protocol{proxier.TCP, proxier.UDP, proxier.SCTP} {
		w.rule(chainNodePort, join([]string{"-p", p.Lower()}, set(s(setNodePortLocal+string(p)), "dst"), []string{"-j", "RETURN"})...)
		w.rule(chainNodePort, join([]string{"-p", p.Lower()}, set(s(setNodePort+string(p)), "dst"), []string{"-j", chainMarkMasq})...)
	}
	w.b.WriteString("COMMIT\n")

	// filter
	w.begin("filter", chainInput, chainSourceRanges, chainForward)
	w.rule(chainInput, join(comment("service port has no endpoints"), set(s(setNoEndpoints), "dst,dst"), []string{"-j", "REJECT"})...)
	w.rule(chainInput, join(comment("Local policy without local endpoints"), []string{"-m", "mark", "!", "--mark", fwBit}, set(s(setNoLocalEndpoints), "dst,dst"), []string{"-j", "DROP"})...)
	w.rule(chainInput, join(set(s(setLoadBalancerFW), "dst,dst"), []string{"-j", chainSourceRanges})...)
	w.rule(chainInput, join(comment("health-check node ports"), []string{"-p", "tcp"}, set(s(setHealthCheck), "dst"), []string{"-j", "ACCEPT"})...)
	for _, base := range []string{setClusterIP, setExternalIP, setExternalIPLocal, setLoadBalancer} {
		w.rule(chainInput, join(set(s(base), "dst,dst"), []string{"-j", "RETURN"})...)
	}
	w.rule(chainInput, join(comment("service address, port no service uses"), set(s(setIPVSIPs), "dst"), []string{"-j", "DROP"})...)
	w.rule(chainSourceRanges, join(set(s(setLoadBalancerSource), "dst,dst,src"), []string{"-j", "RETURN"})...)
	w.rule(chainSourceRanges, join(comment("load-balancer source ranges"), []string{"-j", "DROP"})...)
	w.rule(chainForward, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	w.rule(chainForward, join(comment("switchyard service traffic"), []string{"-m", "mark", "--mark", markMatch, "-j", "ACCEPT"})...)
	w.rule(chainForward, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
	w.b.WriteString("COMMIT\n")
	return FamilyRules{Family: f, Text: w.b.String(), Chains: w.chains}
}

// hostPrefix prints an address as iptables-save does ("10.0.0.1/32").
func hostPrefix(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }
