package scenarios

import (
	"io/fs"
	"net/netip"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
)

func TestTableIsValid(t *testing.T) {
	names := map[string]bool{}
	for _, s := range All() {
		if names[s.Name] {
			t.Errorf("duplicate scenario name %s", s.Name)
		}
		names[s.Name] = true
		if err := s.Validate(); err != nil {
			t.Error(err)
		}
	}
}

func TestEveryFeatureAndFixtureIsCovered(t *testing.T) {
	covered := map[Feature]bool{}
	used := map[string]bool{}
	kinds := map[string]bool{}
	for _, s := range All() {
		used[s.Fixture] = true
		for _, f := range s.Features {
			covered[f] = true
		}
		for _, p := range s.Packets {
			switch {
			case p.Refused:
				kinds["refused"] = true
			case p.Dropped:
				kinds["dropped"] = true
			case p.Unserved:
				kinds["unserved"] = true
			case p.Masqueraded:
				kinds["masqueraded"] = true
			default:
				kinds["source kept"] = true
			}
			kinds[string(p.Origin)] = true
			kinds[string(p.Proto)] = true
		}
	}
	for _, f := range AllFeatures {
		if !covered[f] {
			t.Errorf("feature %s is covered by no scenario", f)
		}
	}
	files, err := fs.Glob(fixtures, "testdata/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !used[strings.TrimPrefix(f, "testdata/")] {
			t.Errorf("fixture %s is used by no scenario", f)
		}
	}
	for _, k := range []string{"refused", "dropped", "unserved", "masqueraded", "source kept", "pod", "node", "outside", "TCP", "UDP", "SCTP"} {
		if !kinds[k] {
			t.Errorf("no packet is %s", k)
		}
	}
}

func TestValidateCatchesMistakes(t *testing.T) {
	base := All()[0] // clusterip-tcp
	pkt := base.Packets[0]
	cases := map[string]func(p *Packet){
		"not-ready endpoint": func(p *Packet) { p.Endpoints = []string{"10.244.0.4:8080"} },
		"unknown endpoint":   func(p *Packet) { p.Endpoints = []string{"10.244.9.9:8080"} },
		"wrong protocol":     func(p *Packet) { p.Proto = proxier.UDP },
		"two expectations":   func(p *Packet) { p.Refused = true },
		"no expectation":     func(p *Packet) { p.Endpoints = nil },
		"masq without eps":   func(p *Packet) { p.Endpoints, p.Dropped = nil, true },
		"unknown pod":        func(p *Packet) { p.From = "nobody" },
		"foreign dst":        func(p *Packet) { p.Dst = netip.MustParseAddrPort("8.8.8.8:53") },
		"src on pod":         func(p *Packet) { p.Src = netip.MustParseAddr("192.0.2.5") },
		"outside src range": func(p *Packet) {
			p.Origin, p.Src = FromOutside, netip.MustParseAddr("203.0.113.1")
		},
	}
	for name, mutate := range cases {
		s := base
		p := pkt
		p.Endpoints = append([]string(nil), pkt.Endpoints...)
		mutate(&p)
		if name == "masq without eps" {
			p.Masqueraded = true
		}
		s.Packets = []Packet{p}
		if err := s.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, p)
		}
	}
}

func TestPodsOfFixture(t *testing.T) {
	var s Scenario
	for _, x := range All() {
		if x.Name == "clusterip-tcp" {
			s = x
		}
	}
	objs, err := s.Objects()
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Services) != 1 || len(objs.Slices) != 1 || len(objs.Nodes) != 1 {
		t.Fatalf("objects: %d services, %d slices, %d nodes", len(objs.Services), len(objs.Slices), len(objs.Nodes))
	}
	pods, err := objs.Pods()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range pods {
		got = append(got, p.Name+"="+p.IP.String()+"@"+p.Node)
		if p.Name != "client" && (len(p.Ports[proxier.TCP]) != 1 || p.Ports[proxier.TCP][0] != 8080) {
			t.Errorf("pod %s ports %v", p.Name, p.Ports)
		}
	}
	want := "client=10.244.0.100@node-a web-1=10.244.0.2@node-a web-2=10.244.0.3@node-a web-3=10.244.1.2@node-b web-4=10.244.0.4@node-a"
	if strings.Join(got, " ") != want {
		t.Errorf("pods %s\nwant %s", strings.Join(got, " "), want)
	}
}

func TestDecodeRejectsUnknown(t *testing.T) {
	if _, err := Decode([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")); err == nil {
		t.Error("Decode accepted a Pod")
	}
	if _, err := Decode([]byte("apiVersion: v1\nkind: Service\nspec: {clusterIPP: 1.2.3.4}\n")); err == nil {
		t.Error("Decode accepted an unknown field")
	}
}
