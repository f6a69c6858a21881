package ipvs

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/internal/ruletext"
	"github.com/switchyard-proxy/switchyard/internal/ruletext/ruletexttest"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// injectSnapshots are the snapshots of the injection test: the rich one
// and an IPv6 one with an externalTrafficPolicy Local load balancer.
func injectSnapshots() []*proxier.Snapshot {
	v6 := snapshot(svc("web6", proxier.TCP, "fd00:96::10", 80, ep("[fd00:244::5]:8080", true), ep("[fd00:244::6]:8080", false)))
	v6.Family = proxier.IPv6
	v6.NodeIPs = ips("fd00:50::10")
	v6.Masquerade.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:244::/64")}
	v6.Services[0].NodePort = 30080
	v6.Services[0].ExternalPolicyLocal = true
	v6.Services[0].LoadBalancerIPs = ips("2001:db8::7")
	return []*proxier.Snapshot{richSnapshot(), v6}
}

// rename puts ns, name+"-"+i, port and other into every string field of
// the snapshots (other also as the scheduler annotation).
func rename(snaps []*proxier.Snapshot, ns, name, port, other string) {
	for _, s := range snaps {
		s.NodeName = other
		s.HostPorts = []proxier.HostPort{{Pod: other + "/" + other, Protocol: proxier.TCP, HostPort: 8080,
			PodIP: s.NodeIPs[0], ContainerPort: 80}}
		for i, sp := range s.Services {
			sp.Name.Namespace, sp.Name.Name, sp.Name.Port = ns, name+"-"+strconv.Itoa(i), port
			sp.Scheduler = other
			for _, list := range [][]proxier.Endpoint{sp.AllEndpoints, sp.ClusterEndpoints, sp.LocalEndpoints} {
				for j := range list {
					list[j].NodeName, list[j].Zone = other, other
				}
			}
		}
	}
}

var xmark = regexp.MustCompile(`--set-xmark (0x[0-9a-f]+)/0xffffffff`)

// describe prints what st programs with service names replaced by their
// index in the snapshots and firewall marks by the index of the service
// port they belong to, so that renderings of the same snapshots under
// other names compare equal exactly when they program the same thing.
func describe(t *testing.T, snaps []*proxier.Snapshot, st *State) string {
	t.Helper()
	index := map[string]string{}
	for _, s := range snaps {
		for i, sp := range s.Services {
			// The position in its snapshot: the family is in the key.
			index[sp.Name.String()] = fmt.Sprintf("svc%d", i)
		}
	}
	// Marks are per family (the kernel keys fwmark services by family and
	// mark; each family has its own mangle table).
	type famMark struct {
		f proxier.IPFamily
		m uint32
	}
	marks := map[famMark]string{}
	var servers []string
	for _, v := range st.Servers {
		who, ok := index[v.Service]
		if !ok {
			t.Fatalf("virtual server %v names unknown service %q", v.Key, v.Service)
		}
		k := v.Key
		if k.FWMark != 0 {
			marks[famMark{k.Family, k.FWMark}] = who
			k.FWMark = 1
		}
		servers = append(servers, fmt.Sprintf("%v %s sched=%s persistent=%v/%d dests=%v", k, who, v.Scheduler, v.Persistent, v.Timeout, v.Dests))
	}
	slices.Sort(servers)
	var b strings.Builder
	b.WriteString(strings.Join(servers, "\n") + "\n")
	b.WriteString(FormatIPSets(st.Sets))
	fmt.Fprintf(&b, "addresses %v\n", st.Addresses)
	for _, fr := range st.Rules {
		text, comments, err := ruletexttest.Canonical(fr.Text, nil)
		if err != nil {
			t.Fatalf("%v rules: %v\n%s", fr.Family, err, fr.Text)
		}
		for _, c := range comments {
			if !ruletext.Writable(c) {
				t.Fatalf("unsafe comment %q", c)
			}
		}
		text = xmark.ReplaceAllStringFunc(text, func(m string) string {
			v, err := strconv.ParseUint(xmark.FindStringSubmatch(m)[1], 0, 32)
			who := marks[famMark{fr.Family, uint32(v)}]
			if err != nil || who == "" {
				t.Fatalf("%v mark rule %q matches no fwmark virtual server", fr.Family, m)
			}
			return "--set-xmark " + who
		})
		fmt.Fprintf(&b, "%v %v\n%s", fr.Family, fr.Chains, text)
	}
	return b.String()
}

// checkNoInjectionIPVS renders the snapshots with hostile names and checks
// that the virtual servers, ipsets and iptables rules are exactly those of
// the benign rendering (apart from comments and names).
func checkNoInjectionIPVS(t *testing.T, ns, name, port, other string) {
	opts := RenderOptions{Scheduler: "wlc", LocalAddrs: ips("192.168.50.10", "fd00:50::10")}
	benign := injectSnapshots()
	for _, s := range benign {
		s.Services[0].Scheduler = "sh" // the hostile one falls back to wlc unless valid
	}
	hostile := injectSnapshots()
	rename(hostile, ns, name, port, other)
	if validScheduler(other) {
		for _, s := range benign {
			for _, sp := range s.Services {
				sp.Scheduler = other
			}
		}
	} else {
		for _, s := range benign {
			s.Services[0].Scheduler = ""
		}
	}
	good, err := Render(benign, opts)
	if err != nil {
		t.Fatal(err)
	}
	bad, err := Render(hostile, opts)
	if err != nil {
		t.Fatalf("names %q %q %q %q: %v", ns, name, port, other, err)
	}
	if g, w := describe(t, hostile, bad), describe(t, benign, good); g != w {
		t.Fatalf("names %q %q %q %q change what is programmed:\n got:\n%s\nwant:\n%s", ns, name, port, other, g, w)
	}
}

// FuzzRenderNames is the IPVS mode's injection fuzz test: arbitrary
// strings in every string field of the snapshots change nothing but the
// comments. `go test ./ipvs -run '^$' -fuzz FuzzRenderNames -fuzztime 60s`.
func FuzzRenderNames(f *testing.F) {
	f.Add("default", "web", "http", "node-a")
	f.Add("default", "web", "http", "sh")
	for _, h := range ruletexttest.Hostile {
		f.Add("default", "web", h, "node-a")
		f.Add(h, "web", "http", h)
		f.Add("default", h, "", h)
		f.Add(h, h, h, h)
	}
	f.Fuzz(checkNoInjectionIPVS)
}
