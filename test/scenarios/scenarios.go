// Package scenarios is the mode-neutral table of packet scenarios that every
// proxy backend must satisfy. A scenario is a set of Kubernetes objects (YAML
// fixtures under testdata/: a Node, Services, EndpointSlices), the proxy
// configuration, and packets with the outcome each must have: which endpoints
// may receive it (and whether its source is masqueraded), or that it is
// refused, dropped, or served by no endpoint.
//
// The same table is checked twice per backend: by the packet tracer over
// the backend's rendered rules (test/iptrace for iptables), and by real
// traffic in the network-namespace lab (test/lab). Nothing here knows about
// any backend.
//
// Every address lives inside the test namespaces only (see Topology).
package scenarios

import (
	"embed"
	"fmt"
	"net/netip"

	"github.com/switchyard-proxy/switchyard/proxier"
)

//go:embed testdata/*.yaml
var fixtures embed.FS

// Topology is the cluster every scenario assumes.
var Topology = struct {
	// NodeName is the node the proxy runs on.
	NodeName string
	// NodeIP is its InternalIP; NodeAddrs are all its local addresses (the
	// lab also puts the gateway of the outside network on the node).
	NodeIP    netip.Addr
	NodeAddrs []netip.Addr
	// PodCIDR is this node's pod range; ClusterCIDR all pods'; pods of
	// node-b use 10.244.1.0/24.
	PodCIDR, ClusterCIDR, ServiceCIDR netip.Prefix
	// OutsideNet is the off-cluster client network; OutsideClient the
	// default client address in it.
	OutsideNet    netip.Prefix
	OutsideClient netip.Addr
	// Client is a client pod on this node that is no endpoint of anything.
	Client Pod
}{
	NodeName:      "node-a",
	NodeIP:        netip.MustParseAddr("10.0.0.10"),
	NodeAddrs:     []netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("192.0.2.1")},
	PodCIDR:       netip.MustParsePrefix("10.244.0.0/24"),
	ClusterCIDR:   netip.MustParsePrefix("10.244.0.0/16"),
	ServiceCIDR:   netip.MustParsePrefix("10.96.0.0/16"),
	OutsideNet:    netip.MustParsePrefix("192.0.2.0/24"),
	OutsideClient: netip.MustParseAddr("192.0.2.100"),
	Client:        Pod{Name: "client", IP: netip.MustParseAddr("10.244.0.100"), Node: "node-a"},
}

// Origin says where a packet starts.
type Origin string

const (
	// FromPod: sent by a pod on this node (Packet.From names it).
	FromPod Origin = "pod"
	// FromNode: sent by a process in the node's network namespace, from
	// the node IP.
	FromNode Origin = "node"
	// FromOutside: arrives from the off-cluster client network.
	FromOutside Origin = "outside"
)

// Config is the proxy configuration a scenario runs with.
type Config struct {
	// ClusterCIDRs turn on masquerading of off-cluster sources sent to
	// cluster IPs (--cluster-cidr).
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades everything sent to a cluster IP.
	MasqueradeAll bool
}

// Expect is the outcome a packet must have. Exactly one of Endpoints,
// Refused, Dropped and Unserved is set.
type Expect struct {
	// Endpoints ("ip:port") are every endpoint that may receive the packet:
	// it must reach one of them, and each of them must be possible.
	Endpoints []string
	// Masqueraded (with Endpoints): the endpoint sees a node address as the
	// source; false means it sees the client's own address.
	Masqueraded bool
	// Affinity (with Endpoints): ClientIP session affinity applies, so one
	// client keeps getting the same endpoint.
	Affinity bool
	// Refused: rejected at once (TCP reset / ICMP port unreachable), never
	// a timeout.
	Refused bool
	// Dropped: silently discarded (the client times out).
	Dropped bool
	// Unserved: no endpoint of any service receives it; how it fails
	// (dropped, refused, routed elsewhere) is up to the mode.
	Unserved bool
}

// Packet is the first packet of one connection.
type Packet struct {
	// Name describes the packet in test output.
	Name   string
	Origin Origin
	// From names the sending pod for FromPod (default Topology.Client).
	From string
	// Src overrides the source address for FromOutside (default
	// Topology.OutsideClient) and FromNode (default Topology.NodeIP; e.g.
	// 127.0.0.1 for localhost node ports).
	Src netip.Addr
	// Proto and Dst are the protocol and destination "ip:port".
	Proto proxier.Protocol
	Dst   netip.AddrPort
	Expect
}

// Scenario is one row of the table.
type Scenario struct {
	// Name is unique in the table.
	Name string
	// Fixture names the YAML file under testdata/ holding the objects.
	Fixture string
	// Node is the name of the node the proxy runs as.
	Node   string
	Config Config
	// Features lists the features of issue 3 this scenario covers.
	Features []Feature
	Packets  []Packet
	// IPTablesOnly marks a scenario of a feature only the iptables mode
	// has (upstream's IPVS and nftables modes do not have it either).
	IPTablesOnly bool
	// Problems are substrings of the problems the planner must report for
	// the fixture (bad input next to good services); any other problem is
	// a failure.
	Problems []string
}

// Feature is a proxy feature a scenario covers.
type Feature string

// The features the table must cover.
const (
	FeatClusterIPTCP      Feature = "clusterip-tcp"
	FeatClusterIPUDP      Feature = "clusterip-udp"
	FeatClusterIPSCTP     Feature = "clusterip-sctp"
	FeatNodePortCluster   Feature = "nodeport-etp-cluster"
	FeatNodePortLocal     Feature = "nodeport-etp-local"
	FeatExternalIPs       Feature = "external-ips"
	FeatLoadBalancer      Feature = "loadbalancer-source-ranges"
	FeatAffinity          Feature = "session-affinity"
	FeatInternalLocal     Feature = "itp-local"
	FeatNoEndpoints       Feature = "no-endpoints-reject"
	FeatNotReady          Feature = "not-ready-excluded"
	FeatTerminating       Feature = "terminating-fallback"
	FeatHairpin           Feature = "hairpin"
	FeatMasqClusterCIDR   Feature = "masquerade-off-cluster"
	FeatMasqueradeAll     Feature = "masquerade-all"
	FeatNoMasqueradeCIDR  Feature = "no-cluster-cidr"
	FeatBothPoliciesLocal Feature = "itp-and-etp-local"
	FeatTopologyZone      Feature = "topology-prefer-close"
	FeatTopologyNode      Feature = "topology-prefer-same-node"
	FeatBadInput          Feature = "bad-input-next-to-good"
	FeatLocalhostNodePort Feature = "localhost-nodeport"
)

// AllFeatures lists every Feature; the table covers each one.
var AllFeatures = []Feature{
	FeatClusterIPTCP, FeatClusterIPUDP, FeatClusterIPSCTP, FeatNodePortCluster, FeatNodePortLocal,
	FeatExternalIPs, FeatLoadBalancer, FeatAffinity, FeatInternalLocal, FeatNoEndpoints, FeatNotReady,
	FeatTerminating, FeatHairpin, FeatMasqClusterCIDR, FeatMasqueradeAll, FeatNoMasqueradeCIDR,
	FeatBothPoliciesLocal, FeatTopologyZone, FeatTopologyNode, FeatBadInput, FeatLocalhostNodePort,
}

// Source returns the packet's source address, given the scenario's pods.
func (p Packet) Source(pods []Pod) (netip.Addr, error) {
	switch p.Origin {
	case FromNode:
		if p.Src.IsValid() {
			return p.Src, nil
		}
		return Topology.NodeIP, nil
	case FromOutside:
		if p.Src.IsValid() {
			return p.Src, nil
		}
		return Topology.OutsideClient, nil
	case FromPod:
		name := p.From
		if name == "" {
			name = Topology.Client.Name
		}
		for _, pod := range pods {
			if pod.Name == name {
				return pod.IP, nil
			}
		}
		return netip.Addr{}, fmt.Errorf("packet %q: no pod %q", p.Name, name)
	}
	return netip.Addr{}, fmt.Errorf("packet %q: bad origin %q", p.Name, p.Origin)
}

// String describes the packet.
func (p Packet) String() string {
	from := string(p.Origin)
	switch {
	case p.Origin == FromPod && p.From != "":
		from = "pod " + p.From
	case p.Src.IsValid():
		from = "outside " + p.Src.String()
	}
	return fmt.Sprintf("%s: %s %s -> %s", p.Name, from, p.Proto, p.Dst)
}
