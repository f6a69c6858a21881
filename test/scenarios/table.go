package scenarios

import (
	"net/netip"

	"github.com/switchyard-proxy/switchyard/proxier"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// reach expects the packet to reach one of eps, masqueraded or not.
func reach(masq bool, eps ...string) Expect { return Expect{Endpoints: eps, Masqueraded: masq} }

// sticky is reach with ClientIP affinity.
func sticky(masq bool, eps ...string) Expect {
	e := reach(masq, eps...)
	e.Affinity = true
	return e
}

var (
	refused  = Expect{Refused: true}
	dropped  = Expect{Dropped: true}
	unserved = Expect{Unserved: true}
	withCIDR = Config{ClusterCIDRs: []netip.Prefix{Topology.ClusterCIDR}}

	nodePort = func(port uint16) netip.AddrPort { return netip.AddrPortFrom(Topology.NodeIP, port) }
	gwPort   = func(port uint16) netip.AddrPort { return netip.AddrPortFrom(Topology.NodeAddrs[1], port) }

	// outsideDenied is an outside client outside loadbalancer.yaml's
	// loadBalancerSourceRanges (192.0.2.0/25).
	outsideDenied = netip.MustParseAddr("192.0.2.200")
)

// OutsideClients lists every outside source address the table uses; the lab
// must give the outside namespace all of them.
var OutsideClients = []netip.Addr{Topology.OutsideClient, outsideDenied}

// All returns the scenario table. The returned slice is a fresh copy.
func All() []Scenario {
	web := []string{"10.244.0.2:8080", "10.244.0.3:8080", "10.244.1.2:8080"}
	two := []string{"10.244.0.2:8080", "10.244.1.2:8080"}
	return []Scenario{
		{
			Name: "clusterip-tcp", Fixture: "clusterip-tcp.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatClusterIPTCP, FeatNotReady, FeatMasqClusterCIDR},
			Packets: []Packet{
				{Name: "pod to cluster IP: ready endpoints only, source kept", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.0.10:80"), Expect: reach(false, web...)},
				{Name: "node to cluster IP is masqueraded", Origin: FromNode, Proto: proxier.TCP, Dst: ap("10.96.0.10:80"), Expect: reach(true, web...)},
				{Name: "off-cluster source to cluster IP is masqueraded", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("10.96.0.10:80"), Expect: reach(true, web...)},
				{Name: "wrong protocol is not served", Origin: FromPod, Proto: proxier.UDP, Dst: ap("10.96.0.10:80"), Expect: unserved},
				{Name: "wrong port is not served", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.0.10:81"), Expect: unserved},
			},
		},
		{
			Name: "clusterip-tcp-no-cluster-cidr", Fixture: "clusterip-tcp.yaml", Node: Topology.NodeName,
			Features: []Feature{FeatNoMasqueradeCIDR},
			Packets: []Packet{
				{Name: "off-cluster source keeps its address without --cluster-cidr", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("10.96.0.10:80"), Expect: reach(false, web...)},
				{Name: "pod source kept", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.0.10:80"), Expect: reach(false, web...)},
			},
		},
		{
			Name: "clusterip-tcp-masquerade-all", Fixture: "clusterip-tcp.yaml", Node: Topology.NodeName,
			Config:   Config{MasqueradeAll: true, ClusterCIDRs: withCIDR.ClusterCIDRs},
			Features: []Feature{FeatMasqueradeAll},
			Packets: []Packet{
				{Name: "pod to cluster IP is masqueraded with --masquerade-all", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.0.10:80"), Expect: reach(true, web...)},
			},
		},
		{
			Name: "clusterip-udp", Fixture: "clusterip-udp.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatClusterIPUDP},
			Packets: []Packet{
				{Name: "pod to UDP cluster IP", Origin: FromPod, Proto: proxier.UDP, Dst: ap("10.96.0.53:53"), Expect: reach(false, "10.244.0.2:5353", "10.244.1.2:5353")},
				{Name: "outside to UDP cluster IP is masqueraded", Origin: FromOutside, Proto: proxier.UDP, Dst: ap("10.96.0.53:53"), Expect: reach(true, "10.244.0.2:5353", "10.244.1.2:5353")},
				{Name: "node to UDP cluster IP", Origin: FromNode, Proto: proxier.UDP, Dst: ap("10.96.0.53:53"), Expect: reach(true, "10.244.0.2:5353", "10.244.1.2:5353")},
			},
		},
		{
			Name: "clusterip-sctp", Fixture: "clusterip-sctp.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatClusterIPSCTP},
			Packets: []Packet{
				{Name: "pod to SCTP cluster IP", Origin: FromPod, Proto: proxier.SCTP, Dst: ap("10.96.0.132:9000"), Expect: reach(false, "10.244.0.2:9000", "10.244.1.2:9000")},
			},
		},
		{
			Name: "nodeport-etp-cluster", Fixture: "nodeport-cluster.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatNodePortCluster},
			Packets: []Packet{
				{Name: "outside to node port on node IP, masqueraded", Origin: FromOutside, Proto: proxier.TCP, Dst: nodePort(30080), Expect: reach(true, two...)},
				{Name: "outside to node port on the node's other address", Origin: FromOutside, Proto: proxier.TCP, Dst: gwPort(30080), Expect: reach(true, two...)},
				{Name: "pod to node port", Origin: FromPod, Proto: proxier.TCP, Dst: nodePort(30080), Expect: reach(true, two...)},
				{Name: "node to its own node port", Origin: FromNode, Proto: proxier.TCP, Dst: nodePort(30080), Expect: reach(true, two...)},
				{Name: "outside to the cluster IP of a node port service", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("10.96.1.1:80"), Expect: reach(true, two...)},
				{Name: "UDP node port", Origin: FromOutside, Proto: proxier.UDP, Dst: nodePort(30053), Expect: reach(true, "10.244.0.3:5353")},
				{Name: "TCP node port over UDP is not served", Origin: FromOutside, Proto: proxier.UDP, Dst: nodePort(30080), Expect: unserved},
			},
		},
		{
			Name: "nodeport-etp-local", Fixture: "nodeport-local.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatNodePortLocal},
			Packets: []Packet{
				{Name: "outside to eTP Local node port: local endpoint, source kept", Origin: FromOutside, Proto: proxier.TCP, Dst: nodePort(30081), Expect: reach(false, "10.244.0.2:8080")},
				{Name: "same on the node's other address", Origin: FromOutside, Proto: proxier.TCP, Dst: gwPort(30081), Expect: reach(false, "10.244.0.2:8080")},
				{Name: "pod to eTP Local node port uses the cluster endpoints", Origin: FromPod, Proto: proxier.TCP, Dst: nodePort(30081), Expect: reach(false, two...)},
				{Name: "outside to the cluster IP ignores eTP", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("10.96.2.1:80"), Expect: reach(true, two...)},
				{Name: "eTP Local without local endpoints drops external traffic", Origin: FromOutside, Proto: proxier.TCP, Dst: nodePort(30082), Expect: dropped},
			},
		},
		{
			Name: "external-ips", Fixture: "external-ips.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatExternalIPs},
			Packets: []Packet{
				{Name: "outside to external IP", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("198.51.100.10:80"), Expect: reach(true, two...)},
				{Name: "pod to external IP", Origin: FromPod, Proto: proxier.TCP, Dst: ap("198.51.100.10:80"), Expect: reach(true, two...)},
				{Name: "node to external IP", Origin: FromNode, Proto: proxier.TCP, Dst: ap("198.51.100.10:80"), Expect: reach(true, two...)},
				{Name: "external IP on another port is not served", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("198.51.100.10:81"), Expect: unserved},
			},
		},
		{
			Name: "loadbalancer-source-ranges", Fixture: "loadbalancer.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatLoadBalancer},
			Packets: []Packet{
				{Name: "allowed source to LB IP", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("198.51.100.20:80"), Expect: reach(true, two...)},
				{Name: "denied source to LB IP is dropped", Origin: FromOutside, Src: outsideDenied, Proto: proxier.TCP, Dst: ap("198.51.100.20:80"), Expect: dropped},
				{Name: "source ranges do not restrict the node port", Origin: FromOutside, Src: outsideDenied, Proto: proxier.TCP, Dst: nodePort(30090), Expect: reach(true, two...)},
				{Name: "source ranges do not restrict the cluster IP", Origin: FromOutside, Src: outsideDenied, Proto: proxier.TCP, Dst: ap("10.96.4.1:80"), Expect: reach(true, two...)},
			},
		},
		{
			Name: "session-affinity", Fixture: "affinity.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatAffinity},
			Packets: []Packet{
				{Name: "pod to sticky service", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.5.1:80"), Expect: sticky(false, web...)},
				{Name: "outside to sticky service", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("10.96.5.1:80"), Expect: sticky(true, web...)},
			},
		},
		{
			Name: "internal-traffic-policy-local", Fixture: "internal-local.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatInternalLocal},
			Packets: []Packet{
				{Name: "pod to iTP Local service: local endpoint only", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.6.1:80"), Expect: reach(false, "10.244.0.2:8080")},
				{Name: "node to iTP Local service: local endpoint only", Origin: FromNode, Proto: proxier.TCP, Dst: ap("10.96.6.1:80"), Expect: reach(true, "10.244.0.2:8080")},
				{Name: "outside to iTP Local service: local endpoint, masqueraded", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("10.96.6.1:80"), Expect: reach(true, "10.244.0.2:8080")},
				{Name: "iTP Local without local endpoints drops", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.6.2:80"), Expect: dropped},
			},
		},
		{
			Name: "no-endpoints", Fixture: "no-endpoints.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatNoEndpoints, FeatNotReady},
			Packets: []Packet{
				{Name: "empty slice: pod refused", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.7.1:80"), Expect: refused},
				{Name: "empty slice: outside refused", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("10.96.7.1:80"), Expect: refused},
				{Name: "empty slice: node refused", Origin: FromNode, Proto: proxier.TCP, Dst: ap("10.96.7.1:80"), Expect: refused},
				{Name: "no slice: cluster IP refused", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.7.2:80"), Expect: refused},
				{Name: "no slice: node port refused", Origin: FromOutside, Proto: proxier.TCP, Dst: nodePort(30070), Expect: refused},
				{Name: "only not-ready endpoints: refused", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.7.3:80"), Expect: refused},
				{Name: "UDP without endpoints: refused", Origin: FromPod, Proto: proxier.UDP, Dst: ap("10.96.7.4:53"), Expect: refused},
			},
		},
		{
			Name: "terminating-fallback", Fixture: "terminating.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatTerminating},
			Packets: []Packet{
				{Name: "no ready endpoint: serving-terminating one serves", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.8.1:80"), Expect: reach(false, "10.244.0.2:8080")},
				{Name: "ready endpoint present: terminating one gets nothing", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.8.2:80"), Expect: reach(false, "10.244.0.4:8080")},
			},
		},
		{
			Name: "hairpin", Fixture: "hairpin.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatHairpin},
			Packets: []Packet{
				{Name: "endpoint reaches itself through its service, masqueraded", Origin: FromPod, From: "hair-1", Proto: proxier.TCP, Dst: ap("10.96.9.1:80"), Expect: reach(true, "10.244.0.2:8080")},
				{Name: "another pod is not masqueraded", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.9.1:80"), Expect: reach(false, "10.244.0.2:8080")},
			},
		},
		{
			Name: "itp-and-etp-local", Fixture: "itp-etp-local.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatBothPoliciesLocal},
			Packets: []Packet{
				{Name: "outside to node port: local endpoint only, source kept", Origin: FromOutside, Proto: proxier.TCP, Dst: nodePort(30131), Expect: reach(false, "10.244.0.2:8080")},
				{Name: "pod to cluster IP: local endpoint only", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.13.1:80"), Expect: reach(false, "10.244.0.2:8080")},
				{Name: "outside to cluster IP: local endpoint, masqueraded", Origin: FromOutside, Proto: proxier.TCP, Dst: ap("10.96.13.1:80"), Expect: reach(true, "10.244.0.2:8080")},
				{Name: "pod to node port: short-circuit to the cluster endpoints", Origin: FromPod, Proto: proxier.TCP, Dst: nodePort(30131), Expect: reach(false, "10.244.0.2:8080", "10.244.1.2:8080")},
				{Name: "node to its node port: cluster endpoints, masqueraded", Origin: FromNode, Proto: proxier.TCP, Dst: nodePort(30131), Expect: reach(true, "10.244.0.2:8080", "10.244.1.2:8080")},
				{Name: "remote-only: outside to node port dropped", Origin: FromOutside, Proto: proxier.TCP, Dst: nodePort(30132), Expect: dropped},
				{Name: "remote-only: pod to cluster IP dropped", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.13.2:80"), Expect: dropped},
				{Name: "remote-only: pod to node port reaches the remote endpoint", Origin: FromPod, Proto: proxier.TCP, Dst: nodePort(30132), Expect: reach(false, "10.244.1.3:8080")},
				{Name: "remote-only: node to node port reaches the remote endpoint", Origin: FromNode, Proto: proxier.TCP, Dst: nodePort(30132), Expect: reach(true, "10.244.1.3:8080")},
			},
		},
		{
			Name: "topology-hints", Fixture: "topology.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatTopologyZone, FeatTopologyNode},
			Packets: []Packet{
				{Name: "PreferClose: pod to cluster IP reaches this zone's endpoints", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.14.1:80"), Expect: reach(false, "10.244.0.2:8080", "10.244.1.2:8080")},
				{Name: "PreferClose: outside to node port, same zone", Origin: FromOutside, Proto: proxier.TCP, Dst: nodePort(30141), Expect: reach(true, "10.244.0.2:8080", "10.244.1.2:8080")},
				{Name: "PreferSameNode: this node's endpoint only", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.14.2:80"), Expect: reach(false, "10.244.0.3:8080")},
			},
		},
		{
			Name: "bad-input-next-to-good", Fixture: "bad-input.yaml", Node: Topology.NodeName, Config: withCIDR,
			Features: []Feature{FeatBadInput},
			Problems: []string{`unknown IPVS scheduler "no-such-scheduler"`, `nodePort 30151/TCP of port "p" is already used by service default/np-older`},
			Packets: []Packet{
				{Name: "unknown scheduler annotation: served with the default", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.15.1:80"), Expect: reach(false, "10.244.0.2:8080")},
				{Name: "node port held by the older service", Origin: FromOutside, Proto: proxier.TCP, Dst: nodePort(30151), Expect: reach(true, "10.244.0.3:8080")},
				{Name: "the younger service keeps its cluster IP", Origin: FromPod, Proto: proxier.TCP, Dst: ap("10.96.15.3:80"), Expect: reach(false, "10.244.1.2:8080")},
			},
		},
		{
			Name: "localhost-nodeport", Fixture: "nodeport-cluster.yaml", Node: Topology.NodeName, Config: withCIDR,
			IPTablesOnly: true,
			Features:     []Feature{FeatLocalhostNodePort},
			Packets: []Packet{
				{Name: "node to 127.0.0.1:node port, masqueraded", Origin: FromNode, Src: netip.MustParseAddr("127.0.0.1"), Proto: proxier.TCP, Dst: ap("127.0.0.1:30080"), Expect: reach(true, two...)},
			},
		},
	}
}
