package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func tree(t *testing.T) string {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/sbin/tool"), []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("usr/sbin", filepath.Join(root, "sbin")); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestBuildIsReproducibleAndValid builds the same tree twice (different
// file times) and checks the digests match, every blob is named by its
// digest, and the archive's layer is the layer's diff ID.
func TestBuildIsReproducibleAndValid(t *testing.T) {
	var digests []string
	var out, archive string
	for i := range 2 {
		root := tree(t)
		later := time.Now().Add(time.Duration(i) * time.Hour)
		_ = os.Chtimes(filepath.Join(root, "usr/sbin/tool"), later, later)
		out = filepath.Join(t.TempDir(), "oci")
		archive = filepath.Join(t.TempDir(), "img.tar")
		d, err := build(options{rootfs: root, out: out, ref: "example/img:v1", archive: archive,
			version: "v1", entrypoint: []string{"/usr/sbin/tool"}, epoch: time.Unix(1700000000, 0)})
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d)
	}
	if digests[0] != digests[1] {
		t.Errorf("two builds of one tree: %s and %s", digests[0], digests[1])
	}

	blobs, err := os.ReadDir(filepath.Join(out, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blobs {
		data, _ := os.ReadFile(filepath.Join(out, "blobs", "sha256", b.Name()))
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != b.Name() {
			t.Errorf("blob %s has digest %x", b.Name(), sum)
		}
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	raw, _ := os.ReadFile(filepath.Join(out, "index.json"))
	if err := json.Unmarshal(raw, &index); err != nil || len(index.Manifests) != 2 ||
		index.Manifests[0].Digest != digests[0] || index.Manifests[0].Annotations[refAnnotation] != "v1" ||
		index.Manifests[1].Annotations[refAnnotation] != "latest" {
		t.Errorf("index.json: %s (%v)", raw, err)
	}

	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if strings.HasSuffix(h.Name, "/layer.tar") {
			sum := sha256.New()
			if _, err := io.Copy(sum, tr); err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(sum.Sum(nil)); got+"/layer.tar" != h.Name {
				t.Errorf("archive layer %s has digest %s", h.Name, got)
			}
		}
	}
	if len(names) != 3 || names[0] != "manifest.json" {
		t.Errorf("archive entries %v", names)
	}
}
