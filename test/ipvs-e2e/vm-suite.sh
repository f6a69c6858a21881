#!/bin/sh
# vm-suite.sh: runs inside test/vm (make test-vm): the ipvs package's
# real-kernel test, test/conformance's IPVS-mode conntrack test (UDP flows
# follow a replaced endpoint) and host-port test (when BINDIR has
# conformance.test), the IPVS
# end-to-end suite and the sync benchmark, from test binaries built on the
# host. Each runs even when one before failed; the status is non-zero if
# any failed. Usage (in the VM, as root):
#   vm-suite.sh BINDIR REPO [extra args for ipvs-e2e.test]
#
# The VM's root is the host's, shared over 9p without caching: every file
# open is a round trip to the host. ipset looks up /etc/protocols for every
# member it parses or prints ("tcp:80"), which made `ipset save` of 10k
# members take 46 s instead of 1 s. Local copies of the files it reads,
# bind-mounted over the originals, remove that artefact of the VM.
set -eu
bin=$1 repo=$2
shift 2
mkdir -p /tmp/swy-etc
for f in protocols services nsswitch.conf; do
	if [ -f "/etc/$f" ]; then
		cp "/etc/$f" "/tmp/swy-etc/$f"
		mount --bind "/tmp/swy-etc/$f" "/etc/$f"
	fi
done
status=0
cd "$repo/ipvs"
"$bin/ipvs.test" -test.run Kernel -test.v || status=1
if [ -x "$bin/conformance.test" ]; then
	cd "$repo/test/conformance"
	"$bin/conformance.test" -test.run '^TestConntrackUDPFlowsMove$/^ipvs$|^TestHostPortsLiveIPVS$' -test.v || status=1
fi
cd "$repo/test/ipvs-e2e"
"$bin/ipvs-e2e.test" -test.v "$@" || status=1
exit $status
