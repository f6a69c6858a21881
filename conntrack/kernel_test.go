package conntrack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// netnsWithConntrack creates a network namespace (its conntrack table is
// its own) and returns its name; it is deleted when the test ends.
func netnsWithConntrack(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, conntrack)")
	}
	for _, tool := range []string{"ip", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "swy-ct-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// insert creates a conntrack entry client → dst whose reply comes from
// target, with the conntrack tool, in namespace ns.
func insert(t *testing.T, ns string, f Flow) {
	t.Helper()
	args := []string{"netns", "exec", ns, "conntrack", "-I", "-p", strings.ToLower(string(f.Protocol)),
		"-s", f.Orig.Src.Addr().String(), "-d", f.Orig.Dst.Addr().String(),
		"--sport", fmt.Sprint(f.Orig.Src.Port()), "--dport", fmt.Sprint(f.Orig.Dst.Port()),
		"-r", f.Reply.Src.Addr().String(), "-q", f.Reply.Dst.Addr().String(),
		"--reply-port-src", fmt.Sprint(f.Reply.Src.Port()), "--reply-port-dst", fmt.Sprint(f.Reply.Dst.Port()),
		"-t", "300"}
	switch f.Protocol {
	case TCP:
		args = append(args, "--state", "ESTABLISHED")
	case SCTP:
		args = append(args, "--state", "ESTABLISHED", "--orig-vtag", "1", "--reply-vtag", "2")
	}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("conntrack -I %s: %v: %s", f, err, out)
	}
}

// list returns the entries of ns as "proto orig-dst reply-src" lines.
func list(t *testing.T, ns string, family proxier.IPFamily) []string {
	t.Helper()
	fam := "ipv4"
	if family == proxier.IPv6 {
		fam = "ipv6"
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "conntrack", "-L", "-f", fam).Output()
	if err != nil {
		t.Fatalf("conntrack -L: %v", err)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		kv := map[string][]string{}
		for _, f := range fields {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = append(kv[k], v)
			}
		}
		if len(kv["src"]) < 2 || len(kv["sport"]) < 2 {
			t.Fatalf("cannot read conntrack line %q", line)
		}
		got = append(got, fmt.Sprintf("%s %s:%s -> %s:%s", fields[0], kv["dst"][0], kv["dport"][0], kv["src"][1], kv["sport"][1]))
	}
	slices.Sort(got)
	return got
}

// TestNetlinkTableKernel runs the reconciler against a real conntrack table:
// entries made with the conntrack tool in a fresh namespace (UDP, SCTP, TCP,
// IPv4 and IPv6), one sync, and exactly the stale UDP/SCTP ones are gone;
// with the kernel filtering the dump by protocol, and without (the
// fallback for kernels before 5.8).
func TestNetlinkTableKernel(t *testing.T) {
	t.Run("filtered dumps", func(t *testing.T) { testNetlinkTable(t, false) })
	t.Run("unfiltered dump", func(t *testing.T) { testNetlinkTable(t, true) })
}

func testNetlinkTable(t *testing.T, unfiltered bool) {
	ns := netnsWithConntrack(t)
	for _, f := range []Flow{
		flow(UDP, "10.0.0.5:5353", "10.96.0.10:53", "10.244.0.2:53"),        // serving: kept
		flow(UDP, "10.0.0.6:5353", "10.96.0.10:53", "10.244.0.9:53"),        // endpoint gone
		flow(UDP, "10.0.0.7:5353", "10.96.0.10:53", ""),                     // never DNATed
		flow(UDP, "192.0.2.100:4000", "10.0.0.10:30053", "10.244.0.9:53"),   // node port, endpoint gone
		flow(UDP, "192.0.2.100:4001", "10.0.0.10:30053", "10.244.0.2:53"),   // node port, serving: kept
		flow(SCTP, "10.0.0.5:5000", "10.96.0.11:9000", "10.244.0.4:9000"),   // serving: kept
		flow(SCTP, "10.0.0.6:5000", "10.96.0.11:9000", "10.244.0.9:9000"),   // endpoint gone
		flow(TCP, "10.0.0.5:4000", "10.96.0.12:80", "10.244.0.9:80"),        // TCP: kept
		flow(UDP, "10.0.0.5:6000", "192.0.2.7:53", ""),                      // not a service: kept
		flow(UDP, "[fd00::5]:5353", "[fd00:96::10]:53", "[fd00:244::2]:53"), // serving: kept
		flow(UDP, "[fd00::6]:5353", "[fd00:96::10]:53", "[fd00:244::9]:53"), // endpoint gone
	} {
		insert(t, ns, f)
	}
	table, err := NewNetlinkTableAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = table.Close() })
	table.noFilter.Store(unfiltered)
	rec := &fakeRecorder{}
	rt := &recordingTable{Table: table}
	r := Wrap(&fakeBackend{}, Config{Table: rt, Logger: quiet(), Recorder: rec})
	snaps := []*proxier.Snapshot{
		snapshot(proxier.IPv4, true, nil,
			svc("dns", UDP, "10.96.0.10", 53, 30053, "10.244.0.2:53"),
			svc("sig", SCTP, "10.96.0.11", 9000, 0, "10.244.0.4:9000"),
			svc("web", TCP, "10.96.0.12", 80, 0, "10.244.0.5:80")),
		snapshot(proxier.IPv6, true, nil, svc("dns", UDP, "fd00:96::10", 53, 0, "[fd00:244::2]:53")),
	}
	if _, err := r.Sync(context.Background(), snaps); err != nil {
		t.Fatal(err)
	}
	want4 := []string{
		"sctp 10.96.0.11:9000 -> 10.244.0.4:9000",
		"tcp 10.96.0.12:80 -> 10.244.0.9:80",
		"udp 10.0.0.10:30053 -> 10.244.0.2:53",
		"udp 10.96.0.10:53 -> 10.244.0.2:53",
		"udp 192.0.2.7:53 -> 192.0.2.7:53",
	}
	if got := list(t, ns, proxier.IPv4); !slices.Equal(got, want4) {
		t.Errorf("IPv4 entries after the sync:\n got %q\nwant %q", got, want4)
	}
	want6 := []string{"udp fd00:96::10:53 -> fd00:244::2:53"}
	if got := list(t, ns, proxier.IPv6); !slices.Equal(got, want6) {
		t.Errorf("IPv6 entries after the sync:\n got %q\nwant %q", got, want6)
	}
	if !slices.Equal(rec.records, []record{{proxier.IPv4, 4}, {proxier.IPv6, 1}}) {
		t.Errorf("deleted counts: %v, want IPv4 4, IPv6 1", rec.records)
	}
	// The kernel filtered the dumps by protocol: the TCP entry never came.
	want := []Result{{Scanned: 8, Deleted: 4}, {Scanned: 2, Deleted: 1}}
	if unfiltered {
		want[0].Scanned = 9
	}
	if !slices.Equal(rt.results, want) {
		t.Errorf("dumps: %+v, want %+v (6 UDP + 2 SCTP + 1 TCP entries of IPv4; filtered dumps leave TCP out)", rt.results, want)
	}
	if !unfiltered && table.noFilter.Load() {
		t.Errorf("the kernel refused the filtered dump (needs Linux 5.8)")
	}
}

// recordingTable records what each Delete returned.
type recordingTable struct {
	Table
	results []Result
}

func (r *recordingTable) Delete(family proxier.IPFamily, protocols []proxier.Protocol, stale func(*Flow) bool) (Result, error) {
	res, err := r.Table.Delete(family, protocols, stale)
	r.results = append(r.results, res)
	return res, err
}
