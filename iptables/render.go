package iptables

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/switchyard-proxy/switchyard/internal/ruletext"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// chain is one switchyard chain and the rules it holds, as restore text.
type chain struct {
	table string
	name  string
	// body is the chain's rules, one "-A NAME ..." line each, newline
	// terminated.
	body  string
	rules int
}

// dispatch identifies a shared chain that every service port contributes
// rules to (its "fragment").
type dispatch int

const (
	dNATServices dispatch = iota
	dNATNodePorts
	dFilterServices
	dFilterExternal
	dFilterNodePorts
	dFilterFirewall
	numDispatch
)

// serviceRules is everything one service port contributes: the nat chains
// it owns and its fragment of each dispatch chain.
type serviceRules struct {
	name     proxier.ServicePortName
	chains   []chain
	dispatch [numDispatch]string
	// dispatchRules counts the rules in each fragment.
	dispatchRules [numDispatch]int
}

// ruleBuf accumulates "-A CHAIN args..." lines.
type ruleBuf struct {
	b strings.Builder
	n int
}

func (r *ruleBuf) add(chainName string, parts ...string) {
	r.b.WriteString("-A ")
	r.b.WriteString(chainName)
	for _, p := range parts {
		if p == "" {
			continue
		}
		r.b.WriteByte(' ')
		r.b.WriteString(p)
	}
	r.b.WriteByte('\n')
	r.n++
}

// comment returns the comment match for text. Object names reach rules
// only through here: ruletext.Comment keeps valid names readable and
// escapes anything else, so the quoted text can never end early.
func comment(text string) string {
	return `-m comment --comment "` + ruletext.Comment(text) + `"`
}

// renderer renders one Snapshot. It holds the snapshot-wide settings.
type renderer struct {
	snap *proxier.Snapshot
	mark string // "0x4000"
}

func newRenderer(snap *proxier.Snapshot) (*renderer, error) {
	if snap.Family != proxier.IPv4 && snap.Family != proxier.IPv6 {
		return nil, fmt.Errorf("snapshot has unknown IP family %v", snap.Family)
	}
	if b := snap.Masquerade.MarkBit; b < 0 || b > 31 {
		return nil, fmt.Errorf("masquerade mark bit %d out of range 0-31", b)
	}
	return &renderer{snap: snap, mark: fmt.Sprintf("%#x", snap.Masquerade.Mark())}, nil
}

// globalsKey fingerprints the snapshot-wide settings that every service's
// rules depend on; when it changes, a partial sync is not enough.
func globalsKey(s *proxier.Snapshot) string {
	return fmt.Sprintf("%v|%v|%v|%v|%v", s.Masquerade, s.NodePortAddresses, s.NodeIPs, s.Family, s.LocalhostNodePorts)
}

// sortedEndpoints returns eps sorted by address (a copy).
func sortedEndpoints(eps []proxier.Endpoint) []proxier.Endpoint {
	out := slices.Clone(eps)
	slices.SortFunc(out, func(a, b proxier.Endpoint) int { return a.Addr.Compare(b.Addr) })
	return out
}

func probability(n int) string { return fmt.Sprintf("%0.10f", 1.0/float64(n)) }

func port(p uint16) string { return strconv.Itoa(int(p)) }

// service renders one service port.
func (r *renderer) service(sp *proxier.ServicePort) *serviceRules {
	out := &serviceRules{name: sp.Name}
	var frag [numDispatch]ruleBuf
	name := sp.Name.String()
	proto := "-p " + sp.Protocol.Lower()
	dport := "--dport " + port(sp.Port)
	ch := chainsFor(sp.Name)
	cidrs := r.snap.Masquerade.ClusterCIDRs

	// The planner decided which endpoints serve what; this only maps its
	// lists to chains: SVC holds ClusterEndpoints, SVL LocalEndpoints.
	clusterEPs := sortedEndpoints(sp.ClusterEndpoints)
	localEPs := sortedEndpoints(sp.LocalEndpoints)
	external := sp.ExternallyAccessible()
	usesCluster := len(clusterEPs) > 0
	usesLocal := len(localEPs) > 0
	policyChain := func(c proxier.EndpointChoice) string {
		switch c {
		case proxier.ClusterPolicy:
			return ch.svc
		case proxier.LocalPolicy:
			return ch.svl
		}
		return ""
	}
	internalChain := policyChain(sp.Internal)
	externalPolicyChain := policyChain(sp.External)
	shortCircuitChain := policyChain(sp.ShortCircuit)
	hasInternal := internalChain != ""
	hasExternal := externalPolicyChain != ""

	// Every endpoint some chain of ours may DNAT to.
	reachable := sortedEndpoints(sp.ReachableEndpoints)
	seps := make(map[netip.AddrPort]string, len(reachable))
	for _, e := range reachable {
		seps[e.Addr] = endpointChain(sp.Name, e)
	}
	// hasEndpoints is upstream's: some endpoint anywhere can serve. Then
	// the external addresses are captured (for the short-circuit even when
	// no endpoint serves outside traffic).
	hasEndpoints := sp.HasAnyEndpoints

	// What the filter table does with traffic the nat table did not DNAT.
	unservedTarget, unservedComment := "REJECT", comment(name+" has no endpoints")
	if sp.Unserved == proxier.Drop {
		unservedTarget, unservedComment = "DROP", comment(name+" has no local endpoints")
	}

	usesExternalChain := hasEndpoints && external
	usesFW := hasEndpoints && len(sp.LoadBalancerIPs) > 0 && len(sp.LoadBalancerSourceRanges) > 0
	lbChain := ch.ext
	if usesFW {
		lbChain = ch.fw
	}

	// Cluster IP.
	if sp.ClusterIP.IsValid() {
		d := "-d " + sp.ClusterIP.String()
		if hasInternal {
			frag[dNATServices].add(chainServices, d, proto, dport, comment(name+" cluster IP"), "-j "+internalChain)
		} else {
			frag[dFilterServices].add(chainServices, d, proto, dport, unservedComment, "-j "+unservedTarget)
		}
	}
	// External IPs.
	for _, ip := range sp.ExternalIPs {
		d := "-d " + ip.String()
		if hasEndpoints {
			frag[dNATServices].add(chainServices, d, proto, dport, comment(name+" external IP"), "-j "+ch.ext)
		}
		if !hasExternal {
			frag[dFilterExternal].add(chainExternalServices, d, proto, dport, unservedComment, "-j "+unservedTarget)
		}
	}
	// Load-balancer IPs.
	for _, ip := range sp.LoadBalancerIPs {
		d := "-d " + ip.String()
		if hasEndpoints {
			frag[dNATServices].add(chainServices, d, proto, dport, comment(name+" loadbalancer IP"), "-j "+lbChain)
		}
		if usesFW {
			frag[dFilterFirewall].add(chainFirewall, d, proto, dport, comment(name+" traffic not accepted by "+ch.fw), "-j DROP")
		}
	}
	if !hasExternal {
		for _, ip := range sp.LoadBalancerIPs {
			frag[dFilterExternal].add(chainExternalServices, "-d "+ip.String(), proto, dport, unservedComment, "-j "+unservedTarget)
		}
	}
	// Node port.
	if sp.NodePort != 0 {
		np := "--dport " + port(sp.NodePort)
		if hasEndpoints {
			frag[dNATNodePorts].add(chainNodePorts, proto, np, comment(name), "-j "+ch.ext)
		}
		if !hasExternal {
			for _, dst := range r.nodePortDestinations() {
				frag[dFilterExternal].add(chainExternalServices, dst, proto, np, unservedComment, "-j "+unservedTarget)
			}
		}
	}
	// Health-check node port.
	if sp.HealthCheckNodePort != 0 {
		frag[dFilterNodePorts].add(chainNodePorts, "-p tcp", "--dport "+port(sp.HealthCheckNodePort),
			comment(name+" health check node port"), "-j ACCEPT")
	}

	// SWY-EXT: external traffic.
	if usesExternalChain {
		var b ruleBuf
		if !sp.ExternalPolicyLocal {
			b.add(ch.ext, comment("masquerade traffic for "+name+" external destinations"), "-j "+chainMarkMasq)
		} else {
			if shortCircuitChain != "" {
				// Pods reaching an external address of the service skip the
				// external policy, as if they went out to the load balancer
				// and came back.
				for _, c := range cidrs {
					b.add(ch.ext, "-s "+c.Masked().String(), comment("pod traffic for "+name+" external destinations"), "-j "+shortCircuitChain)
				}
				if iface := r.snap.Masquerade.PodInterface; iface != "" {
					b.add(ch.ext, "-i "+iface, comment("pod traffic for "+name+" external destinations"), "-j "+shortCircuitChain)
				}
			}
			// The node itself picks a local address as source: masquerade it
			// and let it reach any endpoint.
			b.add(ch.ext, "-m addrtype --src-type LOCAL", comment("masquerade LOCAL traffic for "+name+" external destinations"), "-j "+chainMarkMasq)
			if shortCircuitChain != "" {
				b.add(ch.ext, "-m addrtype --src-type LOCAL", comment("route LOCAL traffic for "+name+" external destinations"), "-j "+shortCircuitChain)
			}
		}
		if hasExternal {
			b.add(ch.ext, "-j "+externalPolicyChain)
		}
		out.chains = append(out.chains, chain{table: tableNAT, name: ch.ext, body: b.b.String(), rules: b.n})
	}

	// SWY-FW: load-balancer source ranges.
	if usesFW {
		var b ruleBuf
		c := comment(name + " loadbalancer IP")
		allowFromNode := false
		for _, p := range sp.LoadBalancerSourceRanges {
			b.add(ch.fw, "-s "+p.Masked().String(), c, "-j "+ch.ext)
			for _, nip := range r.snap.NodeIPs {
				if p.Contains(nip) {
					allowFromNode = true
				}
			}
		}
		if allowFromNode {
			// A node reaching a load-balancer IP that is local to it loops
			// back with the load-balancer IP as source.
			for _, ip := range sp.LoadBalancerIPs {
				b.add(ch.fw, "-s "+ip.String(), c, "-j "+ch.ext)
			}
		}
		out.chains = append(out.chains, chain{table: tableNAT, name: ch.fw, body: b.b.String(), rules: b.n})
	}

	// clusterIPMasq writes, into the chain that serves the cluster IP, the
	// rule that masquerades off-cluster (or, with --masquerade-all, every)
	// source sent to it.
	clusterIPMasq := func(b *ruleBuf, chainName string) {
		if !sp.ClusterIP.IsValid() {
			return
		}
		match := []string{"-d " + sp.ClusterIP.String(), proto, dport, comment(name + " cluster IP")}
		switch {
		case r.snap.Masquerade.All:
			b.add(chainName, append(match, "-j "+chainMarkMasq)...)
		case r.snap.Masquerade.PodInterface != "":
			b.add(chainName, append([]string{"! -i " + r.snap.Masquerade.PodInterface}, append(match, "-j "+chainMarkMasq)...)...)
		case len(cidrs) == 1:
			b.add(chainName, append([]string{"! -s " + cidrs[0].Masked().String()}, append(match, "-j "+chainMarkMasq)...)...)
		case len(cidrs) > 1:
			b.add(chainName, append(match, "-j "+chainMasqOffCluster)...)
		}
	}
	// SWY-SVC: cluster policy.
	if usesCluster {
		var b ruleBuf
		if sp.Internal == proxier.ClusterPolicy {
			clusterIPMasq(&b, ch.svc)
		}
		r.balance(&b, ch.svc, sp, clusterEPs, seps)
		out.chains = append(out.chains, chain{table: tableNAT, name: ch.svc, body: b.b.String(), rules: b.n})
	}
	// SWY-SVL: local policy.
	if usesLocal {
		var b ruleBuf
		if sp.Internal == proxier.LocalPolicy {
			clusterIPMasq(&b, ch.svl)
		}
		r.balance(&b, ch.svl, sp, localEPs, seps)
		out.chains = append(out.chains, chain{table: tableNAT, name: ch.svl, body: b.b.String(), rules: b.n})
	}
	// SWY-SEP: one per endpoint.
	for _, ep := range reachable {
		sep := seps[ep.Addr]
		var b ruleBuf
		c := comment(name)
		b.add(sep, c, "-s "+ep.Addr.Addr().String(), "-j "+chainMarkMasq)
		affinity := ""
		if sp.Affinity.Enabled() {
			affinity = "-m recent --name " + sep + " --set"
		}
		b.add(sep, c, affinity, proto, "-j DNAT --to-destination "+ep.Addr.String())
		out.chains = append(out.chains, chain{table: tableNAT, name: sep, body: b.b.String(), rules: b.n})
	}

	for i := range frag {
		out.dispatch[i] = frag[i].b.String()
		out.dispatchRules[i] = frag[i].n
	}
	return out
}

// balance writes the affinity and random load-balancing rules of a policy
// chain (SVC or SVL) over eps.
func (r *renderer) balance(b *ruleBuf, chainName string, sp *proxier.ServicePort, eps []proxier.Endpoint, seps map[netip.AddrPort]string) {
	name := sp.Name.String()
	if sp.Affinity.Enabled() {
		secs := int(sp.Affinity.Timeout.Seconds())
		if secs < 1 {
			secs = 1
		}
		for _, ep := range eps {
			sep := seps[ep.Addr]
			b.add(chainName, comment(name+" -> "+ep.Addr.String()),
				"-m recent --name "+sep+" --rcheck --seconds "+strconv.Itoa(secs)+" --reap", "-j "+sep)
		}
	}
	for i, ep := range eps {
		stat := ""
		if i < len(eps)-1 {
			stat = "-m statistic --mode random --probability " + probability(len(eps)-i)
		}
		b.add(chainName, comment(name+" -> "+ep.Addr.String()), stat, "-j "+seps[ep.Addr])
	}
}

// nodePortDestinations returns the destination matches node ports answer on.
func (r *renderer) nodePortDestinations() []string {
	npa := r.snap.NodePortAddresses
	if npa.All {
		return []string{"-m addrtype --dst-type LOCAL"}
	}
	var out []string
	for _, a := range npa.Addrs {
		if a.IsLoopback() && !r.snap.LocalhostNodePorts {
			continue
		}
		out = append(out, "-d "+a.String())
	}
	return out
}

// fixedChains returns the chains that do not belong to one service port,
// with the dispatch chains assembled from the services' fragments, in
// declaration order per table.
func (r *renderer) fixedChains(services []*serviceRules) []chain {
	var out []chain
	add := func(table, name string, b *ruleBuf) {
		out = append(out, chain{table: table, name: name, body: b.b.String(), rules: b.n})
	}
	assemble := func(d dispatch) *ruleBuf {
		var b ruleBuf
		for _, s := range services {
			b.b.WriteString(s.dispatch[d])
			b.n += s.dispatchRules[d]
		}
		return &b
	}
	mark := r.mark
	loopback := "! -d 127.0.0.0/8"
	if r.snap.Family == proxier.IPv6 {
		loopback = "! -d ::1/128"
	}

	// filter
	add(tableFilter, chainCanary, &ruleBuf{})
	add(tableFilter, chainExternalServices, assemble(dFilterExternal))
	fw := assemble(dFilterFirewall)
	if r.snap.LocalhostNodePorts {
		// route_localnet (set for localhost node ports) would let packets
		// from other hosts reach 127.0.0.0/8 services: drop what was not
		// DNATed (kubernetes#90259), as upstream and kubelet do.
		var b ruleBuf
		b.add(chainFirewall, comment("block incoming localnet connections"), "-d 127.0.0.0/8", "! -s 127.0.0.0/8",
			"-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT", "-j DROP")
		b.b.WriteString(fw.b.String())
		b.n += fw.n
		fw = &b
	}
	add(tableFilter, chainFirewall, fw)
	var fwd ruleBuf
	fwd.add(chainForward, "-m conntrack --ctstate INVALID", "-j DROP")
	fwd.add(chainForward, "-m mark --mark "+mark+"/"+mark, comment("switchyard forwarding rules"), "-j ACCEPT")
	fwd.add(chainForward, comment("switchyard forwarding conntrack rule"), "-m conntrack --ctstate RELATED,ESTABLISHED", "-j ACCEPT")
	add(tableFilter, chainForward, &fwd)
	add(tableFilter, chainNodePorts, assemble(dFilterNodePorts))
	add(tableFilter, chainServices, assemble(dFilterServices))

	// nat
	add(tableNAT, chainCanary, &ruleBuf{})
	var mm ruleBuf
	mm.add(chainMarkMasq, "-j MARK --or-mark "+mark)
	add(tableNAT, chainMarkMasq, &mm)
	if cidrs := r.snap.Masquerade.ClusterCIDRs; len(cidrs) > 1 && !r.snap.Masquerade.All {
		var b ruleBuf
		for _, c := range cidrs {
			b.add(chainMasqOffCluster, "-s "+c.Masked().String(), comment("cluster traffic"), "-j RETURN")
		}
		b.add(chainMasqOffCluster, comment("off-cluster traffic to a cluster IP"), "-j "+chainMarkMasq)
		add(tableNAT, chainMasqOffCluster, &b)
	}
	add(tableNAT, chainNodePorts, assemble(dNATNodePorts))
	var post ruleBuf
	post.add(chainPostrouting, "-m mark ! --mark "+mark+"/"+mark, "-j RETURN")
	post.add(chainPostrouting, "-j MARK --xor-mark "+mark)
	post.add(chainPostrouting, comment("switchyard service traffic requiring SNAT"), "-j MASQUERADE --random-fully")
	add(tableNAT, chainPostrouting, &post)
	svcs := assemble(dNATServices)
	tail := comment("switchyard service nodeports; NOTE: this must be the last rule in this chain")
	if r.snap.NodePortAddresses.All {
		if r.snap.LocalhostNodePorts {
			loopback = ""
		}
		svcs.add(chainServices, loopback, "-m addrtype --dst-type LOCAL", tail, "-j "+chainNodePorts)
	} else {
		for _, dst := range r.nodePortDestinations() {
			svcs.add(chainServices, dst, tail, "-j "+chainNodePorts)
		}
	}
	add(tableNAT, chainServices, svcs)
	return out
}

// renderAll renders every service port of the snapshot.
func (r *renderer) renderAll() []*serviceRules {
	out := make([]*serviceRules, 0, len(r.snap.Services))
	for _, sp := range r.snap.Services {
		out = append(out, r.service(sp))
	}
	return out
}

// tableOrder is the order tables appear in restore input.
var tableOrder = []string{tableFilter, tableNAT}

// restoreWriter builds iptables-restore input for one family.
type restoreWriter struct {
	// per table: chains to (re)write and chains to delete.
	write  map[string][]*chain
	delete map[string][]string
	// jumps are extra lines per table written after the chain declarations
	// (the -I lines of missing jump rules on a full sync).
	jumps map[string][]string
	// listAll opens each table with "-S": iptables-nft then loads its chain
	// cache with one dump instead of one request per chain the input names
	// (and keeps that list sorted by insertion), which is quadratic in the
	// number of chains. The listing goes to the tool's stdout.
	listAll bool
	// canary opens each table written with "-F SWY-CANARY": the restore
	// fails at that line when someone deleted our chains, and the sync
	// turns full.
	canary bool
}

// canaryCheck is the line a partial restore opens each table with.
const canaryCheck = "-F " + chainCanary

func newRestoreWriter() *restoreWriter {
	return &restoreWriter{write: map[string][]*chain{}, delete: map[string][]string{}, jumps: map[string][]string{}}
}

func (w *restoreWriter) empty() bool {
	for _, t := range tableOrder {
		if len(w.write[t]) > 0 || len(w.delete[t]) > 0 || len(w.jumps[t]) > 0 {
			return false
		}
	}
	return true
}

// tableRules counts the rules the input writes to table.
func (w *restoreWriter) tableRules(table string) int {
	n := len(w.jumps[table])
	for _, c := range w.write[table] {
		n += c.rules
	}
	return n
}

// chainsNamed counts the chains the input declares in table.
func (w *restoreWriter) chainsNamed(table string) int {
	return len(w.write[table]) + len(w.delete[table])
}

// bytes returns the restore text and the number of rules it writes.
func (w *restoreWriter) bytes(header string) ([]byte, int) {
	var sb bytes.Buffer
	size := len(header)
	for _, t := range tableOrder {
		for _, c := range w.write[t] {
			size += len(c.name) + 10 + len(c.body)
		}
		size += 64*len(w.delete[t]) + 128*len(w.jumps[t]) + 64
	}
	sb.Grow(size + 64)
	sb.WriteString(header)
	rules := 0
	for _, t := range tableOrder {
		if len(w.write[t]) == 0 && len(w.delete[t]) == 0 && len(w.jumps[t]) == 0 {
			continue
		}
		sb.WriteString("*" + t + "\n")
		if w.canary {
			sb.WriteString(canaryCheck + "\n")
		}
		// The jumps' targets are declared first, then the jumps. "-S" must
		// come after every line that adds to a built-in chain: listing
		// puts the built-in chains a fresh table lacks into iptables-nft's
		// cache without creating them, and a later append to one fails.
		early := map[string]bool{}
		for _, l := range w.jumps[t] {
			if i := strings.LastIndex(l, " -j "); i >= 0 {
				early[l[i+4:]] = true
			}
		}
		for _, c := range w.write[t] {
			if early[c.name] {
				sb.WriteString(":" + c.name + " - [0:0]\n")
			}
		}
		for _, l := range w.jumps[t] {
			sb.WriteString(l + "\n")
		}
		if w.listAll {
			sb.WriteString("-S\n")
		}
		for _, c := range w.write[t] {
			if !early[c.name] {
				sb.WriteString(":" + c.name + " - [0:0]\n")
			}
		}
		for _, name := range w.delete[t] {
			sb.WriteString(":" + name + " - [0:0]\n")
		}
		for _, c := range w.write[t] {
			sb.WriteString(c.body)
			rules += c.rules
		}
		rules += len(w.jumps[t])
		for _, name := range w.delete[t] {
			sb.WriteString("-X " + name + "\n")
		}
		sb.WriteString("COMMIT\n")
	}
	return sb.Bytes(), rules
}

// fullWriter returns the writer for a full sync: fixed chains first, then
// every service port's chains in service order.
func fullWriter(fixed []chain, services []*serviceRules) *restoreWriter {
	w := newRestoreWriter()
	for i := range fixed {
		c := &fixed[i]
		w.write[c.table] = append(w.write[c.table], c)
	}
	for _, s := range services {
		for i := range s.chains {
			c := &s.chains[i]
			w.write[c.table] = append(w.write[c.table], c)
		}
	}
	return w
}

// familyHeader is the comment line that opens each family's restore input.
func familyHeader(f proxier.IPFamily) string {
	return "# switchyard iptables rules (" + f.String() + ")\n"
}

// Render returns the restore input a full sync of snaps writes (one section
// per family, IPv4 first as given), without touching the kernel.
func Render(snaps []*proxier.Snapshot) (string, error) {
	var sb strings.Builder
	for _, s := range snaps {
		r, err := newRenderer(s)
		if err != nil {
			return "", err
		}
		svcs := r.renderAll()
		text, _ := fullWriter(r.fixedChains(svcs), svcs).bytes(familyHeader(s.Family))
		sb.Write(text)
	}
	return sb.String(), nil
}
