package swan

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// CA is the lab's certificate authority: one per run, ECDSA P-256, in
// memory only.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// PEM is the CA certificate.
	PEM []byte
}

// NewCA creates a CA named cn valid for a day.
func NewCA(cn string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("creating CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Handoff lab"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	return &CA{cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Identity is a certificate with its private key for one IKE identity
// (the certificate's subjectAltName).
type Identity struct {
	ID      string
	CertPEM []byte
	KeyPEM  []byte
}

// Issue issues a certificate for the DNS identity id.
func (ca *CA) Issue(id string) (*Identity, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("creating key for %s: %w", id, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("creating serial for %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: id, Organization: []string{"Handoff lab"}},
		DNSNames:     []string{id},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate for %s: %w", id, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding key of %s: %w", id, err)
	}
	return &Identity{
		ID:      id,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// Creds are the files swanctl loads for certificate authentication, laid
// out under SWANCTL_DIR: x509ca/ca.pem, x509/<id>.pem, ecdsa/<id>.pem.
type Creds struct {
	CA  []byte
	Own *Identity
}

// CertFile and CAFile are the names Conn.LocalCert and Conn.RemoteCA take.
func (c *Creds) CertFile() string { return c.Own.ID + ".pem" }

// CAFile is the CA certificate's file name in x509ca/.
func (c *Creds) CAFile() string { return "ca.pem" }

func (c *Creds) write(dir string) error {
	files := []struct {
		sub, name string
		data      []byte
		mode      os.FileMode
	}{
		{"x509ca", c.CAFile(), c.CA, 0o644},
		{"x509", c.CertFile(), c.Own.CertPEM, 0o644},
		{"ecdsa", c.CertFile(), c.Own.KeyPEM, 0o600},
	}
	for _, f := range files {
		d := filepath.Join(dir, f.sub)
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}
