package cluster_test

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/switchyard-proxy/switchyard/test/cluster"
)

// TestInNetNS runs the control plane inside a network namespace the test
// creates, bound to an address that exists only there, as a lab does.
// Being ready means /readyz answered 200 on that address.
func TestInNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ns := fmt.Sprintf("swy-tc-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	run("netns", "add", ns)
	// Registered before Start, so it runs after the cluster has stopped.
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v\n%s", ns, err, out)
		}
	})
	run("-n", ns, "link", "set", "lo", "up")
	run("-n", ns, "addr", "add", "10.77.0.1/32", "dev", "lo")

	c := cluster.Start(t, cluster.WithNetNS(ns), cluster.WithBindAddress("10.77.0.1"))
	if want := "https://10.77.0.1:"; len(c.Server) <= len(want) || c.Server[:len(want)] != want {
		t.Fatalf("server %q is not on 10.77.0.1", c.Server)
	}
	// The process really lives in the namespace.
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	child, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", c.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if child == self {
		t.Fatalf("swy-testcluster runs in the test's network namespace (%s)", self)
	}
}
