package ipvs

import "net/netip"

// DummyInterface is the link that holds every service address.
const DummyInterface = "swy-ipvs0"

// Kernel is the netlink side of the IPVS mode: IPVS virtual servers and the
// addresses of swy-ipvs0. NetlinkKernel is the real one; tests use an
// in-memory fake behind the same interface.
type Kernel interface {
	// VirtualServers dumps every virtual server with its real servers
	// (one GetServices, then the destinations of each).
	VirtualServers() ([]*VirtualServer, error)
	// AddService, UpdateService and DelService change virtual servers.
	AddService(v *VirtualServer) error
	UpdateService(v *VirtualServer) error
	DelService(k Key) error
	// AddDest, UpdateDest and DelDest change one real server of k.
	AddDest(k Key, d RealServer) error
	UpdateDest(k Key, d RealServer) error
	DelDest(k Key, d RealServer) error
	// EnsureDummy creates swy-ipvs0 when it is missing (and reports
	// whether it did).
	EnsureDummy() (created bool, err error)
	// DummyAddresses lists the addresses on swy-ipvs0 (none when the link
	// does not exist), link-local ones excluded.
	DummyAddresses() ([]netip.Addr, error)
	// AddAddress and DelAddress bind and unbind one address (host prefix).
	AddAddress(a netip.Addr) error
	DelAddress(a netip.Addr) error
	// DeleteDummy removes swy-ipvs0 (no error when it is missing).
	DeleteDummy() error
}
