// Package nodeport decides where node ports answer and serves the
// health-check node ports of externalTrafficPolicy Local load balancers.
//
// It has three parts, each usable on its own:
//
//   - NodeIPs picks this node's addresses from the Node object (or the
//     --node-ip override), with kube-proxy's preference for InternalIP over
//     ExternalIP; Primary and OfFamily split them per IP family.
//   - ParseAddresses and Selector.Select implement --nodeport-addresses:
//     CIDRs matched against the node's local interface addresses, or the
//     keyword "primary", or (empty) every local address.
//   - Servers runs one HTTP health-check server per healthCheckNodePort and
//     answers load balancers with kube-proxy's JSON body and 200/503 codes.
//
// Semantics follow upstream kube-proxy (pkg/proxy/util/nodeport_addresses.go,
// pkg/proxy/healthcheck/service_health.go, cmd/kube-proxy/app/server.go);
// where switchyard differs, the doc comment of the function says so.
package nodeport
