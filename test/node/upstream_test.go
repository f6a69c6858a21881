package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard-proxy/switchyard/test/cluster"
)

// E2EFocus and E2ESkip select upstream's specs: [sig-network] Services
// minus what needs a special cluster (Serial, Disruptive, feature gates,
// flaky, cloud load balancers).
const (
	E2EFocus = `\[sig-network\] Services`
	E2ESkip  = `\[Serial\]|\[Disruptive\]|\[Feature:|\[Flaky\]|LoadBalancer|\[sig-cloud-provider`
)

// TestUpstreamServices runs upstream's [sig-network] Services e2e specs
// (e2e.test v1.37.2, built from test/cluster's go.mod) on the two-node bed
// with cluster DNS, against the proxy SWY_NODE_E2E names: "switchyard"
// (deploy/ as a DaemonSet, iptables mode) or "kube-proxy" (upstream's,
// iptables mode, one process per node). make test-node-full runs both and
// writes the results side by side. It fails if any spec fails.
func TestUpstreamServices(t *testing.T) {
	proxy := os.Getenv("SWY_NODE_E2E")
	if proxy == "" {
		t.Skip("set SWY_NODE_E2E=switchyard or kube-proxy (make test-node-full)")
	}
	ub, err := UpstreamBinaries()
	if err != nil {
		t.Fatalf("upstream binaries: %v", err)
	}
	out := os.Getenv("SWY_NODE_E2E_OUT")
	if out == "" {
		out = filepath.Join(CacheDir(), "..", "node-e2e")
	}
	out = filepath.Join(out, proxy)
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	bins, err := Binaries()
	if err != nil {
		t.Fatal(err)
	}
	b := Start(t)
	ctx := context.Background()
	s := time.Now()
	if err := b.ImportUpstreamImages(bins, ub.Agnhost, ub.CoreDNS); err != nil {
		t.Fatal(err)
	}
	t.Logf("upstream images: %s", time.Since(s).Round(100*time.Millisecond))
	switch proxy {
	case "switchyard":
		archive := os.Getenv("SWY_IMAGE_ARCHIVE")
		if archive == "" {
			archive = filepath.Join(cluster.RepoRoot(), ".cache", "image", "switchyard.tar")
		}
		image, err := ArchiveRef(archive)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.ImportArchive(archive); err != nil {
			t.Fatal(err)
		}
		if err := b.DeploySwitchyard(ctx, image); err != nil {
			t.Fatal(err)
		}
		if err := waitFor(3*time.Minute, func() error {
			ds, err := b.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "switchyard", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if ds.Status.NumberAvailable != 2 {
				return fmt.Errorf("%d switchyard pods available", ds.Status.NumberAvailable)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	case "kube-proxy":
		if err := b.StartKubeProxy(ub.KubeProxy); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("SWY_NODE_E2E=%q: want switchyard or kube-proxy", proxy)
	}
	s = time.Now()
	if err := b.DeployCoreDNS(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("CoreDNS ready: %s", time.Since(s).Round(100*time.Millisecond))

	report := filepath.Join(out, "report.json")
	_ = os.Remove(report)
	args := []string{"--net=/run/netns/" + b.CPNS, "--", ub.E2ETest,
		"--kubeconfig=" + b.Cluster.Kubeconfig, "--provider=local", "--num-nodes=2",
		"--kubectl-path=" + ub.Kubectl, "--report-dir=" + out,
		"--ginkgo.focus=" + E2EFocus, "--ginkgo.skip=" + E2ESkip,
		"--ginkgo.json-report=" + report, "--ginkgo.no-color", "--ginkgo.timeout=3h",
	}
	if extra := os.Getenv("SWY_NODE_E2E_ARGS"); extra != "" {
		args = append(args, strings.Fields(extra)...)
	}
	cmd := exec.Command("nsenter", args...)
	logPath := filepath.Join(out, "e2e.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+filepath.Join(b.Dir, "home"))
	s = time.Now()
	runErr := cmd.Run()
	took := time.Since(s).Round(time.Second)
	res, err := readReport(report)
	if err != nil {
		t.Fatalf("e2e.test (%v) wrote no report: %v; log %s:\n%s", runErr, err, logPath, tail(logPath, 40))
	}
	summary := res.summary(proxy, took)
	t.Log(summary)
	if err := os.WriteFile(filepath.Join(out, "summary.txt"), []byte(summary), 0o644); err != nil {
		t.Fatal(err)
	}
	if len(res.failed) > 0 {
		t.Errorf("%d specs failed against %s (log %s)", len(res.failed), proxy, logPath)
	}
}

// e2eResult is a ginkgo JSON report reduced to spec names by state.
type e2eResult struct {
	passed, failed, skipped []string
}

func readReport(path string) (e2eResult, error) {
	var r e2eResult
	data, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	var reports []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			LeafNodeLabels          []string
			State                   string
			Failure                 struct{ Message string }
		}
	}
	if err := json.Unmarshal(data, &reports); err != nil {
		return r, fmt.Errorf("parse %s: %w", path, err)
	}
	for _, rep := range reports {
		for _, sp := range rep.SpecReports {
			if sp.LeafNodeType != "It" {
				continue
			}
			name := strings.Join(append(sp.ContainerHierarchyTexts, sp.LeafNodeText), " ")
			full := name + " [" + strings.Join(sp.LeafNodeLabels, "] [") + "]"
			if !focus.MatchString(full) || skip.MatchString(full) {
				continue // not selected: reported as skipped, never ran
			}
			switch sp.State {
			case "passed":
				r.passed = append(r.passed, name)
			case "skipped":
				r.skipped = append(r.skipped, name+" ("+firstLine(sp.Failure.Message)+")")
			case "pending":
			default:
				r.failed = append(r.failed, sp.State+": "+name)
			}
		}
	}
	if len(r.passed)+len(r.failed)+len(r.skipped) == 0 {
		return r, fmt.Errorf("%s lists no Services spec", path)
	}
	return r, nil
}

var (
	focus = regexp.MustCompile(E2EFocus)
	skip  = regexp.MustCompile(E2ESkip)
)

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// summary lists every spec that ran with its state (skipped specs that
// the focus excluded are not in the report's Services list).
func (r e2eResult) summary(proxy string, took time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d passed, %d failed, %d skipped in %s\n", proxy, len(r.passed), len(r.failed), len(r.skipped), took)
	for _, l := range []struct {
		state string
		names []string
	}{{"FAILED", r.failed}, {"passed", r.passed}, {"skipped", r.skipped}} {
		sort.Strings(l.names)
		for _, n := range l.names {
			fmt.Fprintf(&b, "%s\t%s\n", l.state, n)
		}
	}
	return b.String()
}
