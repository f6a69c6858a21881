package iptables

import (
	"github.com/switchyard-proxy/switchyard/internal/ruletext"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// Chain names of the fixed part of the layout. See README.md.
const (
	// ChainPrefix starts the name of every chain switchyard owns.
	ChainPrefix = "SWY-"

	chainServices         = "SWY-SERVICES"
	chainNodePorts        = "SWY-NODEPORTS"
	chainPostrouting      = "SWY-POSTROUTING"
	chainMarkMasq         = "SWY-MARK-MASQ"
	chainMasqOffCluster   = "SWY-MASQ-OFFCLUSTER"
	chainForward          = "SWY-FORWARD"
	chainExternalServices = "SWY-EXTERNAL-SERVICES"
	chainFirewall         = "SWY-FIREWALL"
	chainCanary           = "SWY-CANARY"

	prefixSVC = "SWY-SVC-"
	prefixSVL = "SWY-SVL-"
	prefixEXT = "SWY-EXT-"
	prefixFW  = "SWY-FW-"
	prefixSEP = "SWY-SEP-"
)

// Table names.
const (
	tableFilter = "filter"
	tableNAT    = "nat"
)

// serviceChains are the per-service-port chain names.
type serviceChains struct {
	svc, svl, ext, fw string
}

func chainsFor(n proxier.ServicePortName) serviceChains {
	h := ruletext.Hash(n.Key())
	return serviceChains{svc: prefixSVC + h, svl: prefixSVL + h, ext: prefixEXT + h, fw: prefixFW + h}
}

// endpointChain is the SWY-SEP- chain of one endpoint of one service port.
func endpointChain(n proxier.ServicePortName, ep proxier.Endpoint) string {
	return prefixSEP + ruletext.Hash(n.Key()+"/"+ep.Addr.String())
}

// ServiceChain returns the SWY-SVC- chain name of a service port (for tests
// and tools that read the rendered rules).
func ServiceChain(n proxier.ServicePortName) string { return chainsFor(n).svc }

// EndpointChain returns the SWY-SEP- chain name of an endpoint of a service
// port.
func EndpointChain(n proxier.ServicePortName, ep proxier.Endpoint) string {
	return endpointChain(n, ep)
}
