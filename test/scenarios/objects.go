package scenarios

import (
	"bytes"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/yaml"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Objects are the typed Kubernetes objects of a fixture.
type Objects struct {
	Nodes    []*corev1.Node
	Services []*corev1.Service
	Slices   []*discoveryv1.EndpointSlice
}

// Pod is a pod the scenario needs in the lab: every endpoint address of the
// fixture (ready or not, local or on another node), plus Topology.Client.
type Pod struct {
	Name string
	IP   netip.Addr
	// Node is the node the pod runs on according to its endpoint.
	Node string
	// Ports are the ports the pod must answer on, by protocol.
	Ports map[proxier.Protocol][]uint16
}

// YAML returns the raw text of the scenario's fixture (for writing a
// manifests folder).
func (s Scenario) YAML() ([]byte, error) {
	b, err := fixtures.ReadFile("testdata/" + s.Fixture)
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", s.Name, err)
	}
	return b, nil
}

// Objects decodes the scenario's fixture.
func (s Scenario) Objects() (*Objects, error) {
	b, err := s.YAML()
	if err != nil {
		return nil, err
	}
	objs, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("scenario %s: fixture %s: %w", s.Name, s.Fixture, err)
	}
	return objs, nil
}

// Decode parses multi-document YAML holding Nodes, Services and
// EndpointSlices; unknown kinds or fields are errors.
func Decode(b []byte) (*Objects, error) {
	out := &Objects{}
	for i, doc := range splitDocs(b) {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		var err error
		switch meta.APIVersion + "/" + meta.Kind {
		case "v1/Node":
			o := &corev1.Node{}
			err = yaml.UnmarshalStrict(doc, o)
			out.Nodes = append(out.Nodes, o)
		case "v1/Service":
			o := &corev1.Service{}
			err = yaml.UnmarshalStrict(doc, o)
			out.Services = append(out.Services, o)
		case "discovery.k8s.io/v1/EndpointSlice":
			o := &discoveryv1.EndpointSlice{}
			err = yaml.UnmarshalStrict(doc, o)
			out.Slices = append(out.Slices, o)
		default:
			return nil, fmt.Errorf("document %d: unsupported kind %s %s", i+1, meta.APIVersion, meta.Kind)
		}
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, meta.Kind, err)
		}
	}
	return out, nil
}

func splitDocs(b []byte) [][]byte {
	var out [][]byte
	for _, d := range bytes.Split(append([]byte("\n"), b...), []byte("\n---")) {
		// Skip documents holding only comments and blank lines.
		empty := true
		for _, line := range strings.Split(string(d), "\n") {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				empty = false
			}
		}
		if !empty {
			out = append(out, d)
		}
	}
	return out
}

// Pods returns the pods the scenario's packets and endpoints involve,
// sorted by name: Topology.Client and one pod per endpoint address, named
// after the endpoint's targetRef (or "ep-<ip>" without one).
func (o *Objects) Pods() ([]Pod, error) {
	byIP := map[netip.Addr]*Pod{}
	client := Topology.Client
	client.Ports = map[proxier.Protocol][]uint16{}
	byIP[client.IP] = &client
	for _, sl := range o.Slices {
		for _, ep := range sl.Endpoints {
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					return nil, fmt.Errorf("slice %s/%s: %w", sl.Namespace, sl.Name, err)
				}
				p, ok := byIP[ip]
				if !ok {
					name := "ep-" + strings.ReplaceAll(a, ".", "-")
					if ep.TargetRef != nil && ep.TargetRef.Name != "" {
						name = ep.TargetRef.Name
					}
					p = &Pod{Name: name, IP: ip, Ports: map[proxier.Protocol][]uint16{}}
					if ep.NodeName != nil {
						p.Node = *ep.NodeName
					}
					byIP[ip] = p
				}
				for _, port := range sl.Ports {
					if port.Port == nil {
						continue
					}
					proto := proxier.TCP
					if port.Protocol != nil {
						proto = proxier.Protocol(*port.Protocol)
					}
					p.Ports[proto] = addPort(p.Ports[proto], uint16(*port.Port))
				}
			}
		}
	}
	var out []Pod
	names := map[string]bool{}
	for _, p := range byIP {
		if names[p.Name] {
			return nil, fmt.Errorf("two pods named %s", p.Name)
		}
		names[p.Name] = true
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func addPort(ps []uint16, p uint16) []uint16 {
	for _, x := range ps {
		if x == p {
			return ps
		}
	}
	ps = append(ps, p)
	sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
	return ps
}
