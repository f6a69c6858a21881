package node

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// EchoRef is the echo server's image (test/echo's swy-echo, static), which
// the bed packs and imports into every node.
const EchoRef = "localhost/swynode/echo:v1"

// pauseArchive is the docker-archive of the sandbox image.
func (b *Bed) pauseArchive() string { return filepath.Join(b.Dir, "images", "pause.tar") }

// buildBaseImages packs swy-pause and swy-echo as single-layer images with
// build/image (the packer make image uses): no registry, no container
// engine.
func (b *Bed) buildBaseImages(bins BinPaths) error {
	if err := packImage(bins.ImagePacker, bins.Pause, "/pause", pauseRef, b.pauseArchive()); err != nil {
		return err
	}
	return packImage(bins.ImagePacker, bins.Echo, "/swy-echo", EchoRef, filepath.Join(b.Dir, "images", "echo.tar"))
}

// ImportEcho imports the echo image into every node's containerd.
func (b *Bed) ImportEcho() error {
	return b.ImportArchive(filepath.Join(b.Dir, "images", "echo.tar"))
}

// ImportArchive imports a docker-archive into every node's containerd
// (namespace k8s.io, where the CRI looks), as `ctr images import` does for
// a user without a registry.
func (b *Bed) ImportArchive(archive string) error {
	for _, n := range b.Nodes {
		if err := b.importArchive(n, archive); err != nil {
			return err
		}
	}
	return nil
}

func (b *Bed) importArchive(n *Node, archive string) error {
	if _, err := ctr(n, "images", "import", archive); err != nil {
		return fmt.Errorf("import %s into %s: %w", filepath.Base(archive), n.Name, err)
	}
	return nil
}

// packImage puts bin at entry in an otherwise empty root folder and packs
// it as ref into a docker-archive at archive.
func packImage(packer, bin, entry, ref, archive string) error {
	work := strings.TrimSuffix(archive, ".tar")
	rootfs := filepath.Join(work, "rootfs")
	if err := os.MkdirAll(filepath.Dir(filepath.Join(rootfs, entry)), 0o755); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return fmt.Errorf("read %s: %w", bin, err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, entry), data, 0o755); err != nil {
		return fmt.Errorf("copy %s: %w", bin, err)
	}
	out, err := exec.Command(packer, "-rootfs", rootfs, "-out", filepath.Join(work, "oci"), "-ref", ref,
		"-archive", archive, "-entrypoint", entry, "-version", "test").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pack %s: %w: %s", ref, err, out)
	}
	return nil
}

// ArchiveRef reads the image name (RepoTags) of a docker-archive.
func ArchiveRef(archive string) (string, error) {
	f, err := os.Open(archive)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", archive, err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("%s: no manifest.json", archive)
		}
		if err != nil {
			return "", fmt.Errorf("read %s: %w", archive, err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return "", fmt.Errorf("%s manifest.json: %w", archive, err)
		}
		if len(m) == 0 || len(m[0].RepoTags) == 0 {
			return "", fmt.Errorf("%s: manifest.json names no image", archive)
		}
		return m[0].RepoTags[0], nil
	}
}
