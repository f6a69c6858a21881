package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"

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

// portKey is the string the per-service-port chain hashes are taken of:
// "ns/name:port/proto". Each part has its separators escaped (see
// keyPart), so two different service ports never share a key, whatever
// their names hold; for valid names the parts are unchanged.
func portKey(n proxier.ServicePortName) string {
	return keyPart(n.Namespace) + "/" + keyPart(n.Name) + ":" + keyPart(n.Port) + "/" + n.Protocol.Lower()
}

// keyPart escapes the key separators "/" and ":" and the escape character
// "%" as %2F, %3A and %25. Valid Kubernetes names hold none of them.
func keyPart(s string) string {
	if !strings.ContainsAny(s, "/:%") {
		return s
	}
	return strings.NewReplacer("%", "%25", "/", "%2F", ":", "%3A").Replace(s)
}

// hash16 returns the first 16 characters of the base32 encoding of the
// SHA-256 of s: stable across restarts and versions.
func hash16(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// serviceChains are the per-service-port chain names.
type serviceChains struct {
	svc, svl, ext, fw string
}

func chainsFor(n proxier.ServicePortName) serviceChains {
	h := hash16(portKey(n))
	return serviceChains{svc: prefixSVC + h, svl: prefixSVL + h, ext: prefixEXT + h, fw: prefixFW + h}
}

// endpointChain is the SWY-SEP- chain of one endpoint of one service port.
func endpointChain(n proxier.ServicePortName, ep proxier.Endpoint) string {
	return prefixSEP + hash16(portKey(n)+"/"+ep.Addr.String())
}

// ServiceChain returns the SWY-SVC- chain name of a service port (for tests
// and tools that read the rendered rules).
func ServiceChain(n proxier.ServicePortName) string { return chainsFor(n).svc }

// EndpointChain returns the SWY-SEP- chain name of an endpoint of a service
// port.
func EndpointChain(n proxier.ServicePortName, ep proxier.Endpoint) string {
	return endpointChain(n, ep)
}
