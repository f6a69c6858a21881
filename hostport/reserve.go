package hostport

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// ListenFunc opens the socket that reserves one port: network is "tcp4",
// "tcp6", "udp4" or "udp6", address "ip:port" (a wildcard IP when the
// mapping has no host IP).
type ListenFunc func(network, address string) (io.Closer, error)

// Listen is the default ListenFunc: a TCP listener (never accepted from:
// the DNAT sends the traffic to the pod before it could reach it) or a
// bound UDP socket. Go sets IPV6_V6ONLY on "tcp6"/"udp6" sockets, so an
// IPv6 wildcard reservation does not take the IPv4 port.
func Listen(network, address string) (io.Closer, error) {
	switch network {
	case "tcp4", "tcp6":
		return net.Listen(network, address)
	case "udp4", "udp6":
		return net.ListenPacket(network, address)
	}
	return nil, fmt.Errorf("reserve %s %s: protocol not reservable", network, address)
}

// socketKey names one reservation: the network and address Listen gets.
type socketKey struct{ network, address string }

func (k socketKey) String() string { return k.network + " " + k.address }

// reservation returns the socket that reserves hp, or ok=false for a
// protocol that has no socket to hold (SCTP: Go opens no SCTP sockets).
func reservation(fam proxier.IPFamily, hp proxier.HostPort) (socketKey, bool) {
	var network string
	switch hp.Protocol {
	case proxier.TCP:
		network = "tcp"
	case proxier.UDP:
		network = "udp"
	default:
		return socketKey{}, false
	}
	ip := hp.HostIP
	if fam == proxier.IPv4 {
		network += "4"
		if !ip.IsValid() {
			ip = netip.IPv4Unspecified()
		}
	} else {
		network += "6"
		if !ip.IsValid() {
			ip = netip.IPv6Unspecified()
		}
	}
	return socketKey{network, net.JoinHostPort(ip.String(), strconv.Itoa(int(hp.HostPort)))}, true
}

// netipAddrPort is the DNAT target of hp.
func netipAddrPort(hp proxier.HostPort) netip.AddrPort {
	return netip.AddrPortFrom(hp.PodIP, hp.ContainerPort)
}
