package iptables

import (
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/internal/ruletext"
	"github.com/switchyard-proxy/switchyard/internal/ruletext/ruletexttest"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// renamed returns copies of the golden cases' snapshots in which every
// string that comes from an object is derived from ns, name, port and
// other (service i of a snapshot is named name+"-"+i so names stay
// distinct), and per case a map from the chain names of the renamed
// service ports to those of the same snapshots with benign names.
func renamed(ns, name, port, other string) (hostile, benign map[string][]*proxier.Snapshot, chainMaps map[string]map[string]string) {
	hostile, benign = goldenCases(), goldenCases()
	chainMaps = map[string]map[string]string{}
	for c, snaps := range hostile {
		chainMap := map[string]string{}
		chainMaps[c] = chainMap
		for si, s := range snaps {
			s.NodeName = other
			s.HostPorts = []proxier.HostPort{{Pod: other + "/" + other, Protocol: proxier.TCP, HostPort: 8080,
				PodIP: s.NodeIPs[0], ContainerPort: 80}}
			for i, sp := range s.Services {
				good := benign[c][si].Services[i].Name
				sp.Name.Namespace, sp.Name.Name, sp.Name.Port = ns, name+"-"+strconv.Itoa(i), port
				sp.Scheduler = other
				bad := sp.Name
				h, g := chainsFor(bad), chainsFor(good)
				chainMap[h.svc], chainMap[h.svl], chainMap[h.ext], chainMap[h.fw] = g.svc, g.svl, g.ext, g.fw
				for _, list := range [][]proxier.Endpoint{sp.AllEndpoints, sp.ClusterEndpoints, sp.LocalEndpoints} {
					for j := range list {
						list[j].NodeName, list[j].Zone = other, other
						chainMap[endpointChain(bad, list[j])] = endpointChain(good, list[j])
					}
				}
			}
		}
	}
	return hostile, benign, chainMaps
}

// checkNoInjection renders the golden cases with hostile names and checks
// that the tracer parses exactly the rules of the benign rendering, apart
// from comments, and that every comment is safe.
func checkNoInjection(t *testing.T, ns, name, port, other string) {
	hostile, benign, chainMaps := renamed(ns, name, port, other)
	cases := make([]string, 0, len(hostile))
	for c := range hostile {
		cases = append(cases, c)
	}
	sort.Strings(cases)
	for _, c := range cases {
		pairs := make([]string, 0, 2*len(chainMaps[c]))
		for h, g := range chainMaps[c] {
			pairs = append(pairs, h, g)
		}
		rename := strings.NewReplacer(pairs...).Replace
		badText, err := Render(hostile[c])
		if err != nil {
			t.Fatalf("%s: render: %v", c, err)
		}
		goodText, err := Render(benign[c])
		if err != nil {
			t.Fatalf("%s: render benign: %v", c, err)
		}
		got, comments, err := ruletexttest.Canonical(badText, rename)
		if err != nil {
			t.Fatalf("%s: names %q %q %q: %v\n%s", c, ns, name, port, err, badText)
		}
		want, _, err := ruletexttest.Canonical(goodText, nil)
		if err != nil {
			t.Fatalf("%s: benign: %v", c, err)
		}
		if got != want {
			t.Fatalf("%s: names %q %q %q change the rules:\n got:\n%s\nwant:\n%s\nrendered:\n%s", c, ns, name, port, got, want, badText)
		}
		for _, cm := range comments {
			if !ruletext.Writable(cm) {
				t.Fatalf("%s: unsafe comment %q", c, cm)
			}
		}
	}
}

// FuzzRenderNames puts arbitrary strings in every string field of the
// snapshots of the golden cases and checks that the rendered rules are
// exactly those of the same snapshots with benign names: no name can add,
// remove or reorder a rule. The seed corpus runs in plain `go test`;
// `go test ./iptables -run '^$' -fuzz FuzzRenderNames -fuzztime 60s`
// explores further.
func FuzzRenderNames(f *testing.F) {
	f.Add("default", "web", "http", "node-a")
	for _, h := range ruletexttest.Hostile {
		f.Add("default", "web", h, "node-a")
		f.Add(h, "web", "http", h)
		f.Add("default", h, "", h)
		f.Add(h, h, h, h)
	}
	f.Fuzz(checkNoInjection)
}

func TestPortKeyUnambiguous(t *testing.T) {
	a := proxier.ServicePortName{Namespace: "a/b", Name: "c", Port: "p", Protocol: proxier.TCP}
	b := proxier.ServicePortName{Namespace: "a", Name: "b/c", Port: "p", Protocol: proxier.TCP}
	c := proxier.ServicePortName{Namespace: "a", Name: "b:c", Port: "", Protocol: proxier.TCP}
	d := proxier.ServicePortName{Namespace: "a", Name: "b", Port: "c:", Protocol: proxier.TCP}
	seen := map[string]proxier.ServicePortName{}
	for _, n := range []proxier.ServicePortName{a, b, c, d} {
		ch := ServiceChain(n)
		if prev, dup := seen[ch]; dup {
			t.Errorf("%+v and %+v share chain %s", prev, n, ch)
		}
		seen[ch] = n
	}
	// Valid names keep the key (and chain hashes) they always had.
	valid := proxier.ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: proxier.TCP}
	if got := valid.Key(); got != "default/web:http/tcp" {
		t.Errorf("Key = %q", got)
	}
}
