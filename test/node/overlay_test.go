package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/test/cluster"
)

// TestOverlay checks the overlay against the real deploy/ folder: every
// placeholder deploy/README.md names is replaced, the pull policy is Never,
// and nothing else changes.
func TestOverlay(t *testing.T) {
	src := filepath.Join(cluster.RepoRoot(), "deploy")
	dst := t.TempDir()
	o := Overlay{Endpoint: "https://10.88.0.1:6443", Image: "example.test/switchyard:v1", ClusterCIDR: "10.244.0.0/16"}
	if err := o.Apply(src, dst); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(src, "*.yaml"))
	var all string
	for _, f := range files {
		orig, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dst, filepath.Base(f)))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(string(orig), "\n") != strings.Count(string(got), "\n") {
			t.Errorf("%s: line count changed", filepath.Base(f))
		}
		all += string(got)
	}
	for _, gone := range []string{"CONTROL-PLANE-ENDPOINT", "ghcr.io/switchyard-proxy/switchyard:latest", "IfNotPresent"} {
		if strings.Contains(all, gone) {
			t.Errorf("overlay left %q", gone)
		}
	}
	for _, want := range []string{"server: https://10.88.0.1:6443", "image: example.test/switchyard:v1", "imagePullPolicy: Never", "clusterCIDR: 10.244.0.0/16"} {
		if !strings.Contains(all, want) {
			t.Errorf("overlay has no %q", want)
		}
	}
}
