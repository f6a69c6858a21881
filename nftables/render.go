package nftables

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// rule is one rule of a chain: nft rule text and an optional comment.
type rule struct {
	text    string
	comment string
}

// baseHook makes a chain a base chain.
type baseHook struct {
	typ  knftables.BaseChainType
	hook knftables.BaseChainHook
	prio knftables.BaseChainPriority
}

// chainSpec is one chain and its rules.
type chainSpec struct {
	name  string
	base  *baseHook
	rules []rule
}

// setSpec declares a set or a map.
type setSpec struct {
	name    string
	isMap   bool
	typ     string
	flags   []knftables.SetFlag
	timeout time.Duration
	comment string
}

// elemSpec is one element of a set or map.
type elemSpec struct {
	container string
	isMap     bool
	key       []string
	value     []string
	comment   string
}

// objects is a group of kernel objects written together: the fixed part of
// the layout or one service port's part.
type objects struct {
	chains []*chainSpec
	sets   []*setSpec
	elems  []*elemSpec
}

// serviceObjects is what one service port contributes.
type serviceObjects struct {
	name proxier.ServicePortName
	objects
}

// ruleset is the whole desired content of one family's table.
type ruleset struct {
	family   proxier.IPFamily
	fixed    objects
	services []*serviceObjects
}

// Object identities: what the apply code remembers per object.
func (c *chainSpec) id() string { return "chain " + c.name }
func (s *setSpec) id() string   { return "set " + s.name }
func (e *elemSpec) id() string {
	return "element " + e.container + " " + strings.Join(e.key, " . ")
}

// fingerprint is what changes when the object must be rewritten.
func (c *chainSpec) fingerprint() string {
	var b strings.Builder
	if c.base != nil {
		fmt.Fprintf(&b, "%s %s %s;", c.base.typ, c.base.hook, c.base.prio)
	}
	for _, r := range c.rules {
		b.WriteString(r.text)
		b.WriteString("#")
		b.WriteString(r.comment)
		b.WriteString(";")
	}
	return b.String()
}

func (s *setSpec) fingerprint() string {
	return fmt.Sprintf("%v %s %v %v", s.isMap, s.typ, s.flags, s.timeout)
}

func (e *elemSpec) fingerprint() string { return strings.Join(e.value, " . ") }

// knftables objects.
func (c *chainSpec) chain() *knftables.Chain {
	ch := &knftables.Chain{Name: c.name}
	if c.base != nil {
		ch.Type = knftables.PtrTo(c.base.typ)
		ch.Hook = knftables.PtrTo(c.base.hook)
		ch.Priority = knftables.PtrTo(c.base.prio)
	}
	return ch
}

func (c *chainSpec) knfRules() []*knftables.Rule {
	out := make([]*knftables.Rule, len(c.rules))
	for i, r := range c.rules {
		out[i] = &knftables.Rule{Chain: c.name, Rule: r.text}
		if r.comment != "" {
			out[i].Comment = knftables.PtrTo(r.comment)
		}
	}
	return out
}

func (s *setSpec) object() knftables.Object {
	var timeout *time.Duration
	if s.timeout > 0 {
		timeout = knftables.PtrTo(s.timeout)
	}
	var cmt *string
	if s.comment != "" {
		cmt = knftables.PtrTo(s.comment)
	}
	if s.isMap {
		return &knftables.Map{Name: s.name, Type: s.typ, Flags: s.flags, Timeout: timeout, Comment: cmt}
	}
	return &knftables.Set{Name: s.name, Type: s.typ, Flags: s.flags, Timeout: timeout, Comment: cmt}
}

func (e *elemSpec) element(withValue bool) *knftables.Element {
	el := &knftables.Element{Key: e.key}
	if e.isMap {
		el.Map = e.container
	} else {
		el.Set = e.container
	}
	if withValue {
		el.Value = e.value
		if e.comment != "" {
			el.Comment = knftables.PtrTo(e.comment)
		}
	}
	return el
}

// knftablesFamily maps an IP family to its nft family.
func knftablesFamily(f proxier.IPFamily) knftables.Family {
	if f == proxier.IPv6 {
		return knftables.IPv6Family
	}
	return knftables.IPv4Family
}

// renderer renders one Snapshot; it holds the family's spellings.
type renderer struct {
	snap     *proxier.Snapshot
	ipX      string // "ip" or "ip6"
	addrType string // "ipv4_addr" or "ipv6_addr"
	loopback string // "127.0.0.0/8" or "::1"
	mark     string // "0x4000"
	podIface string // nft iifname pattern, quoted, or ""
	// claimed holds the map keys already given to a service port in this
	// render: two services cannot own one key (the first keeps it).
	claimed map[string]proxier.ServicePortName
}

// ifaceRE is what an interface name (or prefix) may hold.
var ifaceRE = regexp.MustCompile(`^[A-Za-z0-9_.@-]{1,15}$`)

func newRenderer(snap *proxier.Snapshot) (*renderer, error) {
	r := &renderer{snap: snap, claimed: map[string]proxier.ServicePortName{}}
	switch snap.Family {
	case proxier.IPv4:
		r.ipX, r.addrType, r.loopback = "ip", "ipv4_addr", "127.0.0.0/8"
	case proxier.IPv6:
		r.ipX, r.addrType, r.loopback = "ip6", "ipv6_addr", "::1"
	default:
		return nil, fmt.Errorf("snapshot has unknown IP family %v", snap.Family)
	}
	if b := snap.Masquerade.MarkBit; b < 0 || b > 31 {
		return nil, fmt.Errorf("masquerade mark bit %d out of range 0-31", b)
	}
	r.mark = fmt.Sprintf("%#x", snap.Masquerade.Mark())
	if pi := snap.Masquerade.PodInterface; pi != "" {
		name, wildcard := strings.CutSuffix(pi, "+")
		if !ifaceRE.MatchString(name) {
			return nil, fmt.Errorf("pod interface %q is not a valid interface name", pi)
		}
		if wildcard {
			name += "*"
		}
		r.podIface = `"` + name + `"`
	}
	return r, nil
}

// globalsKey fingerprints the snapshot-wide settings every service's rules
// depend on; when it changes, a partial sync is not enough.
func globalsKey(s *proxier.Snapshot) string {
	return fmt.Sprintf("%v|%v|%v|%v", s.Masquerade, s.NodePortAddresses, s.NodeIPs, s.Family)
}

func itoa(n int) string { return strconv.Itoa(n) }

func sortedEndpoints(eps []proxier.Endpoint) []proxier.Endpoint {
	out := slices.Clone(eps)
	slices.SortFunc(out, func(a, b proxier.Endpoint) int { return a.Addr.Compare(b.Addr) })
	return out
}

// prefixes returns the masked prefixes as nft set text: "a" or "{ a, b }".
func prefixes(ps []netip.Prefix, extra ...netip.Addr) string {
	var parts []string
	for _, p := range ps {
		parts = append(parts, p.Masked().String())
	}
	for _, a := range extra {
		parts = append(parts, a.String())
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return "{ " + strings.Join(parts, ", ") + " }"
}

// fixed renders the part of the table that does not belong to a service
// port.
func (r *renderer) fixed() objects {
	ipX := r.ipX
	var o objects
	base := func(name string, typ knftables.BaseChainType, hook knftables.BaseChainHook, prio knftables.BaseChainPriority, rules ...rule) {
		o.chains = append(o.chains, &chainSpec{name: name, base: &baseHook{typ, hook, prio}, rules: rules})
	}
	chain := func(name string, rules ...rule) {
		o.chains = append(o.chains, &chainSpec{name: name, rules: rules})
	}
	pre := knftables.DNATPriority + "-10"
	base(chainFilterPreroutingPreDNAT, knftables.FilterType, knftables.PreroutingHook, pre,
		rule{text: "ct state new jump " + chainFirewallCheck})
	base(chainFilterOutputPreDNAT, knftables.FilterType, knftables.OutputHook, pre,
		rule{text: "ct state new jump " + chainFirewallCheck})
	base(chainFilterInput, knftables.FilterType, knftables.InputHook, knftables.FilterPriority,
		rule{text: "ct state new jump " + chainNodePortEPCheck},
		rule{text: "ct state new jump " + chainServiceEPCheck})
	base(chainFilterForward, knftables.FilterType, knftables.ForwardHook, knftables.FilterPriority,
		rule{text: "ct state new jump " + chainServiceEPCheck})
	base(chainFilterOutput, knftables.FilterType, knftables.OutputHook, knftables.FilterPriority,
		rule{text: "ct state new jump " + chainServiceEPCheck})
	base(chainNATPrerouting, knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority,
		rule{text: "jump " + chainServices})
	base(chainNATOutput, knftables.NATType, knftables.OutputHook, knftables.DNATPriority,
		rule{text: "jump " + chainServices})
	base(chainNATPostrouting, knftables.NATType, knftables.PostroutingHook, knftables.SNATPriority,
		rule{text: "jump " + chainMasquerading})

	tuple := ipX + " daddr . meta l4proto . th dport"
	var nodePortDst string
	if r.snap.NodePortAddresses.All {
		nodePortDst = ipX + " daddr != " + r.loopback
	} else {
		nodePortDst = ipX + " daddr @" + setNodePortIPs
	}
	chain(chainServices,
		rule{text: tuple + " vmap @" + mapServiceIPs},
		rule{text: "fib daddr type local " + nodePortDst + " meta l4proto . th dport vmap @" + mapServiceNodePorts,
			comment: "node ports"})
	chain(chainMasquerading,
		rule{text: "mark and " + r.mark + " != 0 mark set mark xor " + r.mark + " masquerade fully-random"},
		rule{text: "ct status dnat " + ipX + " saddr . " + ipX + " daddr . meta l4proto . th dport @" + setHairpin + " masquerade fully-random",
			comment: "endpoints reaching themselves through a service"})
	chain(chainMarkMasq, rule{text: "mark set mark or " + r.mark})
	chain(chainServiceEPCheck, rule{text: tuple + " vmap @" + mapNoEndpointServices})
	chain(chainNodePortEPCheck, rule{text: nodePortDst + " meta l4proto . th dport vmap @" + mapNoEndpointNodePort})
	chain(chainFirewallCheck, rule{text: tuple + " vmap @" + mapFirewallIPs})
	chain(chainReject, rule{text: "reject"})

	tupleType := r.addrType + " . inet_proto . inet_service : verdict"
	portType := "inet_proto . inet_service : verdict"
	o.sets = []*setSpec{
		{name: mapFirewallIPs, isMap: true, typ: tupleType, comment: "load-balancer IPs with source ranges"},
		{name: mapNoEndpointNodePort, isMap: true, typ: portType, comment: "node ports no endpoint serves"},
		{name: mapNoEndpointServices, isMap: true, typ: tupleType, comment: "service addresses no endpoint serves"},
		{name: setHairpin, typ: r.addrType + " . " + r.addrType + " . inet_proto . inet_service", comment: "endpoint . endpoint . protocol . port: hairpin connections"},
		{name: setNodePortIPs, typ: r.addrType, comment: "addresses node ports answer on"},
		{name: mapServiceIPs, isMap: true, typ: tupleType, comment: "service addresses"},
		{name: mapServiceNodePorts, isMap: true, typ: portType, comment: "node ports"},
	}
	if !r.snap.NodePortAddresses.All {
		seen := map[netip.Addr]bool{}
		for _, a := range r.snap.NodePortAddresses.Addrs {
			// Localhost node ports are not supported in nftables mode.
			if a.IsLoopback() || seen[a] || proxier.FamilyOf(a) != r.snap.Family {
				continue
			}
			seen[a] = true
			o.elems = append(o.elems, &elemSpec{container: setNodePortIPs, key: []string{a.String()}})
		}
		slices.SortFunc(o.elems, func(a, b *elemSpec) int { return strings.Compare(a.key[0], b.key[0]) })
	}
	return o
}

// service renders one service port. skip reports whether a map key is
// already owned by another service port (the key is then left out).
func (r *renderer) service(sp *proxier.ServicePort, taken func(key string) bool) *serviceObjects {
	out := &serviceObjects{name: sp.Name}
	name := sp.Name.String()
	proto := sp.Protocol.Lower()
	n := namesFor(sp.Name)
	ipX := r.ipX
	cidrs := r.snap.Masquerade.ClusterCIDRs

	policyChain := func(c proxier.EndpointChoice) string {
		switch c {
		case proxier.ClusterPolicy:
			return n.svc
		case proxier.LocalPolicy:
			return n.svl
		}
		return ""
	}
	internalChain := policyChain(sp.Internal)
	externalPolicyChain := policyChain(sp.External)
	shortCircuitChain := policyChain(sp.ShortCircuit)
	hasEndpoints := sp.HasAnyEndpoints
	external := sp.ExternallyAccessible()
	usesExternalChain := hasEndpoints && external
	usesFW := hasEndpoints && len(sp.LoadBalancerIPs) > 0 && len(sp.LoadBalancerSourceRanges) > 0

	unserved := "goto " + chainReject
	if sp.Unserved == proxier.Drop {
		unserved = "drop"
	}
	elem := func(m string, key []string, value, what string) {
		e := &elemSpec{container: m, isMap: true, key: key, value: []string{value}, comment: comment(name + what)}
		if taken != nil && taken(e.id()) {
			return
		}
		out.elems = append(out.elems, e)
	}
	port := itoa(int(sp.Port))

	if sp.ClusterIP.IsValid() {
		key := []string{sp.ClusterIP.String(), proto, port}
		if internalChain != "" {
			elem(mapServiceIPs, key, "goto "+internalChain, " cluster IP")
		} else {
			elem(mapNoEndpointServices, key, unserved, " cluster IP")
		}
	}
	for _, ip := range sp.ExternalIPs {
		key := []string{ip.String(), proto, port}
		if hasEndpoints {
			elem(mapServiceIPs, key, "goto "+n.ext, " external IP")
		}
		if externalPolicyChain == "" {
			elem(mapNoEndpointServices, key, unserved, " external IP")
		}
	}
	for _, ip := range sp.LoadBalancerIPs {
		key := []string{ip.String(), proto, port}
		if hasEndpoints {
			elem(mapServiceIPs, key, "goto "+n.ext, " loadbalancer IP")
		}
		if usesFW {
			elem(mapFirewallIPs, key, "goto "+n.fw, " loadbalancer IP")
		}
		if externalPolicyChain == "" {
			elem(mapNoEndpointServices, key, unserved, " loadbalancer IP")
		}
	}
	if sp.NodePort != 0 {
		key := []string{proto, itoa(int(sp.NodePort))}
		if hasEndpoints {
			elem(mapServiceNodePorts, key, "goto "+n.ext, " node port")
		}
		if externalPolicyChain == "" {
			elem(mapNoEndpointNodePort, key, unserved, " node port")
		}
	}

	chain := func(nm string) *chainSpec {
		c := &chainSpec{name: nm}
		out.chains = append(out.chains, c)
		return c
	}
	add := func(c *chainSpec, text, cmt string) {
		c.rules = append(c.rules, rule{text: text, comment: cmt})
	}

	if usesExternalChain {
		c := chain(n.ext)
		if !sp.ExternalPolicyLocal {
			add(c, "jump "+chainMarkMasq, comment("masquerade traffic for "+name+" external destinations"))
		} else {
			if shortCircuitChain != "" {
				// Pods reaching an external address of the service skip the
				// external policy, as if they went out to the load balancer
				// and came back.
				if len(cidrs) > 0 {
					add(c, ipX+" saddr "+prefixes(cidrs)+" goto "+shortCircuitChain, comment("pod traffic for "+name+" external destinations"))
				}
				if r.podIface != "" {
					add(c, "iifname "+r.podIface+" goto "+shortCircuitChain, comment("pod traffic for "+name+" external destinations"))
				}
			}
			add(c, "fib saddr type local jump "+chainMarkMasq, comment("masquerade local traffic for "+name+" external destinations"))
			if shortCircuitChain != "" {
				add(c, "fib saddr type local goto "+shortCircuitChain, comment("route local traffic for "+name+" external destinations"))
			}
		}
		if externalPolicyChain != "" {
			add(c, "goto "+externalPolicyChain, "")
		}
	}

	if usesFW {
		c := chain(n.fw)
		var extra []netip.Addr
		for _, p := range sp.LoadBalancerSourceRanges {
			for _, nip := range r.snap.NodeIPs {
				if p.Contains(nip) {
					// A node reaching a load-balancer IP local to it loops
					// back with the load-balancer IP as source.
					extra = sp.LoadBalancerIPs
				}
			}
		}
		add(c, ipX+" saddr != "+prefixes(sp.LoadBalancerSourceRanges, extra...)+" drop", comment(name+" source ranges"))
	}

	clusterIPMasq := func(c *chainSpec) {
		if !sp.ClusterIP.IsValid() {
			return
		}
		match := ipX + " daddr " + sp.ClusterIP.String() + " meta l4proto " + proto + " th dport " + port
		cmt := comment(name + " cluster IP")
		switch {
		case r.snap.Masquerade.All:
			add(c, match+" jump "+chainMarkMasq, cmt)
		case r.podIface != "":
			add(c, match+" iifname != "+r.podIface+" jump "+chainMarkMasq, cmt)
		case len(cidrs) > 0:
			add(c, match+" "+ipX+" saddr != "+prefixes(cidrs)+" jump "+chainMarkMasq, cmt)
		}
	}

	affinitySecs := 0
	if sp.Affinity.Enabled() {
		affinitySecs = int(sp.Affinity.Timeout.Seconds())
		if affinitySecs < 1 {
			affinitySecs = 1
		}
	}
	// Without affinity the policy chain DNATs itself;
	// with it, each endpoint has a chain that records the client in the
	// endpoint's affinity set.
	balance := func(c *chainSpec, eps []proxier.Endpoint) {
		if affinitySecs > 0 {
			for _, ep := range eps {
				add(c, ipX+" saddr @"+affinitySet(sp.Name, ep, affinitySecs)+" goto "+endpointChain(sp.Name, ep),
					comment(name+" -> "+ep.Addr.String()+" affinity"))
			}
			if len(eps) == 1 {
				add(c, "goto "+endpointChain(sp.Name, eps[0]), comment(name+" -> "+eps[0].Addr.String()))
				return
			}
			parts := make([]string, len(eps))
			for i, ep := range eps {
				parts[i] = itoa(i) + " : goto " + endpointChain(sp.Name, ep)
			}
			add(c, "numgen random mod "+itoa(len(eps))+" vmap { "+strings.Join(parts, " , ")+" }", comment(name))
			return
		}
		// Endpoint i is taken with probability 1/(n-i) among what is
		// left: uniform overall. A cascade of rules rather than one
		// numgen map: the kernel allocates each anonymous map by scanning
		// every set of the table (quadratic in services; see README).
		for i, ep := range eps {
			cond := ""
			if i < len(eps)-1 {
				cond = "numgen random mod " + itoa(len(eps)-i) + " 0 "
			}
			add(c, cond+"meta l4proto "+proto+" dnat to "+hostPort(ep), comment(name+" -> "+ep.Addr.String()))
		}
	}
	clusterEPs := sortedEndpoints(sp.ClusterEndpoints)
	localEPs := sortedEndpoints(sp.LocalEndpoints)
	if len(clusterEPs) > 0 {
		c := chain(n.svc)
		if sp.Internal == proxier.ClusterPolicy {
			clusterIPMasq(c)
		}
		balance(c, clusterEPs)
	}
	if len(localEPs) > 0 {
		c := chain(n.svl)
		if sp.Internal == proxier.LocalPolicy {
			clusterIPMasq(c)
		}
		balance(c, localEPs)
	}
	for _, ep := range sortedEndpoints(sp.ReachableEndpoints) {
		// An endpoint reaching itself through the service is masqueraded
		// (hairpin), matched after DNAT in the masquerading chain.
		a, p := ep.Addr.Addr().String(), itoa(int(ep.Addr.Port()))
		e := &elemSpec{container: setHairpin, key: []string{a, a, proto, p}}
		if taken == nil || !taken(e.id()) {
			out.elems = append(out.elems, e)
		}
		if affinitySecs == 0 {
			continue
		}
		c := chain(endpointChain(sp.Name, ep))
		cmt := comment(name)
		set := affinitySet(sp.Name, ep, affinitySecs)
		out.sets = append(out.sets, &setSpec{name: set, typ: r.addrType,
			flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag}, timeout: time.Duration(affinitySecs) * time.Second})
		add(c, "update @"+set+" { "+ipX+" saddr }", cmt)
		add(c, "meta l4proto "+proto+" dnat to "+hostPort(ep), cmt)
	}
	slices.SortFunc(out.chains, func(a, b *chainSpec) int { return strings.Compare(a.name, b.name) })
	slices.SortFunc(out.sets, func(a, b *setSpec) int { return strings.Compare(a.name, b.name) })
	slices.SortFunc(out.elems, func(a, b *elemSpec) int { return strings.Compare(a.id(), b.id()) })
	return out
}

// hostPort is an endpoint as dnat's argument: IP:PORT or [IP]:PORT.
func hostPort(ep proxier.Endpoint) string {
	return net.JoinHostPort(ep.Addr.Addr().String(), itoa(int(ep.Addr.Port())))
}

// render renders a whole snapshot.
func render(snap *proxier.Snapshot) (*ruleset, error) {
	r, err := newRenderer(snap)
	if err != nil {
		return nil, err
	}
	rs := &ruleset{family: snap.Family, fixed: r.fixed()}
	owner := map[string]bool{}
	for _, sp := range snap.Services {
		so := r.service(sp, func(id string) bool { return owner[id] })
		for _, e := range so.elems {
			owner[e.id()] = true
		}
		rs.services = append(rs.services, so)
	}
	return rs, nil
}

// fullTransaction adds to tx everything a full sync writes: the table,
// every set and map, every chain, then rules and elements. exists reports
// whether a chain, set or map is already in the kernel (nil: the table is
// empty); those are flushed first (affinity sets excepted: clients keep
// their endpoints).
func (rs *ruleset) fullTransaction(tx *knftables.Transaction, exists func(kind, name string) bool) {
	if exists == nil {
		exists = func(string, string) bool { return false }
	}
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("switchyard service proxy rules")})
	all := rs.allObjects()
	for _, o := range all {
		for _, s := range o.sets {
			tx.Add(s.object())
		}
	}
	for _, s := range rs.fixed.sets {
		switch {
		case s.isMap && exists("map", s.name):
			tx.Flush(&knftables.Map{Name: s.name})
		case !s.isMap && exists("set", s.name):
			tx.Flush(&knftables.Set{Name: s.name})
		}
	}
	for _, o := range all {
		for _, c := range o.chains {
			tx.Add(c.chain())
		}
	}
	for _, o := range all {
		for _, c := range o.chains {
			if exists("chain", c.name) {
				tx.Flush(&knftables.Chain{Name: c.name})
			}
		}
	}
	for _, o := range all {
		for _, c := range o.chains {
			for _, r := range c.knfRules() {
				tx.Add(r)
			}
		}
	}
	for _, o := range all {
		for _, e := range o.elems {
			tx.Add(e.element(true))
		}
	}
}

// Render returns the `nft -f` input a full sync of snaps writes into empty
// tables (one section per family, in the order given), without touching the
// kernel.
func Render(snaps []*proxier.Snapshot) (string, error) {
	var sb strings.Builder
	for _, s := range snaps {
		rs, err := render(s)
		if err != nil {
			return "", err
		}
		tx := knftables.NewFake(knftablesFamily(s.Family), TableName).NewTransaction()
		rs.fullTransaction(tx, nil)
		fmt.Fprintf(&sb, "# switchyard nftables rules (%s)\n", s.Family)
		sb.WriteString(tx.String())
	}
	return sb.String(), nil
}
