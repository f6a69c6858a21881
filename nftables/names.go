package nftables

import (
	"github.com/switchyard-proxy/switchyard/internal/ruletext"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// TableName is the name of switchyard's table in both families.
const TableName = "switchyard"

// Names of the fixed part of the layout. See README.md.
const (
	chainFilterPreroutingPreDNAT = "filter-prerouting-pre-dnat"
	chainFilterOutputPreDNAT     = "filter-output-pre-dnat"
	chainFilterInput             = "filter-input"
	chainFilterForward           = "filter-forward"
	chainFilterOutput            = "filter-output"
	chainNATPrerouting           = "nat-prerouting"
	chainNATOutput               = "nat-output"
	chainNATPostrouting          = "nat-postrouting"

	chainServices         = "services"
	chainMasquerading     = "masquerading"
	chainMarkMasq         = "mark-for-masquerade"
	chainServiceEPCheck   = "service-endpoints-check"
	chainNodePortEPCheck  = "nodeport-endpoints-check"
	chainFirewallCheck    = "firewall-check"
	chainReject           = "reject-chain"
	mapServiceIPs         = "service-ips"
	mapServiceNodePorts   = "service-nodeports"
	mapNoEndpointServices = "no-endpoint-services"
	mapNoEndpointNodePort = "no-endpoint-nodeports"
	mapFirewallIPs        = "firewall-ips"
	setNodePortIPs        = "nodeport-ips"
	setHairpin            = "hairpin-connections"

	prefixSVC      = "svc-"
	prefixSVL      = "svl-"
	prefixEXT      = "ext-"
	prefixFW       = "fw-"
	prefixEP       = "ep-"
	prefixAffinity = "aff-"
)

// serviceNames are the per-service-port chain names.
type serviceNames struct {
	svc, svl, ext, fw string
}

func namesFor(n proxier.ServicePortName) serviceNames {
	h := ruletext.Hash(n.Key())
	return serviceNames{svc: prefixSVC + h, svl: prefixSVL + h, ext: prefixEXT + h, fw: prefixFW + h}
}

// endpointChain is the ep- chain of one endpoint of one service port.
func endpointChain(n proxier.ServicePortName, ep proxier.Endpoint) string {
	return prefixEP + ruletext.Hash(n.Key()+"/"+ep.Addr.String())
}

// affinitySet is the aff- set of one endpoint; the timeout is part of the
// name, so a changed timeout is a new set (nft cannot change a set's
// timeout in place).
func affinitySet(n proxier.ServicePortName, ep proxier.Endpoint, secs int) string {
	return prefixAffinity + ruletext.Hash(n.Key()+"/"+ep.Addr.String()+"/"+itoa(secs))
}

// ServiceChain returns the svc- chain name of a service port (for tests and
// tools that read the rendered rules).
func ServiceChain(n proxier.ServicePortName) string { return namesFor(n).svc }

// EndpointChain returns the ep- chain name of an endpoint of a service port.
func EndpointChain(n proxier.ServicePortName, ep proxier.Endpoint) string {
	return endpointChain(n, ep)
}

// comment makes an object-derived string safe for an nft comment: valid
// names stay readable, anything else is escaped, at most 128 bytes.
func comment(text string) string {
	return ruletext.CommentMax(text, ruletext.MaxNFTComment)
}
