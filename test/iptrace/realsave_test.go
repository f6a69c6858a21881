package iptrace

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

// TestRealIptablesSaveRoundTrip loads kubeLike into a real kernel (in a
// network namespace of its own), reads it back with iptables-save and checks
// that the tracer parses the tool's own spelling and traces it the same way.
func TestRealIptablesSaveRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	for _, tool := range []string{"ip", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required: %v", tool, err)
		}
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	ns := "swy-" + hex.EncodeToString(b[:]) + "-iptrace"
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	restore := exec.Command("ip", "netns", "exec", ns, "iptables-restore")
	restore.Stdin = strings.NewReader(kubeLike)
	if out, err := restore.CombinedOutput(); err != nil {
		t.Fatalf("iptables-restore: %v: %s", err, out)
	}
	saved, err := exec.Command("ip", "netns", "exec", ns, "iptables-save").Output()
	if err != nil {
		t.Fatalf("iptables-save: %v", err)
	}
	real, err := Parse(string(saved))
	if err != nil {
		t.Fatalf("parse iptables-save output: %v\n%s", err, saved)
	}
	mine := MustParse(kubeLike)
	packets := []Packet{
		{Origin: FromPod, InIface: "veth9", Src: ip("10.244.0.9"), Dst: ip("10.96.0.10"), DstPort: 80},
		{Origin: FromPod, InIface: "veth2", Src: ip("10.244.0.2"), Dst: ip("10.96.0.10"), DstPort: 80},
		{Origin: FromOutside, InIface: "eth0", Src: ip("192.0.2.9"), Dst: nodeIP, DstPort: 30080},
		{Origin: FromNode, Src: nodeIP, Dst: ip("10.96.0.20"), DstPort: 80},
		{Origin: FromPod, Proto: "udp", Src: ip("10.244.0.9"), Dst: ip("10.96.0.30"), DstPort: 53},
	}
	for _, p := range packets {
		want := summary(trace(t, mine, p))
		got := summary(trace(t, real, p))
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%v: traced iptables-save output\n%s\nwant\n%s", p, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

// summary drops rule texts (spelt differently by iptables-save).
func summary(r *Result) []string {
	var out []string
	for _, o := range r.Outcomes {
		out = append(out, o.String())
	}
	return out
}
