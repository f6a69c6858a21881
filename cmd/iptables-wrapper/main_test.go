package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRelink(t *testing.T) {
	dir := t.TempDir()
	for _, n := range names {
		if err := os.Symlink("iptables-wrapper", filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := relink(dir, "xtables-legacy-multi"); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if got, err := os.Readlink(filepath.Join(dir, n)); err != nil || got != "xtables-legacy-multi" {
			t.Errorf("%s -> %q (%v)", n, got, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != len(names) {
		t.Errorf("relink left %d entries, want %d", len(entries), len(names))
	}
	if err := relink(filepath.Join(dir, "missing"), "x"); err == nil {
		t.Error("relink in a missing folder: no error")
	}
}
