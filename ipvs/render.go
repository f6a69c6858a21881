package ipvs

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

const (
	// DefaultScheduler is the IPVS scheduler when neither --ipvs-scheduler
	// nor the service annotation names one.
	DefaultScheduler = "rr"
	// FWMarkBit flags the firewall marks of the internal virtual servers of
	// externalTrafficPolicy Local ports (see README.md); the low 14 bits
	// hold the per-port number.
	FWMarkBit uint32 = 1 << 28
	// fwMarkSlots is how many per-port numbers exist (1..fwMarkSlots).
	fwMarkSlots = 0x3fff
)

// Schedulers are the IPVS schedulers accepted by --ipvs-scheduler and the
// switchyard.io/ipvs-scheduler annotation.
var Schedulers = proxier.IPVSSchedulers

// validScheduler reports whether s names a known scheduler.
func validScheduler(s string) bool { return proxier.ValidIPVSScheduler(s) }

// Set base names (IPv4 sets are "SWY-"+base, IPv6 ones "SWY-6-"+base).
const (
	setClusterIP          = "CLUSTER-IP"
	setLoopBack           = "LOOP-BACK"
	setExternalIP         = "EXTERNAL-IP"
	setExternalIPLocal    = "EXTERNAL-IP-LOCAL"
	setLoadBalancer       = "LOAD-BALANCER"
	setLoadBalancerLocal  = "LOAD-BALANCER-LOCAL"
	setLoadBalancerFW     = "LOAD-BALANCER-FW"
	setLoadBalancerSource = "LOAD-BALANCER-SOURCE-CIDR"
	setNodePort           = "NODE-PORT-"       // + TCP/UDP/SCTP
	setNodePortLocal      = "NODE-PORT-LOCAL-" // + TCP/UDP/SCTP
	setHealthCheck        = "HEALTH-CHECK-NODE-PORT"
	setNoEndpoints        = "NO-ENDPOINTS"
	setNoLocalEndpoints   = "NO-LOCAL-ENDPOINTS"
	setIPVSIPs            = "IPVS-IPS"
)

// setSpec describes one of the fixed sets.
type setSpec struct {
	base, typ, comment string
}

var setSpecs = []setSpec{
	{setClusterIP, "hash:ip,port", "cluster IP:port of every service port"},
	{setLoopBack, "hash:ip,port,ip", "endpoint ip,port,ip: an endpoint reaching itself (hairpin, masqueraded)"},
	{setExternalIP, "hash:ip,port", "external IP:port, externalTrafficPolicy Cluster"},
	{setExternalIPLocal, "hash:ip,port", "external IP:port, externalTrafficPolicy Local"},
	{setLoadBalancer, "hash:ip,port", "load-balancer IP:port"},
	{setLoadBalancerLocal, "hash:ip,port", "load-balancer IP:port, externalTrafficPolicy Local"},
	{setLoadBalancerFW, "hash:ip,port", "load-balancer IP:port with source ranges"},
	{setLoadBalancerSource, "hash:ip,port,net", "load-balancer IP:port and an allowed source range"},
	{setNodePort + "TCP", "bitmap:port", "TCP node ports"},
	{setNodePort + "UDP", "bitmap:port", "UDP node ports"},
	{setNodePort + "SCTP", "bitmap:port", "SCTP node ports"},
	{setNodePortLocal + "TCP", "bitmap:port", "TCP node ports, externalTrafficPolicy Local"},
	{setNodePortLocal + "UDP", "bitmap:port", "UDP node ports, externalTrafficPolicy Local"},
	{setNodePortLocal + "SCTP", "bitmap:port", "SCTP node ports, externalTrafficPolicy Local"},
	{setHealthCheck, "bitmap:port", "health-check node ports"},
	{setNoEndpoints, "hash:ip,port", "service addresses of ports without any endpoint (REJECT)"},
	{setNoLocalEndpoints, "hash:ip,port", "addresses whose policy is Local and that have no local endpoint (DROP)"},
	{setIPVSIPs, "hash:ip", "every address bound to swy-ipvs0"},
}

// SetName returns the ipset name of base in family f.
func SetName(f proxier.IPFamily, base string) string {
	if f == proxier.IPv6 {
		return SetPrefix + "6-" + base
	}
	return SetPrefix + base
}

// SetPrefix starts every ipset switchyard owns.
const SetPrefix = "SWY-"

// RenderOptions are the node-wide settings Render needs besides the
// snapshots.
type RenderOptions struct {
	// Scheduler is the default scheduler; "" means DefaultScheduler.
	Scheduler string
	// LocalAddrs are this node's local addresses (swy-ipvs0's, loopback
	// and link-local ones excluded). A snapshot whose NodePortAddresses.All
	// is set gets its node ports on those of its family; when there are
	// none, on its NodeIPs.
	LocalAddrs []netip.Addr
}

// Render turns snapshots (one per family) into the desired kernel state.
// It is pure and deterministic.
func Render(snaps []*proxier.Snapshot, opts RenderOptions) (*State, error) {
	if opts.Scheduler == "" {
		opts.Scheduler = DefaultScheduler
	}
	if !validScheduler(opts.Scheduler) {
		return nil, fmt.Errorf("ipvs: unknown scheduler %q", opts.Scheduler)
	}
	st := &State{}
	addrs := map[netip.Addr]bool{}
	for _, snap := range snaps {
		if snap == nil {
			continue
		}
		r := newFamilyRenderer(snap, opts)
		if err := r.render(); err != nil {
			return nil, err
		}
		for a := range r.addrs {
			addrs[a] = true
		}
		st.Servers = append(st.Servers, r.servers()...)
		st.Sets = append(st.Sets, r.ipsets()...)
		st.Rules = append(st.Rules, r.rules())
	}
	for a := range addrs {
		st.Addresses = append(st.Addresses, a)
	}
	slices.SortFunc(st.Addresses, netip.Addr.Compare)
	slices.SortFunc(st.Servers, func(a, b *VirtualServer) int { return compareKeys(a.Key, b.Key) })
	slices.SortFunc(st.Sets, func(a, b *IPSet) int { return cmp.Compare(a.Name, b.Name) })
	return st, nil
}

// etpMark is one mangle rule marking internal traffic to an
// externalTrafficPolicy Local address.
type etpMark struct {
	addr    netip.Addr
	proto   proxier.Protocol
	port    uint16
	mark    uint32
	comment string
}

type familyRenderer struct {
	snap    *proxier.Snapshot
	opts    RenderOptions
	addrs   map[netip.Addr]bool
	vs      map[Key]*VirtualServer
	sets    map[string]map[string]bool
	marks   []etpMark
	usedFWM map[uint32]string
}

func newFamilyRenderer(snap *proxier.Snapshot, opts RenderOptions) *familyRenderer {
	r := &familyRenderer{
		snap: snap, opts: opts,
		addrs:   map[netip.Addr]bool{},
		vs:      map[Key]*VirtualServer{},
		sets:    map[string]map[string]bool{},
		usedFWM: map[uint32]string{},
	}
	for _, s := range setSpecs {
		r.sets[s.base] = map[string]bool{}
	}
	return r
}

func (r *familyRenderer) add(set, member string) { r.sets[set][member] = true }

// ipPort is the ipset member "ip,proto:port".
func ipPort(a netip.Addr, p proxier.Protocol, port uint16) string {
	return a.String() + "," + p.Lower() + ":" + strconv.Itoa(int(port))
}

// netMember prints a prefix as ipset save does (host prefixes as plain
// addresses).
func netMember(p netip.Prefix) string {
	p = p.Masked()
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// nodePortAddrs returns the node addresses node ports answer on, as the
// planner decided them (with NodePortAddresses.All, its list of the node's
// local addresses; the NodeIPs when it has none).
func (r *familyRenderer) nodePortAddrs() []netip.Addr {
	npa := r.snap.NodePortAddresses
	if npa.All && len(npa.Addrs) == 0 {
		return r.snap.NodeIPs
	}
	return npa.Addrs
}

// fwmark returns a stable firewall mark for name: FWMarkBit plus a number
// hashed from the name, probing past numbers already taken in this family.
func (r *familyRenderer) fwmark(name string) (uint32, error) {
	h := fnv.New32a()
	h.Write([]byte(name))
	n := h.Sum32() % fwMarkSlots
	for range fwMarkSlots {
		m := FWMarkBit | (n + 1)
		if _, taken := r.usedFWM[m]; !taken {
			r.usedFWM[m] = name
			return m, nil
		}
		n = (n + 1) % fwMarkSlots
	}
	return 0, fmt.Errorf("ipvs: more than %d externalTrafficPolicy Local service ports", fwMarkSlots)
}

func (r *familyRenderer) addVS(k Key, sp *proxier.ServicePort, sched string, eps []proxier.Endpoint) {
	if _, dup := r.vs[k]; dup {
		return // an earlier service port (by name) owns the address
	}
	v := &VirtualServer{Key: k, Scheduler: sched, Service: sp.Name.String(), ServiceProtocol: sp.Protocol}
	if sp.Affinity.Enabled() {
		v.Persistent = true
		v.Timeout = uint32(sp.Affinity.Timeout / time.Second)
	}
	seen := map[netip.AddrPort]bool{}
	for _, e := range eps {
		if seen[e.Addr] {
			continue
		}
		seen[e.Addr] = true
		v.Dests = append(v.Dests, RealServer{Addr: e.Addr, Weight: Weight})
	}
	slices.SortFunc(v.Dests, func(a, b RealServer) int { return a.Addr.Compare(b.Addr) })
	r.vs[k] = v
}

func (r *familyRenderer) render() error {
	if m := r.snap.Masquerade.Mark(); m&(FWMarkBit|fwMarkSlots) != 0 {
		return fmt.Errorf("ipvs: masquerade mark %#x overlaps the fwmark range %#x", m, FWMarkBit|fwMarkSlots)
	}
	fam := r.snap.Family
	for _, sp := range r.snap.Services {
		sched := r.opts.Scheduler
		// An unknown annotation value (it comes from the object) falls
		// back to the default rather than fail every service's sync.
		if validScheduler(sp.Scheduler) {
			sched = sp.Scheduler
		}
		proto, port := sp.Protocol, sp.Port
		key := func(a netip.Addr, p uint16) Key { return Key{Family: fam, Addr: a, Protocol: proto, Port: p} }
		// The planner chose the endpoints of each kind of traffic; this only
		// maps them to virtual servers.
		internal, external := sp.InternalEndpoints(), sp.ExternalEndpoints()
		// blocked records an address that no endpoint serves, in the set
		// of the planner's Unserved action (REJECT or DROP).
		blocked := func(a netip.Addr, p uint16, choice proxier.EndpointChoice) {
			switch {
			case choice != proxier.NoEndpoints:
			case sp.Unserved == proxier.Reject:
				r.add(setNoEndpoints, ipPort(a, proto, p))
			default:
				r.add(setNoLocalEndpoints, ipPort(a, proto, p))
			}
		}
		for _, e := range sp.ReachableEndpoints {
			r.add(setLoopBack, ipPort(e.Addr.Addr(), proto, e.Addr.Port())+","+e.Addr.Addr().String())
		}
		if sp.ClusterIP.IsValid() {
			r.addrs[sp.ClusterIP] = true
			r.addVS(key(sp.ClusterIP, port), sp, sched, internal)
			r.add(setClusterIP, ipPort(sp.ClusterIP, proto, port))
			blocked(sp.ClusterIP, port, sp.Internal)
		}
		// Internal traffic (pods, this node) to the external addresses of
		// an externalTrafficPolicy Local port goes to a fwmark virtual
		// server with the cluster endpoints (kubernetes#71596).
		var mark uint32
		if sp.ShortCircuit != proxier.NoEndpoints {
			m, err := r.fwmark(sp.Name.String() + "/" + string(proto))
			if err != nil {
				return err
			}
			mark = m
			r.addVS(Key{Family: fam, FWMark: m}, sp, sched, sp.ShortCircuitEndpoints())
		}
		external1 := func(a netip.Addr, p uint16) {
			r.addVS(key(a, p), sp, sched, external)
			blocked(a, p, sp.External)
			if mark != 0 {
				r.marks = append(r.marks, etpMark{a, proto, p, mark, sp.Name.String()})
			}
		}
		for _, a := range sp.ExternalIPs {
			r.addrs[a] = true
			external1(a, port)
			if sp.ExternalPolicyLocal {
				r.add(setExternalIPLocal, ipPort(a, proto, port))
			} else {
				r.add(setExternalIP, ipPort(a, proto, port))
			}
		}
		nodeIPs := slices.Clone(r.snap.NodeIPs)
		for _, a := range sp.LoadBalancerIPs {
			r.addrs[a] = true
			external1(a, port)
			m := ipPort(a, proto, port)
			r.add(setLoadBalancer, m)
			if sp.ExternalPolicyLocal {
				r.add(setLoadBalancerLocal, m)
			}
			if len(sp.LoadBalancerSourceRanges) > 0 {
				r.add(setLoadBalancerFW, m)
				hasNode := false
				for _, pr := range sp.LoadBalancerSourceRanges {
					r.add(setLoadBalancerSource, m+","+netMember(pr))
					hasNode = hasNode || slices.ContainsFunc(nodeIPs, pr.Contains)
				}
				// A node inside the ranges reaches the LB IP with the LB IP
				// itself as source (it is bound locally).
				if hasNode {
					r.add(setLoadBalancerSource, m+","+a.String())
				}
			}
		}
		if sp.NodePort != 0 {
			for _, a := range r.nodePortAddrs() {
				external1(a, sp.NodePort)
			}
			np := strconv.Itoa(int(sp.NodePort))
			r.add(setNodePort+string(proto), np)
			if sp.ExternalPolicyLocal {
				r.add(setNodePortLocal+string(proto), np)
			}
		}
		if sp.HealthCheckNodePort != 0 {
			r.add(setHealthCheck, strconv.Itoa(int(sp.HealthCheckNodePort)))
		}
	}
	for a := range r.addrs {
		r.add(setIPVSIPs, a.String())
	}
	return nil
}

func (r *familyRenderer) servers() []*VirtualServer {
	out := make([]*VirtualServer, 0, len(r.vs))
	for _, v := range r.vs {
		out = append(out, v)
	}
	return out
}

func (r *familyRenderer) ipsets() []*IPSet {
	out := make([]*IPSet, 0, len(setSpecs))
	for _, s := range setSpecs {
		set := &IPSet{Name: SetName(r.snap.Family, s.base), Type: s.typ, Family: r.snap.Family, Comment: s.comment}
		for m := range r.sets[s.base] {
			set.Members = append(set.Members, m)
		}
		sortMembers(set.Members)
		out = append(out, set)
	}
	return out
}

// sortMembers sorts set members, numerically for port numbers.
func sortMembers(ms []string) {
	slices.SortFunc(ms, func(a, b string) int {
		na, ea := strconv.Atoi(a)
		nb, eb := strconv.Atoi(b)
		if ea == nil && eb == nil {
			return cmp.Compare(na, nb)
		}
		return strings.Compare(a, b)
	})
}
