package nftables

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/proxier"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// fakes returns a backend over knftables fakes, one per family.
func fakes(t testing.TB) (*Backend, map[proxier.IPFamily]*knftables.Fake) {
	t.Helper()
	fs := map[proxier.IPFamily]*knftables.Fake{
		proxier.IPv4: knftables.NewFake(knftables.IPv4Family, TableName),
		proxier.IPv6: knftables.NewFake(knftables.IPv6Family, TableName),
	}
	b, err := New(Config{Logger: quietLogger(), NewInterface: func(f proxier.IPFamily) (knftables.Interface, error) {
		return fs[f], nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	return b, fs
}

// dump returns the fakes' tables in the order of snaps.
func dump(fs map[proxier.IPFamily]*knftables.Fake, snaps []*proxier.Snapshot) string {
	var sb strings.Builder
	for _, s := range snaps {
		sb.WriteString(fs[s.Family].Dump())
	}
	return sb.String()
}

// TestGolden syncs every fixture into knftables fakes (which check every
// reference: chains, maps, sets) and compares the resulting table dumps
// with testdata/*.golden.
func TestGolden(t *testing.T) {
	cases := goldenCases()
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			snaps := cases[name]
			b, fs := fakes(t)
			if _, err := b.Sync(context.Background(), snaps); err != nil {
				t.Fatal(err)
			}
			got := dump(fs, snaps)
			// Render is deterministic and is exactly what the first sync
			// wrote into the empty table.
			text, err := Render(snaps)
			if err != nil {
				t.Fatal(err)
			}
			again, _ := Render(snaps)
			if again != text {
				t.Fatal("Render is not deterministic")
			}
			if last := fs[snaps[len(snaps)-1].Family].LastTransaction.String(); !strings.HasSuffix(text, last) {
				t.Errorf("Render does not end with the first sync's transaction:\n%s\nvs\n%s", text, last)
			}
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if string(want) != got {
				t.Errorf("%s differs (run `go test ./nftables -run TestGolden -update` to accept):\n--- want\n%s\n--- got\n%s", path, want, got)
			}
		})
	}
}
