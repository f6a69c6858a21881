package nodeport

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// TestLocalAddressesInNetns runs LocalAddresses inside a network namespace
// the test creates, with known addresses on a veth pair that is down, and
// checks that exactly those (plus loopback) are returned.
func TestLocalAddressesInNetns(t *testing.T) {
	if os.Getenv("NODEPORT_LOCALADDRS_CHILD") == "1" {
		got, err := LocalAddresses()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("ADDRS %v\n", got)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	ns := fmt.Sprintf("swy-nodeport-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "-n", ns, "link", "add", "swy-a", "type", "veth", "peer", "name", "swy-b")
	run("ip", "-n", ns, "addr", "add", "10.99.0.1/24", "dev", "swy-a")
	run("ip", "-n", ns, "addr", "add", "10.99.0.2/24", "dev", "swy-a")
	run("ip", "-n", ns, "addr", "add", "192.0.2.7/32", "dev", "swy-b")
	run("ip", "-n", ns, "addr", "add", "fd99::1/64", "dev", "swy-a", "nodad")

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^TestLocalAddressesInNetns$", "-test.count=1")
	cmd.Env = append(os.Environ(), "NODEPORT_LOCALADDRS_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var line string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "ADDRS ") {
			line = l
		}
	}
	// lo is up with 127.0.0.1 and ::1; the veth ends are down but their
	// addresses count (as with net.InterfaceAddrs). Down interfaces get no
	// IPv6 link-local address, so the list is exact.
	want := []netip.Addr{
		netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2"),
		netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.7"),
		netip.MustParseAddr("::1"), netip.MustParseAddr("fd99::1"),
	}
	slices.SortFunc(want, netip.Addr.Compare)
	if wantLine := fmt.Sprintf("ADDRS %v", want); line != wantLine {
		t.Errorf("in the namespace: %q, want %q\nchild output:\n%s", line, wantLine, out)
	}

	// And the selection over them, as the planner would call it.
	s, err := ParseAddresses([]string{"10.99.0.0/24", "fd99::/64"})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Select(proxier.IPv4, nil, want); fmt.Sprint(got.Addrs) != "[10.99.0.1 10.99.0.2]" || got.All {
		t.Errorf("Select(v4) = %+v", got)
	}
}
