package planner

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// ServicePlan is the plan of one Service: its service ports in every
// planned family, and what could not be honoured. It depends only on the
// Service, its EndpointSlices and the Config, so it can be cached until one
// of them changes.
type ServicePlan struct {
	// Key is "namespace/name".
	Key string
	// Namespace and Name of the service (plans sort by them).
	Namespace, Name string
	// Created is the service's creation time (oldest wins node-port conflicts).
	Created time.Time
	// Ports are the planned service ports, all families.
	Ports []*proxier.ServicePort
	// Problems found in the service or its slices.
	Problems []Problem
	// Skipped is set (with a reason) for services that are deliberately not
	// proxied, such as headless and ExternalName services.
	Skipped string
}

// Less orders plans by namespace, then name.
func (p *ServicePlan) Less(o *ServicePlan) bool {
	if p.Namespace != o.Namespace {
		return p.Namespace < o.Namespace
	}
	return p.Name < o.Name
}

// sortPorts orders the ports by name, so a family's ports appear in
// ServicePortName order.
func (p *ServicePlan) sortPorts() {
	sort.SliceStable(p.Ports, func(i, j int) bool { return p.Ports[i].Name.Less(p.Ports[j].Name) })
}

func (p *ServicePlan) problem(format string, args ...any) {
	p.Problems = append(p.Problems, Problem{Kind: "Service", Object: p.Key, Reason: fmt.Sprintf(format, args...)})
}

// PlanService plans one Service with its EndpointSlices (which must all
// belong to it). It never fails as a whole: invalid parts are reported as
// Problems and left out, at the finest grain that keeps the rest correct
// (a bad address is dropped, a bad port is skipped, a service whose cluster
// IP or source ranges cannot be parsed is skipped whole).
func PlanService(svc *corev1.Service, slices []*discoveryv1.EndpointSlice, cfg *Config) *ServicePlan {
	p := &ServicePlan{Key: svc.Namespace + "/" + svc.Name, Namespace: svc.Namespace, Name: svc.Name, Created: svc.CreationTimestamp.Time}
	defer p.sortPorts()
	spec := &svc.Spec
	switch {
	case spec.Type == corev1.ServiceTypeExternalName:
		p.Skipped = "ExternalName service"
		return p
	case spec.ClusterIP == corev1.ClusterIPNone:
		p.Skipped = "headless service"
		return p
	case spec.ClusterIP == "":
		p.problem("spec.clusterIP is empty; service skipped")
		return p
	}

	clusterIPs, ok := p.clusterIPs(spec)
	if !ok {
		return p
	}
	extLocal := externallyAccessible(spec) && spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	intLocal := spec.InternalTrafficPolicy != nil && *spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal

	affinity, ok := p.affinity(spec)
	if !ok {
		return p
	}
	ranges, ok := p.sourceRanges(svc)
	if !ok {
		return p
	}
	scheduler := svc.Annotations[AnnotationIPVSScheduler]
	if scheduler != "" && !proxier.ValidIPVSScheduler(scheduler) {
		p.problem("annotation %s: unknown IPVS scheduler %q (want one of %s); the node's default scheduler is used",
			AnnotationIPVSScheduler, scheduler, strings.Join(proxier.IPVSSchedulers, ", "))
		scheduler = ""
	}
	externalIPs := p.parseIPs(spec.ExternalIPs, "spec.externalIPs")
	var lbIPs []netip.Addr
	if spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy) {
				continue
			}
			lbIPs = append(lbIPs, p.parseIPs([]string{ing.IP}, "status.loadBalancer.ingress")...)
		}
	}
	var hcPort uint16
	if spec.Type == corev1.ServiceTypeLoadBalancer && extLocal && spec.HealthCheckNodePort != 0 {
		if spec.HealthCheckNodePort < 1 || spec.HealthCheckNodePort > 65535 {
			p.problem("spec.healthCheckNodePort %d out of range; health check not served", spec.HealthCheckNodePort)
		} else {
			hcPort = uint16(spec.HealthCheckNodePort)
		}
	}

	// The families the service has addresses in decide where its external
	// addresses may go.
	has := map[proxier.IPFamily]bool{}
	for _, ip := range clusterIPs {
		has[proxier.FamilyOf(ip)] = true
	}
	for _, ip := range append(append([]netip.Addr{}, externalIPs...), lbIPs...) {
		if !has[proxier.FamilyOf(ip)] {
			p.problem("address %s is not in the service's IP families; address skipped", ip)
		}
	}

	endpointsByFamily := p.collectEndpoints(slices, cfg)
	unservedFamily := map[proxier.IPFamily]bool{}
	seenPorts := map[string]bool{}
	for i := range spec.Ports {
		port := &spec.Ports[i]
		proto, ok := p.protocol(port)
		if !ok {
			continue
		}
		if port.Port < 1 || port.Port > 65535 {
			p.problem("port %q: port %d out of range; port skipped", port.Name, port.Port)
			continue
		}
		id := port.Name + "/" + string(proto)
		if seenPorts[id] {
			p.problem("port %q/%s is listed twice; duplicate skipped", port.Name, proto)
			continue
		}
		seenPorts[id] = true
		var nodePort uint16
		if (spec.Type == corev1.ServiceTypeNodePort || spec.Type == corev1.ServiceTypeLoadBalancer) && port.NodePort != 0 {
			if port.NodePort < int32(cfg.NodePortMin) || port.NodePort > int32(cfg.NodePortMax) {
				p.problem("port %q: nodePort %d outside the node port range %d-%d; port skipped",
					port.Name, port.NodePort, cfg.NodePortMin, cfg.NodePortMax)
				continue
			}
			nodePort = uint16(port.NodePort)
		}
		for _, cip := range clusterIPs {
			fam := proxier.FamilyOf(cip)
			if !cfg.HasFamily(fam) {
				if !unservedFamily[fam] {
					unservedFamily[fam] = true
					p.problem("cluster IP %s is not served: this node proxies %s only (the kernel or its tools lack %s)", cip, familyList(cfg.Families), fam)
				}
				continue
			}
			sp := &proxier.ServicePort{
				Name:                proxier.ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: port.Name, Protocol: proto},
				Protocol:            proto,
				ClusterIP:           cip,
				Port:                uint16(port.Port),
				NodePort:            nodePort,
				ExternalIPs:         filterAddrs(externalIPs, fam),
				LoadBalancerIPs:     filterAddrs(lbIPs, fam),
				HealthCheckNodePort: hcPort,
				ExternalPolicyLocal: extLocal,
				InternalPolicyLocal: intLocal,
				Affinity:            affinity,
				Scheduler:           scheduler,
			}
			if len(sp.LoadBalancerIPs) > 0 {
				sp.LoadBalancerSourceRanges = filterPrefixes(ranges, fam)
			}
			eps := endpointsByFamily[fam].forPort(port.Name, proto)
			ResolveEndpoints(sp, eps, &cfg.Node)
			p.Ports = append(p.Ports, sp)
		}
	}
	return p
}

func familyList(fams []proxier.IPFamily) string {
	var parts []string
	for _, f := range fams {
		parts = append(parts, f.String())
	}
	return strings.Join(parts, " and ")
}

// externallyAccessible mirrors upstream: NodePort and LoadBalancer services,
// and ClusterIP services with external IPs, take external traffic.
func externallyAccessible(spec *corev1.ServiceSpec) bool {
	return spec.Type == corev1.ServiceTypeLoadBalancer || spec.Type == corev1.ServiceTypeNodePort ||
		(spec.Type == corev1.ServiceTypeClusterIP && len(spec.ExternalIPs) > 0)
}

func (p *ServicePlan) clusterIPs(spec *corev1.ServiceSpec) ([]netip.Addr, bool) {
	raw := spec.ClusterIPs
	if len(raw) == 0 {
		raw = []string{spec.ClusterIP}
	}
	if len(raw) > 2 {
		p.problem("spec.clusterIPs has %d entries (at most 2); service skipped", len(raw))
		return nil, false
	}
	var out []netip.Addr
	for _, s := range raw {
		ip, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || ip.Zone() != "" {
			p.problem("cluster IP %q is not a valid IP address; service skipped", s)
			return nil, false
		}
		ip = ip.Unmap()
		if why := unusableClusterIP(ip); why != "" {
			p.problem("cluster IP %s is %s and cannot be a service address; service skipped", ip, why)
			return nil, false
		}
		for _, prev := range out {
			if proxier.FamilyOf(prev) == proxier.FamilyOf(ip) {
				p.problem("spec.clusterIPs has two %s addresses; service skipped", proxier.FamilyOf(ip))
				return nil, false
			}
		}
		out = append(out, ip)
	}
	if spec.ClusterIP != "" && len(spec.ClusterIPs) > 0 && spec.ClusterIP != spec.ClusterIPs[0] {
		p.problem("spec.clusterIP %q differs from spec.clusterIPs[0] %q; service skipped", spec.ClusterIP, spec.ClusterIPs[0])
		return nil, false
	}
	return out, true
}

// unusableClusterIP says why ip cannot be a cluster IP (the API server's
// own rule, checked again for standalone mode), or "" when it can.
func unusableClusterIP(ip netip.Addr) string {
	switch {
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsLinkLocalUnicast():
		return "link-local"
	case ip.IsMulticast():
		return "multicast"
	case ip.Is4() && ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	return ""
}

func (p *ServicePlan) affinity(spec *corev1.ServiceSpec) (proxier.SessionAffinity, bool) {
	switch spec.SessionAffinity {
	case "", corev1.ServiceAffinityNone:
		return proxier.SessionAffinity{}, true
	case corev1.ServiceAffinityClientIP:
	default:
		p.problem("spec.sessionAffinity %q is not None or ClientIP; service skipped", spec.SessionAffinity)
		return proxier.SessionAffinity{}, false
	}
	secs := int32(DefaultAffinityTimeoutSeconds)
	if c := spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		secs = *c.ClientIP.TimeoutSeconds
	}
	if secs < 1 || secs > MaxAffinityTimeoutSeconds {
		p.problem("sessionAffinityConfig.clientIP.timeoutSeconds %d outside 1-%d; service skipped", secs, MaxAffinityTimeoutSeconds)
		return proxier.SessionAffinity{}, false
	}
	return proxier.SessionAffinity{Timeout: time.Duration(secs) * time.Second}, true
}

// sourceRanges parses loadBalancerSourceRanges (or, when empty, the legacy
// annotation). Any invalid range skips the whole service: dropping one
// would widen who may reach it.
func (p *ServicePlan) sourceRanges(svc *corev1.Service) ([]netip.Prefix, bool) {
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return nil, true
	}
	raw := svc.Spec.LoadBalancerSourceRanges
	where := "spec.loadBalancerSourceRanges"
	if len(raw) == 0 {
		if v := strings.TrimSpace(svc.Annotations[AnnotationSourceRanges]); v != "" {
			raw = strings.Split(v, ",")
			where = "annotation " + AnnotationSourceRanges
		}
	}
	var out []netip.Prefix
	for _, s := range raw {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			p.problem("%s entry %q is not a CIDR; service skipped (a dropped range would widen access)", where, s)
			return nil, false
		}
		out = append(out, pfx.Masked())
	}
	return out, true
}

func (p *ServicePlan) parseIPs(raw []string, where string) []netip.Addr {
	var out []netip.Addr
	for _, s := range raw {
		ip, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || ip.Zone() != "" {
			p.problem("%s entry %q is not a valid IP address; address skipped", where, s)
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out
}

func (p *ServicePlan) protocol(port *corev1.ServicePort) (proxier.Protocol, bool) {
	switch port.Protocol {
	case "", corev1.ProtocolTCP:
		return proxier.TCP, true
	case corev1.ProtocolUDP:
		return proxier.UDP, true
	case corev1.ProtocolSCTP:
		return proxier.SCTP, true
	}
	p.problem("port %q: protocol %q is not TCP, UDP or SCTP; port skipped", port.Name, port.Protocol)
	return "", false
}
