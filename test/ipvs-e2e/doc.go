// Package ipvse2e proves switchyard's IPVS mode against a real IPVS kernel:
// the real switchyard binary (`--proxy-mode=ipvs`, run `--once` and as a
// long-running process on a manifest folder) programs the node namespace of
// a test/lab network, and the tests check the kernel with the real
// `ipvsadm -Ln`, `ipset list` and `iptables-save`, and with real TCP and
// UDP traffic between the lab's namespaces.
//
// The machines' own kernel has no IPVS: the tests skip there (when
// SWITCHYARD_VM is unset) and run inside the throwaway VM of test/vm:
//
//	make test-vm
//
// or by hand (build on the host, one boot for the whole binary):
//
//	go build -o /var/tmp/swy-e2e/switchyard ./cmd/switchyard
//	go test -c -o /var/tmp/swy-e2e/ipvs-e2e.test ./test/ipvs-e2e
//	SWY_SWITCHYARD_BIN=/var/tmp/swy-e2e/switchyard test/vm/run /var/tmp/swy-e2e/ipvs-e2e.test -test.v
//
// The benchmark of a full sync at 10k services × 10 endpoints (with an
// in-run `ipvsadm --restore` baseline of the same state):
//
//	test/vm/run /var/tmp/swy-e2e/ipvs-e2e.test -test.run '^$' -test.bench IPVSSync -test.benchtime 1x
//
// The package has no non-test code besides this comment.
package ipvse2e
