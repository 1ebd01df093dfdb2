package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"
)

// DenyList holds the serial numbers of retired node certificates
// (tls.deny_serials). Nothing else revokes a certificate: node
// certificates last 825 days and the cluster runs no CRL or OCSP, so an
// operator who retires one (a node replaced, a key that may have leaked)
// lists its serial here on every node. A nil DenyList denies nothing.
type DenyList struct {
	serials map[string]struct{} // canonical form, see FormatSerial
}

// ParseDenyList reads serial numbers written as hex, with or without
// colons and a 0x prefix, in either case: what `handoff tls show` and
// `openssl x509 -serial` print.
func ParseDenyList(serials []string) (*DenyList, error) {
	d := &DenyList{serials: make(map[string]struct{}, len(serials))}
	for _, s := range serials {
		n, err := ParseSerial(s)
		if err != nil {
			return nil, err
		}
		d.serials[FormatSerial(n)] = struct{}{}
	}
	return d, nil
}

// ParseSerial reads one certificate serial number in hex.
func ParseSerial(s string) (*big.Int, error) {
	h := strings.ToLower(strings.TrimSpace(s))
	h = strings.TrimPrefix(h, "serial=")
	h = strings.TrimPrefix(h, "0x")
	h = strings.ReplaceAll(h, ":", "")
	if h == "" {
		return nil, fmt.Errorf("certificate serial %q is empty", s)
	}
	if len(h)%2 == 1 {
		h = "0" + h
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return nil, fmt.Errorf("certificate serial %q is not hex: %w", s, err)
	}
	if len(b) > 20 {
		// RFC 5280 caps serials at 20 octets: a longer string is a
		// fingerprint or a typo, and would silently deny nothing.
		return nil, fmt.Errorf("certificate serial %q is longer than 20 bytes (a fingerprint is not a serial)", s)
	}
	return new(big.Int).SetBytes(b), nil
}

// FormatSerial writes a serial number as lower-case hex pairs joined by
// colons, the form deny lists and logs use.
func FormatSerial(n *big.Int) string {
	b := n.Bytes()
	if len(b) == 0 {
		b = []byte{0}
	}
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = hex.EncodeToString([]byte{c})
	}
	return strings.Join(parts, ":")
}

// Fingerprint is the SHA-256 of a certificate's DER, in hex: what
// operators compare when they check which file a serial belongs to.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// Len is how many serials the list denies.
func (d *DenyList) Len() int {
	if d == nil {
		return 0
	}
	return len(d.serials)
}

// Check refuses a certificate whose serial is on the list.
func (d *DenyList) Check(c *x509.Certificate) error {
	if d == nil || c == nil || c.SerialNumber == nil {
		return nil
	}
	if _, ok := d.serials[FormatSerial(c.SerialNumber)]; ok {
		return fmt.Errorf("certificate %q (serial %s) is retired in tls.deny_serials", c.Subject.CommonName, FormatSerial(c.SerialNumber))
	}
	return nil
}
