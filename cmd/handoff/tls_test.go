package main

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/internal/pki"
)

// `tls cert` and `tls show` print a certificate's serial in the form
// tls.deny_serials takes, and a deny list built from it retires exactly
// that certificate (runbook, section 6).
func TestTLSShowPrintsTheSerialToDeny(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	for _, args := range [][]string{{"tls", "ca", "-out", dir}, {"tls", "cert", "-ca", dir, "-node", "gw2", "-out", dir}} {
		out.Reset()
		if err := run(context.Background(), args, &out, &out); err != nil {
			t.Fatalf("handoff %v: %v\n%s", args, err, out.String())
		}
	}
	issued := out.String()
	out.Reset()
	if err := run(context.Background(), []string{"tls", "show", filepath.Join(dir, "gw2.pem")}, &out, &out); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`node "gw2", serial ([0-9a-f:]+), expires \d{4}-\d\d-\d\d, sha256 [0-9a-f]{64}`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("tls show said %q", out.String())
	}
	if !strings.Contains(issued, "serial "+m[1]) {
		t.Errorf("tls cert said %q, without the serial %s", issued, m[1])
	}
	mat, err := pki.Load(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "gw2.pem"), filepath.Join(dir, "gw2-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	deny, err := pki.ParseDenyList([]string{m[1]})
	if err != nil {
		t.Fatal(err)
	}
	if err := deny.Check(mat.Cert.Leaf); err == nil {
		t.Error("the printed serial does not retire the certificate")
	}
	if err := run(context.Background(), []string{"tls", "show", filepath.Join(dir, "gw2-key.pem")}, &out, &out); err == nil {
		t.Error("tls show of a key file found a certificate")
	}
}
