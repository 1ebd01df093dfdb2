package pki

import (
	"crypto/x509"
	"math/big"
	"strings"
	"testing"
)

func TestDenyListReadsSerialsAsOperatorsWriteThem(t *testing.T) {
	want := big.NewInt(0x3a5f01)
	for _, s := range []string{"3a:5f:01", "3A5F01", "0x3a5f01", "serial=3A5F01", " 3a5f01 ", "03:a5:f0:1"} {
		n, err := ParseSerial(s)
		if err != nil || n.Cmp(want) != 0 {
			t.Errorf("ParseSerial(%q) = %v, %v; want %v", s, n, err, want)
		}
	}
	for _, s := range []string{"", "zz", strings.Repeat("ab", 32)} {
		if _, err := ParseSerial(s); err == nil {
			t.Errorf("ParseSerial(%q) accepted", s)
		}
	}
	if got := FormatSerial(want); got != "3a:5f:01" {
		t.Errorf("FormatSerial = %q", got)
	}
	d, err := ParseDenyList([]string{"3A:5F:01"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Check(&x509.Certificate{SerialNumber: big.NewInt(0x3a5f01)}); err == nil {
		t.Error("a denied serial passed")
	}
	if err := d.Check(&x509.Certificate{SerialNumber: big.NewInt(0x3a5f02)}); err != nil {
		t.Errorf("another serial refused: %v", err)
	}
	var none *DenyList
	if err := none.Check(&x509.Certificate{SerialNumber: want}); err != nil || none.Len() != 0 {
		t.Errorf("a nil deny list refused: %v", err)
	}
}
