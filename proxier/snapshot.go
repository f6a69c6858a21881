// Package proxier holds the types that connect switchyard's pipeline: the
// Snapshot the planner produces, the Backend seam every proxy mode
// implements, and the names that identify service ports. Sources, tracker,
// planner and runner live in sub-packages and speak these types.
package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// IPFamily is an IP address family: IPv4 or IPv6.
type IPFamily int

const (
	// IPv4 is the IPv4 family.
	IPv4 IPFamily = 4
	// IPv6 is the IPv6 family.
	IPv6 IPFamily = 6
)

// String returns "IPv4" or "IPv6".
func (f IPFamily) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return fmt.Sprintf("IPFamily(%d)", int(f))
}

// FamilyOf returns the family of addr (IPv4-mapped IPv6 counts as IPv4).
func FamilyOf(addr netip.Addr) IPFamily {
	if addr.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Protocol is a transport protocol a service port uses.
type Protocol string

const (
	// TCP is the TCP protocol.
	TCP Protocol = "TCP"
	// UDP is the UDP protocol.
	UDP Protocol = "UDP"
	// SCTP is the SCTP protocol.
	SCTP Protocol = "SCTP"
)

// Lower returns the protocol in lower case, as iptables and ipvsadm spell it.
func (p Protocol) Lower() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	}
	return string(p)
}

// ServicePortName identifies one port of one service: the namespace, the
// service name, the port's name (empty for an unnamed port) and protocol.
type ServicePortName struct {
	Namespace string
	Name      string
	Port      string
	Protocol  Protocol
}

// String returns "namespace/name:port" (or "namespace/name" for an unnamed
// port), the form kube-proxy uses in rule comments.
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.Namespace + "/" + n.Name
	}
	return n.Namespace + "/" + n.Name + ":" + n.Port
}

// Service returns "namespace/name".
func (n ServicePortName) Service() string { return n.Namespace + "/" + n.Name }

// Key returns "namespace/name:port/proto" with "/", ":" and "%" in each
// part escaped as %2F, %3A and %25 (valid names hold none of them), so two
// service ports never share a key whatever their names hold. Backends hash
// it into chain, set and map names that are stable across restarts and the
// same in every mode.
func (n ServicePortName) Key() string {
	return keyPart(n.Namespace) + "/" + keyPart(n.Name) + ":" + keyPart(n.Port) + "/" + n.Protocol.Lower()
}

func keyPart(s string) string {
	if !strings.ContainsAny(s, "/:%") {
		return s
	}
	return strings.NewReplacer("%", "%25", "/", "%2F", ":", "%3A").Replace(s)
}

// Less orders service port names by namespace, name, port, protocol.
func (n ServicePortName) Less(o ServicePortName) bool {
	if n.Namespace != o.Namespace {
		return n.Namespace < o.Namespace
	}
	if n.Name != o.Name {
		return n.Name < o.Name
	}
	if n.Port != o.Port {
		return n.Port < o.Port
	}
	return n.Protocol < o.Protocol
}

// Compare orders service port names as Less does, for slices.SortFunc:
// -1, 0 or +1.
func (n ServicePortName) Compare(o ServicePortName) int {
	switch {
	case n.Less(o):
		return -1
	case o.Less(n):
		return 1
	}
	return 0
}

// Endpoint is one backend of a service port, as the planner resolved it
// from EndpointSlices: deduplicated, with conditions defaulted.
type Endpoint struct {
	// Addr is the endpoint's IP address and target port.
	Addr netip.AddrPort
	// Ready, Serving and Terminating are the slice conditions with
	// upstream's defaults applied (ready nil = true, serving nil = true,
	// terminating nil = false).
	Ready       bool `json:"ready"`
	Serving     bool `json:"serving"`
	Terminating bool `json:"terminating"`
	// Local is true when the endpoint runs on this node.
	Local bool `json:"local,omitempty"`
	// NodeName and Zone come from the slice (informational).
	NodeName string `json:"nodeName,omitempty"`
	Zone     string `json:"zone,omitempty"`
	// ZoneHints and NodeHints are the slice's topology hints (forZones,
	// forNodes); the planner reads them, backends do not.
	ZoneHints []string `json:"zoneHints,omitempty"`
	NodeHints []string `json:"nodeHints,omitempty"`
}

// String returns "ip:port".
func (e Endpoint) String() string { return e.Addr.String() }

// SessionAffinity describes ClientIP session affinity; a zero Timeout means
// no affinity.
type SessionAffinity struct {
	// Timeout is how long a client sticks to its endpoint (default 10800s).
	Timeout time.Duration
}

// Enabled reports whether ClientIP affinity is on.
func (a SessionAffinity) Enabled() bool { return a.Timeout > 0 }

// ServicePort is everything a backend needs to program one service port in
// one IP family. Every policy decision is already taken: backends translate
// it into kernel state and never look at the API objects.
type ServicePort struct {
	// Name identifies the service port.
	Name ServicePortName
	// Protocol is the transport protocol (same as Name.Protocol).
	Protocol Protocol
	// ClusterIP is the service's cluster IP in this family (invalid if the
	// service has none in this family, e.g. a NodePort-only family split).
	ClusterIP netip.Addr
	// Port is the service port number.
	Port uint16
	// NodePort is the node port, or 0.
	NodePort uint16
	// ExternalIPs are the spec.externalIPs of this family.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are the status.loadBalancer.ingress IPs of this family
	// (ipMode Proxy excluded).
	LoadBalancerIPs []netip.Addr
	// LoadBalancerSourceRanges, when non-empty, restricts traffic to the
	// load-balancer IPs to these source prefixes (of this family).
	LoadBalancerSourceRanges []netip.Prefix
	// HealthCheckNodePort is the port of the health-check server for
	// externalTrafficPolicy Local load balancers, or 0.
	HealthCheckNodePort uint16
	// ExternalPolicyLocal is true when externalTrafficPolicy is Local and
	// the service is externally accessible: external traffic from outside
	// the node keeps its source address (no masquerade).
	ExternalPolicyLocal bool
	// InternalPolicyLocal is true when internalTrafficPolicy is Local.
	InternalPolicyLocal bool
	// Affinity is the ClientIP session affinity.
	Affinity SessionAffinity
	// Scheduler is the per-service IPVS scheduler from the annotation,
	// validated by the planner, or "" for the node's default.
	Scheduler string `json:",omitempty"`
	// NodePortConflict names the service that holds this port's node port
	// when the planner had to drop it (NodePort is then 0).
	NodePortConflict string `json:",omitempty"`

	// The endpoint lists and which one each kind of traffic uses are
	// decided by the planner with upstream kube-proxy's semantics
	// (CategorizeEndpoints); backends translate them and never choose.

	// ClusterEndpoints are the endpoints of the Cluster traffic policy:
	// ready ones allowed by topology, or, when none is ready anywhere, the
	// serving-terminating ones. Nil when the port never uses Cluster policy.
	ClusterEndpoints []Endpoint
	// LocalEndpoints are the endpoints of the Local traffic policy: this
	// node's ready ones, or, when it has none, its serving-terminating
	// ones. Nil when the port never uses Local policy.
	LocalEndpoints []Endpoint
	// Internal says which list serves traffic to the cluster IP.
	Internal EndpointChoice
	// External says which list serves traffic from outside the node to
	// the node port, external IPs and load-balancer IPs. NoEndpoints when
	// the port is not externally accessible or the list is empty.
	External EndpointChoice
	// ShortCircuit says which list serves traffic from this node and its
	// pods to the external addresses when ExternalPolicyLocal is set (they
	// bypass the external policy, as if they went out to the load balancer
	// and came back). NoEndpoints otherwise.
	ShortCircuit EndpointChoice
	// Unserved is what traffic that no list serves gets: Reject when the
	// port has no usable endpoint anywhere, Drop otherwise.
	Unserved UnservedAction
	// ReachableEndpoints is the union of the lists in use, sorted by
	// address: every endpoint a rule may forward to.
	ReachableEndpoints []Endpoint
	// AllEndpoints is every endpoint of the port after deduplication, in any
	// condition (for conntrack cleanup and for display).
	AllEndpoints []Endpoint
	// HasAnyEndpoints is true when some endpoint anywhere could serve
	// (ready, or serving and terminating).
	HasAnyEndpoints bool
	// LocalReadyEndpoints counts this node's ready endpoints (health check).
	LocalReadyEndpoints int
}

// EndpointChoice names one of a ServicePort's endpoint lists.
type EndpointChoice uint8

const (
	// NoEndpoints means no list serves the traffic: it gets the port's
	// Unserved action.
	NoEndpoints EndpointChoice = iota
	// ClusterPolicy selects ClusterEndpoints.
	ClusterPolicy
	// LocalPolicy selects LocalEndpoints.
	LocalPolicy
)

// String returns "none", "cluster" or "local".
func (c EndpointChoice) String() string {
	switch c {
	case ClusterPolicy:
		return "cluster"
	case LocalPolicy:
		return "local"
	}
	return "none"
}

// MarshalText makes plans print the choice by name.
func (c EndpointChoice) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnservedAction is what happens to traffic no endpoint list serves.
type UnservedAction uint8

const (
	// Reject answers with an ICMP error / TCP reset: the service has no
	// usable endpoint anywhere.
	Reject UnservedAction = iota
	// Drop silently drops: endpoints exist, but none for this traffic
	// under a Local policy.
	Drop
)

// String returns "reject" or "drop".
func (a UnservedAction) String() string {
	if a == Drop {
		return "drop"
	}
	return "reject"
}

// MarshalText makes plans print the action by name.
func (a UnservedAction) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// ExternallyAccessible reports whether the port has any external address:
// a node port, an external IP or a load-balancer IP.
func (p *ServicePort) ExternallyAccessible() bool {
	return p.NodePort != 0 || len(p.ExternalIPs) > 0 || len(p.LoadBalancerIPs) > 0
}

// Endpoints returns the list c selects (nil for NoEndpoints).
func (p *ServicePort) Endpoints(c EndpointChoice) []Endpoint {
	switch c {
	case ClusterPolicy:
		return p.ClusterEndpoints
	case LocalPolicy:
		return p.LocalEndpoints
	}
	return nil
}

// InternalEndpoints returns the endpoints serving the cluster IP.
func (p *ServicePort) InternalEndpoints() []Endpoint { return p.Endpoints(p.Internal) }

// ExternalEndpoints returns the endpoints serving external traffic from
// outside the node.
func (p *ServicePort) ExternalEndpoints() []Endpoint { return p.Endpoints(p.External) }

// ShortCircuitEndpoints returns the endpoints serving this node's and its
// pods' traffic to external addresses under externalTrafficPolicy Local.
func (p *ServicePort) ShortCircuitEndpoints() []Endpoint { return p.Endpoints(p.ShortCircuit) }

// MasqueradeConfig says which traffic is source-NATed to the node.
type MasqueradeConfig struct {
	// All masquerades every packet sent to a cluster IP (--masquerade-all).
	All bool
	// ClusterCIDRs of this family select pod traffic by source address
	// (detect-local-mode ClusterCIDR: --cluster-cidr; NodeCIDR: the Node's
	// spec.podCIDRs): traffic to a cluster IP from outside them is
	// masqueraded, and from inside them it takes the externalTrafficPolicy
	// short-circuit. Empty (and no PodInterface) means detection is off.
	ClusterCIDRs []netip.Prefix
	// PodInterface selects pod traffic by input interface instead, in
	// iptables' -i syntax (detect-local-mode BridgeInterface: the bridge's
	// name; InterfaceNamePrefix: the prefix followed by "+").
	PodInterface string `json:",omitempty"`
	// MarkBit is the fwmark bit used to flag packets for masquerading
	// (0-31, default 14 as in kube-proxy).
	MarkBit int
}

// Mark returns the fwmark value 1<<MarkBit.
func (m MasqueradeConfig) Mark() uint32 { return 1 << uint(m.MarkBit) }

// NodePortAddresses is the set of node addresses node ports answer on.
type NodePortAddresses struct {
	// All is true when node ports answer on every local address (the
	// default when --nodeport-addresses is empty).
	All bool
	// Addrs are the selected node addresses of this family; with All, the
	// node's current local addresses of the family (for modes that must
	// bind each address, IPVS), which the planner keeps current as
	// interface addresses come and go.
	Addrs []netip.Addr
}

// Snapshot is the immutable, complete plan for one IP family on this node.
// Backends read it and never modify it.
type Snapshot struct {
	// Family is the IP family every address in the snapshot belongs to.
	Family IPFamily
	// NodeName is this node's name.
	NodeName string
	// NodeIPs are this node's addresses of this family.
	NodeIPs []netip.Addr
	// NodePortAddresses says where node ports answer.
	NodePortAddresses NodePortAddresses
	// LocalhostNodePorts is true when node ports also answer on 127.0.0.0/8
	// from the node itself (upstream's iptables.localhostNodePorts: IPv4
	// only, and only when the node-port addresses include loopback). Only
	// the iptables mode implements it, as upstream.
	LocalhostNodePorts bool
	// Masquerade is the masquerading policy.
	Masquerade MasqueradeConfig
	// Services lists every service port of this family, sorted by name.
	Services []*ServicePort
	// Changed names the service ports whose plan differs from the previous
	// snapshot (added, changed or removed). Nil together with FullSync
	// true means "treat everything as changed".
	Changed map[ServicePortName]bool
	// FullSync asks the backend to rewrite everything (first sync, after a
	// failure, periodic).
	FullSync bool
	// Verify asks the backend to check the kernel against what it wrote
	// and repair what drifted (the runner sets it once per sync period).
	Verify bool
	// HostPorts are the hostPort mappings of this node's pods.
	HostPorts []HostPort
}

// HostPort maps a port on the node to a port of a pod on this node.
type HostPort struct {
	// Pod is "namespace/name" of the pod.
	Pod string
	// Protocol is the transport protocol.
	Protocol Protocol
	// HostIP restricts the mapping to one node address; invalid means all.
	HostIP netip.Addr
	// HostPort is the port on the node.
	HostPort uint16
	// PodIP and ContainerPort are where traffic is sent.
	PodIP         netip.Addr
	ContainerPort uint16
}

// Lookup returns the service port with the given name, or nil.
func (s *Snapshot) Lookup(name ServicePortName) *ServicePort {
	i := sort.Search(len(s.Services), func(i int) bool { return !s.Services[i].Name.Less(name) })
	if i < len(s.Services) && s.Services[i].Name == name {
		return s.Services[i]
	}
	return nil
}

// IsChanged reports whether the named service port must be rewritten.
func (s *Snapshot) IsChanged(name ServicePortName) bool {
	return s.FullSync || s.Changed[name]
}

// SyncResult reports what one Backend.Sync did, for metrics and logs.
type SyncResult struct {
	// Full is true when the backend rewrote everything.
	Full bool
	// Wrote is false when the kernel already matched and nothing was written.
	Wrote bool
	// Bytes is the size of what was written (restore text, netlink
	// messages), when the backend can tell.
	Bytes int
	// Rules counts the rules, virtual servers or elements written.
	Rules int
	// IPTables counts rules per family and table (iptables mode only).
	IPTables []TableRules `json:",omitempty"`
	// Repaired counts, per kind ("chain", "jump", "virtual-server", ...),
	// what the backend found changed behind its back and rewrote.
	Repaired map[string]int
}

// TableRules counts the iptables rules of one table and family (the
// iptables mode's kube-proxy metrics sync_proxy_rules_iptables_total and
// _last).
type TableRules struct {
	Family IPFamily
	Table  string
	// Total is every rule the mode owns in the table after the sync.
	Total int
	// Written is the rules the sync wrote to the table.
	Written int
}

// Backend programs the kernel for one proxy mode. Sync receives one snapshot
// per IP family the node runs (IPv4 first); it must make the kernel match
// them atomically where the kernel allows and leave the previous state in
// place when it fails. Cleanup removes everything the mode ever created.
type Backend interface {
	// Name returns the proxy mode name ("iptables", "ipvs", ...).
	Name() string
	// Sync makes the kernel match the snapshots.
	Sync(ctx context.Context, snaps []*Snapshot) (SyncResult, error)
	// Cleanup removes every rule, chain, set, interface and virtual server
	// the mode created, and nothing else.
	Cleanup(ctx context.Context) error
}

// Renderer is implemented by backends that can print, without touching the
// kernel, what a full sync would program (`switchyard rules`).
type Renderer interface {
	// Render returns the text a full sync of snaps would write.
	Render(snaps []*Snapshot) (string, error)
}

// IPVSSchedulers are the IPVS scheduler names switchyard accepts, from
// --ipvs-scheduler and from a Service's scheduler annotation (validated by
// the planner, so one bad annotation cannot fail a sync).
var IPVSSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh", "fo", "ovf", "twos"}

// ValidIPVSScheduler reports whether s names a known IPVS scheduler.
func ValidIPVSScheduler(s string) bool {
	for _, x := range IPVSSchedulers {
		if x == s {
			return true
		}
	}
	return false
}
