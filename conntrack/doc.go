// Package conntrack deletes stale UDP and SCTP conntrack entries, in every
// proxy mode, over netlink (no `conntrack` binary).
//
// Why: conntrack remembers the DNAT chosen for the first packet of a flow.
// A UDP client that keeps sending from the same source port (DNS, statsd)
// keeps reaching the endpoint it was first sent to, even after that
// endpoint left the service, because every packet refreshes the entry; and
// an entry made while the service had no endpoint was never DNATed, so the
// client keeps sending to the bare service IP (120 s of black hole after
// the first endpoint appears). TCP does not need this: a dead endpoint
// resets the connection and the client reconnects.
//
// What is deleted, as kube-proxy's conntrack reconciler does: a UDP or SCTP
// entry whose original destination is a service frontend (cluster IP,
// external IP or load-balancer IP with the service port, or any address
// with a node port) and whose reply source (the DNAT target) is not a
// serving endpoint of that service port. That covers both cases above: an
// endpoint that left, and an entry that was never DNATed (reply source ==
// original destination) for a frontend that now has endpoints. Traffic
// policies, topology and terminating state do not matter (a flow to a
// serving, terminating endpoint is kept). Node-port entries are matched by
// destination port only, so, as in kube-proxy, a node port whose service
// has no serving endpoint is skipped (it would delete unrelated flows to
// that port number). Beyond kube-proxy, the frontends of a service port
// that was removed are cleaned too (all its entries are stale).
//
// Never a flush: the first sync after a restart reconciles against the
// current snapshot, so valid entries survive a restart (kubernetes#122740)
// and only entries to non-serving endpoints go.
//
// How it runs: Wrap decorates any proxier.Backend. After a successful Sync,
// for each family whose snapshot has a change to a UDP or SCTP service port
// (or is a full sync: the first one, after a failure, hourly; or a
// previous reconcile failed), it dumps that family's UDP/SCTP conntrack
// entries over netlink and deletes the stale ones (each delete names the entry's id, so a newer entry with the same
// tuple is never hit). Failures are logged and retried at the next sync;
// they never fail the Sync.
//
// Cost: one reconcile walks the whole conntrack table in the kernel and
// copies to user space the family's entries of the protocols in use (one
// filtered dump per protocol, CTA_FILTER, Linux >= 5.8; older kernels fall
// back to one dump of every entry, filtered here), about 200 bytes of
// netlink per entry; only the stale entries are kept in memory, and each is
// deleted with one netlink request. BenchmarkReconcile (real tables in a
// namespace, 1000 UDP services, nothing stale; a loaded 2-core machine):
// 10k UDP entries 20-80 ms; 100k UDP entries 170-360 ms and 34 MB of
// garbage; 10k UDP + 90k TCP entries 65-105 ms filtered, 200-390 ms
// unfiltered. That is why the reconcile is skipped when no UDP/SCTP service
// port changed (kube-proxy dumps on every sync), and why a node without
// UDP/SCTP services never dumps.
//
// The netlink library's own parser (vishvananda/netlink v1.3.1,
// ConntrackTableList / ConntrackDeleteFilters) reads ports only for TCP and
// UDP, so a netlink.CustomConntrackFilter never sees an SCTP port, and it
// cannot ask the kernel to filter a dump: this package sends the same
// ctnetlink requests through the library's package nl and parses the
// tuples itself (without allocating per entry).
package conntrack
