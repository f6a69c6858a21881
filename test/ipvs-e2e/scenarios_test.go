package ipvse2e

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/test/lab"
	"github.com/switchyard-proxy/switchyard/test/scenarios"
)

// TestScenarios runs the mode-neutral scenario table (test/scenarios)
// against the IPVS mode with real packets. To keep the VM run short, one lab
// holds the pods of every fixture (one namespace per pod address, serving
// the union of its ports) and one manifest folder holds every fixture
// (their cluster IPs and node ports are distinct). For each proxy
// configuration of the table, `switchyard --once --proxy-mode=ipvs` runs in
// the node namespace; then the kernel state read back with ipvsadm, ipset
// and iptables-save must equal what `switchyard rules --proxy-mode=ipvs`
// prints, and every packet of the scenarios with that configuration must
// get its expected outcome with real TCP/UDP requests. SCTP packets are
// skipped (Go's net package and the echo server speak TCP and UDP only).
func TestScenarios(t *testing.T) {
	requireIPVS(t)
	switchyardBinary(t)
	dir := t.TempDir()
	var configs []scenarios.Config
	byConfig := map[string][]scenarios.Scenario{}
	podsOf := map[string][]scenarios.Pod{}
	var all []scenarios.Pod
	for _, s := range scenarios.All() {
		if s.IPTablesOnly {
			continue
		}
		key := fmt.Sprint(s.Config)
		if byConfig[key] == nil {
			configs = append(configs, s.Config)
		}
		byConfig[key] = append(byConfig[key], s)
		if _, done := podsOf[s.Fixture]; done {
			continue
		}
		objs, err := s.Objects()
		if err != nil {
			t.Fatal(err)
		}
		pods, err := objs.Pods()
		if err != nil {
			t.Fatal(err)
		}
		podsOf[s.Fixture] = pods
		all = append(all, pods...)
		yaml, err := s.YAML()
		if err != nil {
			t.Fatal(err)
		}
		writeManifest(t, dir, s.Fixture, yaml)
	}
	l := newLab(t, mergePods(all))
	for _, cfg := range configs {
		group := byConfig[fmt.Sprint(cfg)]
		t.Run(configName(cfg), func(t *testing.T) {
			runOnce(t, l, dir, cfg)
			checkKernelState(t, l, dir, cfg)
			for _, s := range group {
				t.Run(s.Name, func(t *testing.T) {
					for _, p := range s.Packets {
						t.Run(p.Name, func(t *testing.T) {
							if p.Proto == proxier.SCTP {
								t.Skip("SCTP: the lab's clients speak TCP and UDP only")
							}
							counts, errs := sendAndCheck(l, p, podsOf[s.Fixture])
							if len(errs) > 0 {
								t.Errorf("%v\n  replies: %s\n  problems:\n    %s", p, fmtCounts(counts), strings.Join(errs, "\n    "))
							} else if counts != nil {
								t.Logf("%v: %s", p, fmtCounts(counts))
							}
						})
					}
				})
			}
		})
	}
}

// configName names a proxy configuration of the table for subtests.
func configName(cfg scenarios.Config) string {
	switch {
	case cfg.MasqueradeAll:
		return "masquerade-all"
	case len(cfg.ClusterCIDRs) > 0:
		return "cluster-cidr"
	}
	return "no-cluster-cidr"
}

// mergePods merges the pods of several fixtures by address: one lab pod
// per address, named after it ("client" keeps its name), serving the union
// of the ports.
func mergePods(pods []scenarios.Pod) []scenarios.Pod {
	byIP := map[netip.Addr]*scenarios.Pod{}
	var order []netip.Addr
	for _, p := range pods {
		m := byIP[p.IP]
		if m == nil {
			name := "ep-" + strings.ReplaceAll(p.IP.String(), ".", "-")
			if p.IP == scenarios.Topology.Client.IP {
				name = scenarios.Topology.Client.Name
			}
			m = &scenarios.Pod{Name: name, IP: p.IP, Node: p.Node, Ports: map[proxier.Protocol][]uint16{}}
			byIP[p.IP] = m
			order = append(order, p.IP)
		}
		for proto, ports := range p.Ports {
			for _, port := range ports {
				if !slices.Contains(m.Ports[proto], port) {
					m.Ports[proto] = append(m.Ports[proto], port)
				}
			}
		}
	}
	var out []scenarios.Pod
	for _, a := range order {
		out = append(out, *byIP[a])
	}
	return out
}

// checkKernelState compares the node namespace's real IPVS table,
// swy-ipvs0 addresses, SWY- ipset members and SWY-IPVS- chains with the
// desired state `switchyard rules` renders for the same folder and flags.
func checkKernelState(t *testing.T, l *lab.Lab, dir string, cfg scenarios.Config) {
	t.Helper()
	want := parseRendered(switchyard(t, l, append([]string{"rules"}, ruleFlags(dir, cfg)...)...))
	wantVS, err := parseIPVSADM(want.IPVS)
	if err != nil {
		t.Fatal(err)
	}
	if d := diffLines(shape(wantVS), shape(ipvsadm(t, l, l.Node))); len(d) > 0 {
		t.Errorf("ipvsadm -Ln differs from the rendered state (- rendered only, + kernel only):\n  %s", strings.Join(d, "\n  "))
	}
	if d := diffLines(want.Addresses, dummyAddrs(t, l, l.Node)); len(d) > 0 {
		t.Errorf("addresses of swy-ipvs0 differ:\n  %s", strings.Join(d, "\n  "))
	}
	if d := diffLines(want.SetAdds, ipsetAdds(t, l, l.Node)); len(d) > 0 {
		t.Errorf("ipset members differ:\n  %s", strings.Join(d, "\n  "))
	}
	save := l.MustExec(l.Node, "iptables-nft-save")
	got, wantRules := ruleCounts(save), ruleCounts(want.Rules)
	for chain, n := range wantRules {
		if got[chain] != n {
			t.Errorf("iptables-save: %s has %d rules, want %d", chain, got[chain], n)
		}
	}
	for chain := range got {
		if _, ok := wantRules[chain]; !ok {
			t.Errorf("iptables-save: unexpected chain %s", chain)
		}
	}
	wantJumps := []string{
		"filter/FORWARD -> SWY-IPVS-FORWARD", "filter/INPUT -> SWY-IPVS-INPUT",
		"mangle/OUTPUT -> SWY-IPVS-ETP-LOCAL", "mangle/PREROUTING -> SWY-IPVS-PREROUTING",
		"nat/OUTPUT -> SWY-IPVS-SERVICES", "nat/POSTROUTING -> SWY-IPVS-POSTROUTING", "nat/PREROUTING -> SWY-IPVS-SERVICES",
	}
	if j := jumpsTo(save); !slices.Equal(j, wantJumps) {
		t.Errorf("iptables-save: jumps into SWY- chains are %v, want %v", j, wantJumps)
	}
}

// client is where a scenario packet is sent from.
type client struct {
	ns   string
	src  netip.Addr // bound source (invalid: the kernel picks)
	want netip.Addr // the source an endpoint sees when not masqueraded
}

func clientFor(l *lab.Lab, p scenarios.Packet, pods []scenarios.Pod) (client, error) {
	src, err := p.Source(pods)
	if err != nil {
		return client{}, err
	}
	switch p.Origin {
	case scenarios.FromPod:
		if pn := labPod(l, src); pn != nil {
			return client{ns: pn.NS, want: src}, nil
		}
		return client{}, fmt.Errorf("no pod with address %s in the lab", src)
	case scenarios.FromNode:
		return client{ns: l.Node, src: src, want: src}, nil
	case scenarios.FromOutside:
		return client{ns: l.Outside, src: src, want: src}, nil
	}
	return client{}, fmt.Errorf("unknown origin %q", p.Origin)
}

// labPod returns the lab pod with address a, or nil.
func labPod(l *lab.Lab, a netip.Addr) *lab.PodNS {
	i := slices.IndexFunc(l.Pods, func(p *lab.PodNS) bool { return p.IP == a })
	if i < 0 {
		return nil
	}
	return l.Pods[i]
}

// podNames maps endpoints ("ip:port") to the names of the lab pods
// answering there.
func podNames(l *lab.Lab, eps []string) (map[string]bool, error) {
	names := map[string]bool{}
	for _, e := range eps {
		ap, err := netip.ParseAddrPort(e)
		if err != nil {
			return nil, err
		}
		pn := labPod(l, ap.Addr())
		if pn == nil {
			return nil, fmt.Errorf("no pod has endpoint %s", e)
		}
		names[pn.Name] = true
	}
	return names, nil
}

// sendAndCheck sends real requests for p and returns the per-pod reply
// counts and every disagreement with p's expectation.
func sendAndCheck(l *lab.Lab, p scenarios.Packet, pods []scenarios.Pod) (map[string]int, []string) {
	c, err := clientFor(l, p, pods)
	if err != nil {
		return nil, []string{err.Error()}
	}
	var errs []string
	bad := func(format string, a ...any) {
		if s := fmt.Sprintf(format, a...); !slices.Contains(errs, s) {
			errs = append(errs, s)
		}
	}
	dial := func() error {
		_, err := lab.DialFrom(c.ns, c.src, p.Proto.Lower(), p.Dst.String(), failTimeout)
		return err
	}
	switch {
	case len(p.Endpoints) > 0:
		allowed, err := podNames(l, p.Endpoints)
		if err != nil {
			return nil, []string{err.Error()}
		}
		n := singleRequests
		switch {
		case p.Affinity:
			n = stickyRequests
		case len(p.Endpoints) > 1:
			n = spreadRequests
		}
		counts := map[string]int{}
		for i := 0; i < n; i++ {
			r, err := lab.DialFrom(c.ns, c.src, p.Proto.Lower(), p.Dst.String(), lab.DefaultDialTimeout)
			if err != nil {
				bad("request %d: %v", i+1, err)
				continue
			}
			counts[r.Name]++
			if !allowed[r.Name] {
				bad("answered by %s, not one of the allowed endpoints %v", r.Name, p.Endpoints)
			}
			peer := r.Peer.Addr()
			switch isNode := slices.Contains(scenarios.Topology.NodeAddrs, peer); {
			case p.Masqueraded && !isNode:
				bad("%s saw source %v, want a node address (masqueraded)", r.Name, peer)
			case !p.Masqueraded && peer != c.want:
				bad("%s saw source %v, want the client's own %v", r.Name, peer, c.want)
			}
		}
		switch {
		case p.Affinity && len(counts) > 1:
			bad("session affinity: one client reached %d pods", len(counts))
		case !p.Affinity && len(allowed) > 1 && len(counts) < 2:
			bad("no spread: %d requests over %d allowed endpoints", n, len(allowed))
		}
		return counts, errs
	case p.Refused:
		if err := dial(); !errors.Is(err, lab.ErrRefused) {
			bad("got %v, want connection refused at once", errOrAnswer(err))
		}
	case p.Dropped:
		if err := dial(); !errors.Is(err, lab.ErrTimeout) {
			bad("got %v, want no answer at all (dropped)", errOrAnswer(err))
		}
	case p.Unserved:
		if err := dial(); err == nil {
			bad("answered, want no endpoint to receive it")
		}
	}
	return nil, errs
}

func errOrAnswer(err error) string {
	if err == nil {
		return "an answer"
	}
	return err.Error()
}
