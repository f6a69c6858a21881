// Command bench-iptables measures switchyard's iptables mode at scale, with
// in-run baselines so that results on a shared, noisy machine can be read
// as ratios.
//
// For each N (services, 10 endpoints each by default) and each flavour
// (iptables-nft, iptables-legacy) it creates a fresh network namespace and
// measures:
//
//   - render: time, bytes, lines, chains of the full-sync restore input;
//   - full: the backend's first Sync (what switchyard does at start-up);
//   - change: a one-endpoint change (partial Sync), repeated, p50/p90;
//   - resync: a full Sync over the whole ruleset (periodic / recovery);
//   - plain: a plain `iptables-restore` (no --noflush) of the same text
//     into a second fresh namespace: what the kernel alone costs;
//   - noflush (optional): `--noflush` of the same text (Render's, without
//     the "-S" line a full sync adds for iptables-nft) into a fresh
//     namespace: how the layout fared before that line;
//   - saveorder (optional): the same, in iptables-save order
//     (declarations sorted, rules grouped by sorted chain).
//
// Run as root: go run ./test/bench/iptables -n 1000,5000 -modes nft,legacy
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-proxy/switchyard/iptables"
	"github.com/switchyard-proxy/switchyard/proxier"
)

func main() {
	ns := flag.String("n", "1000", "comma-separated service counts")
	eps := flag.Int("eps", 10, "endpoints per service")
	modes := flag.String("modes", "nft,legacy", "comma-separated flavours (nft, legacy)")
	changes := flag.Int("changes", 5, "one-endpoint changes to time after the full sync")
	baselines := flag.String("baselines", "plain", "comma-separated in-run baselines: plain, saveorder (empty for none)")
	dump := flag.String("dump", "", "write the rendered text of the first N to this file and exit")
	flag.BoolVar(&verbose, "v", false, "print the restore input of the last one-endpoint change")
	flag.Parse()

	var counts []int
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fatalf("bad -n %q", s)
		}
		counts = append(counts, n)
	}
	if *dump != "" {
		text, err := iptables.Render([]*proxier.Snapshot{BigSnapshot(counts[0], *eps)})
		if err != nil {
			fatalf("render: %v", err)
		}
		if err := os.WriteFile(*dump, []byte(text), 0o644); err != nil {
			fatalf("%v", err)
		}
		return
	}
	if os.Geteuid() != 0 {
		fatalf("needs root (network namespaces)")
	}
	fmt.Printf("# %s, load average %s", time.Now().Format(time.RFC3339), loadavg())
	for _, n := range counts {
		for _, m := range strings.Split(*modes, ",") {
			if err := run(n, *eps, iptables.Mode(strings.TrimSpace(m)), *changes, strings.Split(*baselines, ",")); err != nil {
				fatalf("N=%d %s: %v", n, m, err)
			}
		}
	}
}

var verbose bool

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-iptables: "+format+"\n", args...)
	os.Exit(1)
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return string(b)
}

// BigSnapshot is N services x m endpoints, one port each, every tenth with
// a node port, one cluster CIDR, node ports on all addresses.
func BigSnapshot(n, m int) *proxier.Snapshot {
	services := make([]*proxier.ServicePort, 0, n)
	for i := 0; i < n; i++ {
		eps := make([]proxier.Endpoint, 0, m)
		for j := 0; j < m; j++ {
			k := i*m + j
			a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(128 + k>>16), byte(k >> 8), byte(k)}), 8080)
			eps = append(eps, proxier.Endpoint{Addr: a, Ready: true, Serving: true, Local: j == 0})
		}
		sp := &proxier.ServicePort{
			Name:             proxier.ServicePortName{Namespace: fmt.Sprintf("ns%d", i%100), Name: fmt.Sprintf("svc%05d", i), Port: "http", Protocol: proxier.TCP},
			Protocol:         proxier.TCP,
			ClusterIP:        netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)}),
			Port:             80,
			ClusterEndpoints: eps,
			AllEndpoints:     eps,
			LocalEndpoints:   eps[:1],
			HasAnyEndpoints:  true,
			// What the planner decides for eTP/iTP Cluster.
			Internal:           proxier.ClusterPolicy,
			ReachableEndpoints: eps,
		}
		if i%10 == 0 {
			sp.NodePort = uint16(30000 + i/10%2700)
			sp.External = proxier.ClusterPolicy
		}
		services = append(services, sp)
	}
	sort.Slice(services, func(i, j int) bool { return services[i].Name.Less(services[j].Name) })
	return &proxier.Snapshot{
		Family:            proxier.IPv4,
		NodeName:          "node-a",
		NodeIPs:           []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		NodePortAddresses: proxier.NodePortAddresses{All: true},
		Masquerade:        proxier.MasqueradeConfig{MarkBit: 14, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
		Services:          services,
		FullSync:          true,
	}
}

// withOneEndpointChange returns s with service i's first endpoint replaced
// by a new address (k makes it unique), as a partial-sync snapshot.
func withOneEndpointChange(s *proxier.Snapshot, i, k int) *proxier.Snapshot {
	c := *s
	c.Services = slices.Clone(s.Services)
	sp := *c.Services[i]
	sp.ClusterEndpoints = slices.Clone(sp.ClusterEndpoints)
	sp.ClusterEndpoints[0].Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 250, byte(k >> 8), byte(k)}), 8080)
	sp.AllEndpoints = sp.ClusterEndpoints
	sp.LocalEndpoints = sp.ClusterEndpoints[:1]
	sp.ReachableEndpoints = sp.ClusterEndpoints
	c.Services[i] = &sp
	c.FullSync = false
	c.Changed = map[proxier.ServicePortName]bool{sp.Name: true}
	return &c
}

// netns is a network namespace this program created.
type netns string

func newNetns() (netns, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	name := "swy-bench-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	return netns(name), nil
}

func (n netns) del() {
	if out, err := exec.Command("ip", "netns", "del", string(n)).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "ip netns del %s: %v: %s\n", n, err, out)
	}
}

// restore runs the flavour's iptables-restore in ns with args and text.
func (n netns) restore(m iptables.Mode, text []byte, args ...string) (time.Duration, error) {
	argv := append([]string{"netns", "exec", string(n), "iptables-" + string(m) + "-restore"}, args...)
	cmd := exec.Command("ip", argv...)
	cmd.Stdin = bytes.NewReader(text)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("restore %v: %v: %s", args, err, stderr.String())
	}
	return d, nil
}

// stats describes restore text.
type stats struct{ bytes, lines, chains, rules int }

func textStats(text []byte) stats {
	s := stats{bytes: len(text)}
	for _, l := range bytes.Split(text, []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		s.lines++
		switch l[0] {
		case ':':
			s.chains++
		case '-':
			s.rules++
		}
	}
	return s
}

// saveOrder rewrites restore text the way iptables-save prints it: per
// table, declarations sorted by name, then each chain's rules, chains in
// sorted order.
func saveOrder(text []byte) []byte {
	var out bytes.Buffer
	var decls []string
	rules := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 1<<20), 1<<26)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "*"):
			out.WriteString(l + "\n")
			decls, rules = nil, map[string][]string{}
		case strings.HasPrefix(l, ":"):
			decls = append(decls, l)
		case strings.HasPrefix(l, "-A "):
			name, _, _ := strings.Cut(l[3:], " ")
			rules[name] = append(rules[name], l)
		case l == "COMMIT":
			sort.Strings(decls)
			for _, d := range decls {
				out.WriteString(d + "\n")
			}
			for _, d := range decls {
				name, _, _ := strings.Cut(d[1:], " ")
				for _, r := range rules[name] {
					out.WriteString(r + "\n")
				}
			}
			out.WriteString("COMMIT\n")
		default:
			out.WriteString(l + "\n")
		}
	}
	return out.Bytes()
}

// recorder is an Executor that remembers the last restore input and how
// long the restore child took.
type recorder struct {
	iptables.Executor
	lastRestore []byte
	restoreTook time.Duration
}

func (r *recorder) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, []byte, error) {
	start := time.Now()
	out, errb, err := r.Executor.Run(ctx, stdin, name, args...)
	if strings.HasSuffix(name, "-restore") {
		r.lastRestore, r.restoreTook = stdin, time.Since(start)
	}
	return out, errb, err
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0fms", float64(d.Microseconds())/1000) }

func run(n, m int, mode iptables.Mode, changes int, baselines []string) error {
	ctx := context.Background()
	snap := BigSnapshot(n, m)
	start := time.Now()
	text, err := iptables.Render([]*proxier.Snapshot{snap})
	if err != nil {
		return err
	}
	renderTook := time.Since(start)
	st := textStats([]byte(text))
	fmt.Printf("N=%d eps=%d %s: render %s, %d bytes, %d lines, %d chains, %d rules\n",
		n, m, mode, ms(renderTook), st.bytes, st.lines, st.chains, st.rules)

	ns, err := newNetns()
	if err != nil {
		return err
	}
	defer ns.del()
	rec := &recorder{Executor: iptables.NetnsExecutor(string(ns))}
	be, err := iptables.New(iptables.Config{Mode: mode, Executor: rec, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	start = time.Now()
	res, err := be.Sync(ctx, []*proxier.Snapshot{snap})
	if err != nil {
		return fmt.Errorf("full sync: %w", err)
	}
	full := time.Since(start)
	fmt.Printf("  full sync      %8s (restore child %s, %d bytes)\n", ms(full), ms(rec.restoreTook), res.Bytes)

	var took []time.Duration
	var childTook []time.Duration
	var bytesW int
	for k := 0; k < changes; k++ {
		c := withOneEndpointChange(snap, (k*7919)%n, k)
		start = time.Now()
		res, err := be.Sync(ctx, []*proxier.Snapshot{c})
		if err != nil {
			return fmt.Errorf("partial sync: %w", err)
		}
		if res.Full {
			return fmt.Errorf("partial sync was full")
		}
		took = append(took, time.Since(start))
		childTook = append(childTook, rec.restoreTook)
		bytesW = res.Bytes
		snap = c
	}
	if verbose && changes > 0 {
		fmt.Printf("%s", rec.lastRestore)
	}
	if changes > 0 {
		slices.Sort(took)
		slices.Sort(childTook)
		fmt.Printf("  one-endpoint change p50 %s p90 %s (restore child p50 %s), %d bytes\n",
			ms(took[len(took)/2]), ms(took[len(took)*9/10]), ms(childTook[len(childTook)/2]), bytesW)
	}

	// A full sync over the whole ruleset (periodic, or after a failure).
	c := *snap
	c.FullSync = true
	start = time.Now()
	res, err = be.Sync(ctx, []*proxier.Snapshot{&c})
	if err != nil || !res.Full {
		return fmt.Errorf("resync: %+v %v", res, err)
	}
	fmt.Printf("  full resync    %8s (restore child %s)\n", ms(time.Since(start)), ms(rec.restoreTook))

	for _, b := range baselines {
		var args []string
		in := []byte(text)
		switch strings.TrimSpace(b) {
		case "":
			continue
		case "plain":
		case "saveorder":
			args = []string{"--noflush"}
			in = saveOrder(in)
		case "noflush":
			args = []string{"--noflush"}
		default:
			return fmt.Errorf("unknown baseline %q", b)
		}
		bns, err := newNetns()
		if err != nil {
			return err
		}
		d, err := bns.restore(mode, in, args...)
		bns.del()
		if err != nil {
			return fmt.Errorf("baseline %s: %w", b, err)
		}
		fmt.Printf("  baseline %-9s %8s (full sync / baseline = %.2f)\n", b, ms(d), float64(full)/float64(d))
	}
	return nil
}
