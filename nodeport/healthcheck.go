package nodeport

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// Service is what the health-check server of one service reports.
type Service struct {
	// Port is the service's healthCheckNodePort.
	Port uint16
	// LocalEndpoints counts the service's ready endpoints on this node.
	LocalEndpoints int
	// PerFamily, when set, counts them per IP family: a request is
	// answered with the count of the family it arrived over, as
	// kube-proxy runs one health server per family (an IPv4 load balancer
	// must not send traffic to a node whose only local endpoints are IPv6).
	PerFamily map[proxier.IPFamily]int
}

// BindError reports a health-check port that could not be opened for a
// service. Sync returns one per failing service (joined); the other
// services keep being served, and the next Sync tries again.
type BindError struct {
	// Service is "namespace/name".
	Service string
	// Port is the health-check node port.
	Port uint16
	// Err is the cause (for example EADDRINUSE).
	Err error
}

func (e *BindError) Error() string {
	return fmt.Sprintf("health check of service %s on port %d: %v", e.Service, e.Port, e.Err)
}

// Unwrap returns the cause.
func (e *BindError) Unwrap() error { return e.Err }

// Servers runs the HTTP health-check servers of externalTrafficPolicy Local
// load-balancer services, one per distinct health-check port, like
// kube-proxy's ServiceHealthServer. It is safe for concurrent use.
type Servers struct {
	// addrs are the addresses every port listens on; nil means all
	// addresses (one wildcard listener).
	addrs   []netip.Addr
	healthy func() bool

	mu     sync.RWMutex
	ports  map[uint16]*portServer
	closed bool
	wg     sync.WaitGroup
}

// portServer is the HTTP server of one port and the service it reports.
type portServer struct {
	service   string                   // guarded by Servers.mu
	count     int                      // guarded by Servers.mu
	perFamily map[proxier.IPFamily]int // guarded by Servers.mu
	srv       *http.Server
	listeners []net.Listener
}

// NewServers returns a health-check server manager that serves nothing
// until Sync. Ports listen on the addresses selected by addrs (one entry
// per IP family, as Selector.Select returns them): if any entry is All, or
// addrs is empty, each port listens once on every address; otherwise on
// each selected address. As in kube-proxy, when the selection is empty (the
// CIDRs match nothing) no listener is opened at all. healthy reports
// whether the proxy itself is healthy (the /healthz verdict); nil means
// always healthy.
func NewServers(addrs []proxier.NodePortAddresses, healthy func() bool) *Servers {
	s := &Servers{healthy: healthy, ports: map[uint16]*portServer{}}
	all := len(addrs) == 0
	for _, a := range addrs {
		if a.All {
			all = true
		}
		s.addrs = append(s.addrs, a.Addrs...)
	}
	if all {
		s.addrs = nil
	} else {
		slices.SortFunc(s.addrs, netip.Addr.Compare)
		s.addrs = slices.Compact(s.addrs)
		if s.addrs == nil {
			s.addrs = []netip.Addr{}
		}
	}
	return s
}

// Sync makes the set of served services match services, keyed by
// "namespace/name". Ports no longer used are closed, new ports opened,
// and the endpoint counts of existing ports updated in place (their
// listeners stay open). A port that cannot be opened, or is claimed by
// two services (the first by name wins), is reported as a *BindError for
// that service; the returned error joins them all, and every other
// service is still served.
func (s *Servers) Sync(services map[string]Service) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("health check servers: sync after close")
	}

	names := make([]string, 0, len(services))
	for name := range services {
		names = append(names, name)
	}
	sort.Strings(names)

	var errs []error
	type claim struct {
		service   string
		count     int
		perFamily map[proxier.IPFamily]int
	}
	want := map[uint16]claim{}
	for _, name := range names {
		svc := services[name]
		if svc.Port == 0 {
			errs = append(errs, &BindError{Service: name, Err: errors.New("no health check port")})
			continue
		}
		if c, taken := want[svc.Port]; taken {
			errs = append(errs, &BindError{Service: name, Port: svc.Port,
				Err: fmt.Errorf("port already used by the health check of service %s", c.service)})
			continue
		}
		want[svc.Port] = claim{service: name, count: svc.LocalEndpoints, perFamily: svc.PerFamily}
	}

	for port, ps := range s.ports {
		if _, ok := want[port]; !ok {
			ps.close()
			delete(s.ports, port)
		}
	}

	ports := make([]uint16, 0, len(want))
	for port := range want {
		ports = append(ports, port)
	}
	slices.Sort(ports)
	for _, port := range ports {
		c := want[port]
		ps := s.ports[port]
		if ps == nil {
			var err error
			ps, err = s.open(port)
			if err != nil {
				errs = append(errs, &BindError{Service: c.service, Port: port, Err: err})
				continue
			}
			s.ports[port] = ps
		}
		ps.service, ps.count, ps.perFamily = c.service, c.count, c.perFamily
	}
	return errors.Join(errs...)
}

// Ports returns the health-check ports currently open, sorted.
func (s *Servers) Ports() []uint16 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]uint16, 0, len(s.ports))
	for p := range s.ports {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Close stops every server and waits for them to return. Sync fails
// afterwards; Close may be called more than once.
func (s *Servers) Close() {
	s.mu.Lock()
	s.closed = true
	for port, ps := range s.ports {
		ps.close()
		delete(s.ports, port)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// open binds port on every listen address and starts serving it. On any
// failure whatever was opened is closed again.
func (s *Servers) open(port uint16) (*portServer, error) {
	var hostports []string
	if s.addrs == nil {
		hostports = []string{net.JoinHostPort("", strconv.Itoa(int(port)))}
	}
	for _, a := range s.addrs {
		hostports = append(hostports, netip.AddrPortFrom(a, port).String())
	}
	ps := &portServer{}
	for _, hp := range hostports {
		l, err := net.Listen("tcp", hp)
		if err != nil {
			ps.close()
			return nil, fmt.Errorf("listening on %s: %w", hp, err)
		}
		ps.listeners = append(ps.listeners, l)
	}
	ps.srv = &http.Server{
		Handler:           s.handler(port),
		ReadHeaderTimeout: 10 * time.Second,
	}
	for _, l := range ps.listeners {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			// Serve returns ErrServerClosed (or the accept error of a
			// listener closed by portServer.close) when the port is closed.
			_ = ps.srv.Serve(l)
		}()
	}
	return ps, nil
}

// close stops the server and closes the listeners synchronously, so the
// port is free (connections are refused) once it returns.
func (ps *portServer) close() {
	if ps.srv != nil {
		_ = ps.srv.Close()
	}
	for _, l := range ps.listeners {
		_ = l.Close()
	}
}

// response is kube-proxy's health-check JSON body.
type response struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// handler answers every request on port with the state of the service
// that currently owns the port: 200 when it has local endpoints and the
// proxy is healthy, else 503.
func (s *Servers) handler(port uint16) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.RLock()
		ps := s.ports[port]
		var name string
		var count int
		if ps != nil {
			name, count = ps.service, ps.count
			if ps.perFamily != nil {
				count = ps.perFamily[requestFamily(r)]
			}
		}
		s.mu.RUnlock()
		if ps == nil {
			http.Error(w, "no health check on this port", http.StatusServiceUnavailable)
			return
		}
		healthy := s.healthy == nil || s.healthy()

		var body response
		body.Service.Namespace, body.Service.Name = splitName(name)
		body.LocalEndpoints = count
		body.ServiceProxyHealthy = healthy
		data, err := json.Marshal(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
		if count > 0 && healthy {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write(data)
	})
}

// requestFamily is the IP family a request arrived over (its local
// address; an IPv4 connection on a dual-stack listener is IPv4-mapped).
func requestFamily(r *http.Request) proxier.IPFamily {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			return proxier.FamilyOf(ap.Addr())
		}
	}
	return proxier.IPv4
}

// splitName splits "namespace/name"; a name without a slash has no
// namespace.
func splitName(s string) (namespace, name string) {
	if ns, n, ok := strings.Cut(s, "/"); ok {
		return ns, n
	}
	return "", s
}

// HealthCheckServices derives the argument of Servers.Sync from the
// snapshots of one sync (one per IP family): every service with a
// health-check node port, with its number of ready local endpoints per
// family (PerFamily; LocalEndpoints is the largest). Like kube-proxy,
// endpoints are counted by IP across all ports of the service
// (10.0.0.1:80 and 10.0.0.1:443 are one endpoint).
func HealthCheckServices(snaps []*proxier.Snapshot) map[string]Service {
	out := map[string]Service{}
	for _, snap := range snaps {
		if snap == nil {
			continue
		}
		ips := map[string]map[netip.Addr]bool{}
		for _, sp := range snap.Services {
			if sp.HealthCheckNodePort == 0 {
				continue
			}
			name := sp.Name.Service()
			if ips[name] == nil {
				ips[name] = map[netip.Addr]bool{}
			}
			for _, ep := range sp.AllEndpoints {
				if ep.Local && ep.Ready {
					ips[name][ep.Addr.Addr()] = true
				}
			}
			svc := out[name]
			svc.Port = sp.HealthCheckNodePort
			out[name] = svc
		}
		for name, set := range ips {
			svc := out[name]
			svc.LocalEndpoints = max(svc.LocalEndpoints, len(set))
			if svc.PerFamily == nil {
				svc.PerFamily = map[proxier.IPFamily]int{}
			}
			svc.PerFamily[snap.Family] = len(set)
			out[name] = svc
		}
	}
	return out
}
