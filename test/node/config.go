package node

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DNSServiceIP is the cluster DNS Service's address (kubelet's clusterDNS;
// CoreDNS serves it when a test deploys it).
const DNSServiceIP = "10.96.0.10"

// pauseRef is the bed's sandbox image (swy-pause, packed by the bed).
const pauseRef = "localhost/swynode/pause:v1"

// containerdConfig keeps every path of containerd under dir. The CRI
// settings are what these hosts need: root lacks CAP_SYS_RESOURCE
// (restrict_oom_score_adj), no AppArmor, cgroupfs, the sandbox image packed
// locally, and pod network namespaces under the state folder.
func containerdConfig(dir string) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[8]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[7]q
    max_conf_num = 1
`,
		filepath.Join(dir, "containerd-root"), filepath.Join(dir, "containerd-state"),
		filepath.Join(dir, "containerd.sock"), filepath.Join(dir, "containerd.sock.ttrpc"),
		filepath.Join(dir, "opt"), pauseRef, filepath.Join(dir, "cni/net.d"), filepath.Join(dir, "runc"))
}

// kubeletConfig is the node's KubeletConfiguration: cgroup v1 and
// cgroupfs as on these hosts, pods under the node's own cgroup root, pod
// logs and root folder in the node's mount namespace, no host resolv.conf, anonymous access
// allowed (the API server has no kubelet client certificate).
func kubeletConfig(n *Node) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: %q
containerRuntimeEndpoint: unix://%s
address: %s
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
resolvConf: ""
clusterDNS: [%q]
clusterDomain: cluster.local
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`, n.CgroupRoot, n.Socket(), n.IP, DNSServiceIP)
}

// cniConfig is the node's pod network: a bridge with host-local
// addresses from the node's pod CIDR (state under the node's folder),
// pods' default route via the bridge, and portmap for hostPorts. No
// masquerading: pod CIDRs are routed between the nodes.
func cniConfig(n *Node) string {
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "swynode",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, n.PodCIDR, filepath.Join(n.Dir, "cni/ipam"))
}

// cgroupHierarchies lists the mounted cgroup hierarchies (v1 controllers
// and the unified one).
func cgroupHierarchies() []string {
	entries, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	return out
}

// makeCgroupRoot creates kubelet's --cgroup-root in every hierarchy
// (kubelet requires it to exist); cpuset needs its cpus and mems copied
// from the parent before anything can join.
func makeCgroupRoot(root string) error {
	for _, h := range cgroupHierarchies() {
		d := filepath.Join(h, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		if strings.HasSuffix(h, "cpuset") {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(h, f))
				if err != nil {
					return fmt.Errorf("read %s: %w", f, err)
				}
				if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
					return fmt.Errorf("write %s: %w", f, err)
				}
			}
		}
	}
	return nil
}
