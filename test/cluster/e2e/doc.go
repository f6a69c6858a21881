// Package e2e runs switchyard end to end against a real kube-apiserver:
// the control plane of package cluster runs inside the node namespace of a
// network-namespace lab (package test/lab), switchyard runs there as a real
// process with --kubeconfig, the tests change Services, EndpointSlices and
// the Node with client-go, and real TCP traffic between the lab's
// namespaces checks what switchyard programmed after every step.
//
// It is its own Go module (see go.mod) and holds tests only:
//
//	cd test/cluster/e2e && go test -v .
package e2e
