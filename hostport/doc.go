// Package hostport programs the hostPorts of this node's pods, in every
// proxy mode and under any CNI: the planner decides the mappings
// (Snapshot.HostPorts: oldest pod wins, a Service's node port beats a pod,
// families from the pod IPs); this package renders them as iptables nat
// rules and keeps the kernel matching them.
//
// Wrap decorates any proxier.Backend. After the decorated backend's Sync
// succeeds, each family's mappings are written with at most one
// `iptables-restore --noflush`: nothing when they did not change, only the
// changed per-mapping chains and the dispatch chain when they did. Full
// and verifying snapshots (and the first sync) compare with the kernel
// (iptables-save fingerprints) and repair what differs. While a mapping
// exists, a socket on its host IP and port is held so no node process can
// take the port; adding a UDP mapping deletes the conntrack entries to its
// port. Cleanup removes the chains and the jumps. The rule layout is a
// contract documented in README.md.
package hostport
