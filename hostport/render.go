package hostport

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/internal/ruletext"
	"github.com/switchyard-proxy/switchyard/proxier"
)

const (
	// ChainPrefix starts the name of every chain this package owns
	// (SWY-HOSTPORTS and SWY-HOSTPORT-<hash>). The iptables mode leaves
	// chains with this prefix alone.
	ChainPrefix = "SWY-HOSTPORT"
	// DispatchChain is the nat chain jumped to from PREROUTING and OUTPUT
	// for local destinations; it holds one rule per mapping.
	DispatchChain = "SWY-HOSTPORTS"
	// mappingPrefix starts the per-mapping chains.
	mappingPrefix = ChainPrefix + "-"
)

// Jumps are the rules in the built-in nat chains that hand packets with a
// local destination to DispatchChain.
var Jumps = []iptexec.Jump{
	iptexec.NewJump("nat", "PREROUTING", DispatchChain, "switchyard hostports", "-m", "addrtype", "--dst-type", "LOCAL"),
	iptexec.NewJump("nat", "OUTPUT", DispatchChain, "switchyard hostports", "-m", "addrtype", "--dst-type", "LOCAL"),
}

// ChainName returns the per-mapping chain of hp in family fam: stable for
// the frontend (family, protocol, host IP, host port), which the planner
// makes unique, so a changed pod IP rewrites the same chain.
func ChainName(fam proxier.IPFamily, hp proxier.HostPort) string {
	key := fmt.Sprintf("%d/%s/%s/%d", fam, hp.Protocol, hostIPString(hp.HostIP), hp.HostPort)
	return mappingPrefix + ruletext.Hash(key)[:12]
}

func hostIPString(ip netip.Addr) string {
	if !ip.IsValid() {
		return "*"
	}
	return ip.String()
}

// Comment returns the rule comment naming the mapping: "ns/pod:hostPort".
func Comment(hp proxier.HostPort) string {
	return ruletext.Comment(hp.Pod + ":" + strconv.Itoa(int(hp.HostPort)))
}

// Plan is the rendered nat state of one family: the dispatch chain's rules
// and each per-mapping chain's rules, as restore lines ("-A CHAIN ...").
type Plan struct {
	Family proxier.IPFamily
	// Dispatch holds DispatchChain's rules, one line each.
	Dispatch string
	// Chains maps each per-mapping chain to its rules.
	Chains map[string]string
	// Mappings maps each per-mapping chain to its mapping.
	Mappings map[string]proxier.HostPort
}

func q(s string) string { return `"` + s + `"` }

func hostPrefix(ip netip.Addr) string {
	return netip.PrefixFrom(ip, ip.BitLen()).String()
}

// Build renders snap's host ports. Mappings of another family, an unknown
// protocol or with a zero port are skipped (the planner never sends them).
func Build(snap *proxier.Snapshot) *Plan {
	p := &Plan{Family: snap.Family, Chains: map[string]string{}, Mappings: map[string]proxier.HostPort{}}
	hps := append([]proxier.HostPort(nil), snap.HostPorts...)
	sort.Slice(hps, func(i, j int) bool {
		a, b := hps[i], hps[j]
		if a.HostPort != b.HostPort {
			return a.HostPort < b.HostPort
		}
		if a.Protocol != b.Protocol {
			return a.Protocol < b.Protocol
		}
		return a.HostIP.Less(b.HostIP)
	})
	mark := fmt.Sprintf("0x%x", snap.Masquerade.Mark())
	var d strings.Builder
	for _, hp := range hps {
		if !hp.PodIP.IsValid() || proxier.FamilyOf(hp.PodIP) != snap.Family || hp.HostPort == 0 || hp.ContainerPort == 0 ||
			(hp.HostIP.IsValid() && proxier.FamilyOf(hp.HostIP) != snap.Family) ||
			(hp.Protocol != proxier.TCP && hp.Protocol != proxier.UDP && hp.Protocol != proxier.SCTP) {
			continue
		}
		name := ChainName(snap.Family, hp)
		if _, dup := p.Chains[name]; dup {
			continue
		}
		c := q(Comment(hp))
		proto := hp.Protocol.Lower()
		port := strconv.Itoa(int(hp.HostPort))
		d.WriteString("-A " + DispatchChain)
		if hp.HostIP.IsValid() {
			d.WriteString(" -d " + hostPrefix(hp.HostIP))
		}
		d.WriteString(" -p " + proto + " -m " + proto + " --dport " + port + " -m comment --comment " + c + " -j " + name + "\n")
		target := netip.AddrPortFrom(hp.PodIP, hp.ContainerPort).String()
		var b strings.Builder
		b.WriteString("-A " + name + " -s " + hostPrefix(hp.PodIP) + " -m comment --comment " + q(Comment(hp)+" hairpin") + " -j MARK --or-mark " + mark + "\n")
		b.WriteString("-A " + name + " -m addrtype --src-type LOCAL -m comment --comment " + q(Comment(hp)+" from the node") + " -j MARK --or-mark " + mark + "\n")
		b.WriteString("-A " + name + " -p " + proto + " -m comment --comment " + c + " -j DNAT --to-destination " + target + "\n")
		p.Chains[name] = b.String()
		p.Mappings[name] = hp
	}
	p.Dispatch = d.String()
	return p
}

// sortedChains returns the per-mapping chain names in order.
func (p *Plan) sortedChains() []string {
	names := make([]string, 0, len(p.Chains))
	for n := range p.Chains {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Text returns the plan as complete iptables-restore --noflush input for
// the nat table (chains flushed and refilled; jumps not included).
func (p *Plan) Text() string {
	var sb strings.Builder
	sb.WriteString("*nat\n:" + DispatchChain + " - [0:0]\n")
	names := p.sortedChains()
	for _, n := range names {
		sb.WriteString(":" + n + " - [0:0]\n")
	}
	sb.WriteString(p.Dispatch)
	for _, n := range names {
		sb.WriteString(p.Chains[n])
	}
	sb.WriteString("COMMIT\n")
	return sb.String()
}

// Render returns, for `switchyard rules`, the restore text a full sync of
// snaps writes: per family a header, the jumps and the chains.
func Render(snaps []*proxier.Snapshot) string {
	var sb strings.Builder
	for _, s := range snaps {
		if s == nil {
			continue
		}
		p := Build(s)
		sb.WriteString("# " + s.Family.String() + " hostports (iptables-restore --noflush)\n")
		text := p.Text()
		sb.WriteString(strings.TrimSuffix(text, "COMMIT\n"))
		for _, j := range Jumps {
			sb.WriteString(j.Line("-A "+j.Chain) + "\n")
		}
		sb.WriteString("COMMIT\n")
	}
	return sb.String()
}
