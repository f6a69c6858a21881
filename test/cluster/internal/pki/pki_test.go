package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"testing"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestEnsureReusesAndExtends(t *testing.T) {
	dir := t.TempDir()
	f, err := Ensure(dir, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, f.CACert)
	srv := readCert(t, f.ServerCert)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := srv.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"}); err != nil {
		t.Fatalf("serving cert does not verify against the CA for 127.0.0.1: %v", err)
	}
	sa1, _ := os.ReadFile(f.SAKey)

	// Same addresses: nothing changes.
	if _, err := Ensure(dir, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readCert(t, f.ServerCert).Raw, srv.Raw) {
		t.Error("serving certificate reissued although it covered every address")
	}

	// A new address: same CA and service-account key, new serving cert.
	if _, err := Ensure(dir, []net.IP{net.ParseIP("10.77.0.1")}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readCert(t, f.CACert).Raw, ca.Raw) {
		t.Error("CA changed")
	}
	if sa2, _ := os.ReadFile(f.SAKey); !bytes.Equal(sa1, sa2) {
		t.Error("service-account key changed")
	}
	srv2 := readCert(t, f.ServerCert)
	for _, host := range []string{"10.77.0.1", "127.0.0.1", "localhost"} {
		if _, err := srv2.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("new serving cert does not verify for %s: %v", host, err)
		}
	}
}
