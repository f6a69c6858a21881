// Command image packs a root file system folder into a single-layer OCI
// image without a container engine: it writes an OCI image layout (and,
// optionally, a docker-archive tarball that `docker load`, `ctr images
// import`, `kind load image-archive` and skopeo read) and prints the
// manifest digest. The layer is reproducible: entries in lexical order,
// owner root, every time stamp set to -epoch, gzip without name or time.
//
//	go run ./build/image -rootfs DIR -out .cache/image/oci -ref NAME:TAG [-archive FILE]
//
// `make image` builds the root file system (build/image/rootfs.sh) and
// calls it.
package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
	refAnnotation = "org.opencontainers.image.ref.name"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type options struct {
	rootfs, out, ref, archive, version, source string
	entrypoint                                 []string
	epoch                                      time.Time
}

func main() {
	var o options
	var entry string
	var epoch int64
	flag.StringVar(&o.rootfs, "rootfs", "", "root file system folder to pack")
	flag.StringVar(&o.out, "out", "", "OCI layout folder to write (replaced)")
	flag.StringVar(&o.ref, "ref", "", "image name with tag, e.g. ghcr.io/switchyard-proxy/switchyard:v0.1.0")
	flag.StringVar(&o.archive, "archive", "", "also write a docker-archive tarball here")
	flag.StringVar(&o.version, "version", "", "org.opencontainers.image.version label")
	flag.StringVar(&o.source, "source", "https://github.com/switchyard-proxy/switchyard", "org.opencontainers.image.source label")
	flag.StringVar(&entry, "entrypoint", "/usr/local/bin/switchyard", "entrypoint, space-separated")
	flag.Int64Var(&epoch, "epoch", 0, "time stamp of every file and of the image (seconds since 1970, e.g. the commit time)")
	flag.Parse()
	o.entrypoint = strings.Fields(entry)
	o.epoch = time.Unix(epoch, 0).UTC()
	if o.rootfs == "" || o.out == "" || o.ref == "" || !strings.Contains(o.ref, ":") {
		fmt.Fprintln(os.Stderr, "image: -rootfs, -out and -ref NAME:TAG are required")
		os.Exit(2)
	}
	digest, err := build(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(digest)
}

// build writes the layout (and archive) and returns the manifest digest.
func build(o options) (string, error) {
	if err := os.RemoveAll(o.out); err != nil {
		return "", fmt.Errorf("clear %s: %w", o.out, err)
	}
	blobs := filepath.Join(o.out, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return "", fmt.Errorf("create layout: %w", err)
	}
	layer, diffID, rawSize, err := writeLayer(o.rootfs, blobs, o.epoch)
	if err != nil {
		return "", err
	}
	created := o.epoch.Format(time.RFC3339)
	labels := map[string]string{
		"org.opencontainers.image.source":  o.source,
		"org.opencontainers.image.version": o.version,
		"org.opencontainers.image.title":   "switchyard",
	}
	config := map[string]any{
		"created":      created,
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": o.entrypoint,
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Labels":     labels,
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]string{{"created": created, "created_by": "make image (build/image)"}},
	}
	cfgDesc, cfgJSON, err := writeJSON(blobs, mediaConfig, config)
	if err != nil {
		return "", err
	}
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        cfgDesc,
		"layers":        []descriptor{layer},
		"annotations":   map[string]string{"org.opencontainers.image.created": created},
	}
	manDesc, _, err := writeJSON(blobs, mediaManifest, manifest)
	if err != nil {
		return "", err
	}
	tag := o.ref[strings.LastIndex(o.ref, ":")+1:]
	var refs []descriptor
	for _, r := range []string{tag, "latest"} {
		d := manDesc
		d.Annotations = map[string]string{refAnnotation: r}
		refs = append(refs, d)
		if tag == "latest" {
			break
		}
	}
	index := map[string]any{"schemaVersion": 2, "mediaType": mediaIndex, "manifests": refs}
	if err := writeFile(filepath.Join(o.out, "index.json"), index); err != nil {
		return "", err
	}
	if err := writeFile(filepath.Join(o.out, "oci-layout"), map[string]string{"imageLayoutVersion": "1.0.0"}); err != nil {
		return "", err
	}
	if o.archive != "" {
		if err := writeArchive(o, blobs, layer, diffID, rawSize, cfgDesc, cfgJSON); err != nil {
			return "", err
		}
	}
	return manDesc.Digest, nil
}

// hashWriter counts and hashes what passes through it.
type hashWriter struct {
	h hash.Hash
	n int64
}

func (w *hashWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.n += int64(len(p))
	return len(p), nil
}

// writeLayer packs root into a gzip'd tar blob and returns its descriptor,
// its diff ID (digest of the uncompressed tar) and the tar's size.
func writeLayer(root, blobs string, epoch time.Time) (descriptor, string, int64, error) {
	tmp, err := os.CreateTemp(blobs, ".layer-")
	if err != nil {
		return descriptor{}, "", 0, fmt.Errorf("create layer: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	compressed := &hashWriter{h: sha256.New()}
	gz, err := gzip.NewWriterLevel(io.MultiWriter(tmp, compressed), gzip.BestCompression)
	if err != nil {
		return descriptor{}, "", 0, err
	}
	raw := &hashWriter{h: sha256.New()}
	tw := tar.NewWriter(io.MultiWriter(gz, raw))
	if err := addTree(tw, root, epoch); err != nil {
		return descriptor{}, "", 0, fmt.Errorf("pack %s: %w", root, err)
	}
	if err := tw.Close(); err != nil {
		return descriptor{}, "", 0, fmt.Errorf("pack %s: %w", root, err)
	}
	if err := gz.Close(); err != nil {
		return descriptor{}, "", 0, fmt.Errorf("compress layer: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return descriptor{}, "", 0, fmt.Errorf("write layer: %w", err)
	}
	sum := hex.EncodeToString(compressed.h.Sum(nil))
	if err := os.Rename(tmp.Name(), filepath.Join(blobs, sum)); err != nil {
		return descriptor{}, "", 0, fmt.Errorf("store layer: %w", err)
	}
	d := descriptor{MediaType: mediaLayer, Digest: "sha256:" + sum, Size: compressed.n}
	return d, "sha256:" + hex.EncodeToString(raw.h.Sum(nil)), raw.n, nil
}

// addTree writes every entry under root, in lexical order, owned by root
// and stamped with epoch. Hard links are stored as separate files.
func addTree(tw *tar.Writer, root string, epoch time.Time) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = epoch, time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		hdr.PAXRecords = nil
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.Copy(tw, f); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		return nil
	})
}

// writeJSON stores v as a blob and returns its descriptor and bytes.
func writeJSON(blobs, mediaType string, v any) (descriptor, []byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return descriptor{}, nil, fmt.Errorf("encode %s: %w", mediaType, err)
	}
	sum := sha256.Sum256(b)
	hexSum := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(blobs, hexSum), b, 0o644); err != nil {
		return descriptor{}, nil, fmt.Errorf("store %s: %w", mediaType, err)
	}
	return descriptor{MediaType: mediaType, Digest: "sha256:" + hexSum, Size: int64(len(b))}, b, nil
}

func writeFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeArchive writes the docker-archive form (`docker save`'s layout):
// manifest.json, the config, and the uncompressed layer.
func writeArchive(o options, blobs string, layer descriptor, diffID string, rawSize int64, cfg descriptor, cfgJSON []byte) error {
	f, err := os.Create(o.archive + ".tmp")
	if err != nil {
		return fmt.Errorf("create archive: %w", err)
	}
	defer os.Remove(o.archive + ".tmp")
	defer f.Close()
	tw := tar.NewWriter(f)
	file := func(name string, size int64) error {
		return tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: o.epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX})
	}
	cfgName := strings.TrimPrefix(cfg.Digest, "sha256:") + ".json"
	layerName := strings.TrimPrefix(diffID, "sha256:") + "/layer.tar"
	man, err := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{o.ref}, "Layers": []string{layerName}}})
	if err != nil {
		return err
	}
	if err := file("manifest.json", int64(len(man))); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if _, err := tw.Write(man); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := file(cfgName, int64(len(cfgJSON))); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if _, err := tw.Write(cfgJSON); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	blob, err := os.Open(filepath.Join(blobs, strings.TrimPrefix(layer.Digest, "sha256:")))
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer blob.Close()
	gz, err := gzip.NewReader(blob)
	if err != nil {
		return fmt.Errorf("archive: read layer: %w", err)
	}
	if err := file(layerName, rawSize); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	n, err := io.Copy(tw, gz)
	if err != nil {
		return fmt.Errorf("archive: copy layer: %w", err)
	}
	if n != rawSize {
		return fmt.Errorf("archive: layer has %d bytes, want %d", n, rawSize)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	if err := os.Rename(o.archive+".tmp", o.archive); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	return nil
}
