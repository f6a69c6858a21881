package node

import (
	"context"
	"fmt"
	"net"
	"net/netip"
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

// PodNetNS returns the network namespace file of the pod with IP ip on
// node n: containerd keeps pod namespaces under its state folder
// (netns_mounts_under_state_dir).
func (n *Node) PodNetNS(ip string) (string, error) {
	want, err := netip.ParseAddr(ip)
	if err != nil {
		return "", fmt.Errorf("pod IP %q: %w", ip, err)
	}
	files, _ := filepath.Glob(filepath.Join(n.Dir, "containerd-state", "*", "netns", "*"))
	more, _ := filepath.Glob(filepath.Join(n.Dir, "containerd-state", "netns", "*"))
	for _, f := range append(files, more...) {
		found := false
		_ = InNS(f, func() error {
			addrs, err := net.InterfaceAddrs()
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == want {
					found = true
				}
			}
			return nil
		})
		if found {
			return f, nil
		}
	}
	return "", fmt.Errorf("no network namespace on %s has %s (looked at %d)", n.Name, ip, len(files)+len(more))
}
