package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/switchyard-proxy/switchyard/test/cluster"
)

// Overlay is what a user changes in deploy/ before applying it (the same
// substitutions as deploy/README.md's sed line): the control-plane
// endpoint, the image, the pod CIDR, and imagePullPolicy Never because
// the image was imported into the nodes' containerd, not pushed to a
// registry.
type Overlay struct {
	Endpoint, Image, ClusterCIDR string
}

// Apply rewrites every deploy/*.yaml file of src into dst.
func (o Overlay) Apply(src, dst string) error {
	files, err := filepath.Glob(filepath.Join(src, "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no manifests in %s (%v)", src, err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("overlay dir: %w", err)
	}
	r := strings.NewReplacer(
		"https://CONTROL-PLANE-ENDPOINT:6443", o.Endpoint,
		"ghcr.io/switchyard-proxy/switchyard:latest", o.Image,
		"10.244.0.0/16", o.ClusterCIDR,
		"imagePullPolicy: IfNotPresent", "imagePullPolicy: Never",
	)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("read %s: %w", f, err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), []byte(r.Replace(string(data))), 0o644); err != nil {
			return fmt.Errorf("write overlay: %w", err)
		}
	}
	return nil
}

// DeploySwitchyard applies the repository's deploy/ folder with the
// Overlay for this bed and image.
func (b *Bed) DeploySwitchyard(ctx context.Context, image string) error {
	o := Overlay{Endpoint: b.Cluster.Server, Image: image, ClusterCIDR: ClusterCIDR}
	dst := filepath.Join(b.Dir, "deploy")
	if err := o.Apply(filepath.Join(cluster.RepoRoot(), "deploy"), dst); err != nil {
		return err
	}
	objs, err := cluster.LoadManifests(dst)
	if err != nil {
		return err
	}
	return b.Cluster.Apply(ctx, objs, false)
}

// PodNetNS returns a network namespace path of the pod with UID uid on
// node n: /proc/<pid>/ns/net of a process in the pod's cgroup (kubelet's
// cgroupfs layout: <cgroup root>/kubepods/[<qos>/]pod<uid>/<container>).
func (n *Node) PodNetNS(uid string) (string, error) {
	root := filepath.Join("/sys/fs/cgroup/pids", n.CgroupRoot)
	var podDir string
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "pod"+uid {
			podDir = path
			return filepath.SkipAll
		}
		return nil
	})
	if podDir == "" {
		return "", fmt.Errorf("no cgroup for pod %s under %s", uid, root)
	}
	pids := cgroupPIDs(podDir)
	if len(pids) == 0 {
		return "", fmt.Errorf("no process in %s", podDir)
	}
	return fmt.Sprintf("/proc/%d/ns/net", pids[0]), nil
}
