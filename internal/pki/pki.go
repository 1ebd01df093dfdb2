// Package pki creates and loads the cluster's TLS material: a cluster CA,
// node certificates that carry the node ID, and the mutual-TLS configs the
// Raft transport uses to authorise peers on both dial and accept.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// NodeOU is the organisational unit every node certificate carries; a peer
// certificate without it is refused even when the CA signed it.
const NodeOU = "handoff-node"

// CA is a cluster certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte
}

// NewCA creates a CA valid for validity.
func NewCA(name string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"handoff"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("signing CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// NodeCert is a node's certificate and key in PEM.
type NodeCert struct {
	CertPEM, KeyPEM []byte
}

// Issue signs a certificate for node valid for validity, usable as both TLS
// server and client, with hosts (IPs or DNS names) as SANs.
func (ca *CA) Issue(node string, hosts []string, validity time.Duration) (*NodeCert, error) {
	if node == "" {
		return nil, errors.New("issuing a node certificate: empty node ID")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating key for %s: %w", node, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: node, OrganizationalUnit: []string{NodeOU}, Organization: []string{"handoff"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{node},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate for %s: %w", node, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding key for %s: %w", node, err)
	}
	return &NodeCert{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}, nil
}

// KeyPEM returns the CA key in PEM.
func (ca *CA) KeyPEM() ([]byte, error) {
	kder, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return nil, fmt.Errorf("encoding CA key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// LoadCA reads a CA certificate and key written by WriteCA.
func LoadCA(certFile, keyFile string) (*CA, error) {
	cpem, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA certificate: %w", err)
	}
	kpem, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA key: %w", err)
	}
	pair, err := tls.X509KeyPair(cpem, kpem)
	if err != nil {
		return nil, fmt.Errorf("loading CA %s / %s: %w", certFile, keyFile, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("loading CA key %s: not an ECDSA key", keyFile)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certFile)
	}
	return &CA{Cert: cert, Key: key, PEM: cpem}, nil
}

// WriteFile writes data with mode 0600 (keys) or 0644 (certificates),
// creating the directory 0700, and refuses to overwrite unless force.
func WriteFile(path string, data []byte, secret, force bool) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if !force {
		flags |= os.O_EXCL
	}
	mode := os.FileMode(0o644)
	if secret {
		mode = 0o600
	}
	f, err := os.OpenFile(path, flags, mode)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

// Material is a node's loaded TLS identity and the cluster CA.
type Material struct {
	Cert   tls.Certificate
	Pool   *x509.CertPool
	NodeID string
}

// Load reads the CA certificate and a node's certificate and key.
func Load(caFile, certFile, keyFile string) (*Material, error) {
	capem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA certificate: %w", err)
	}
	cpem, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("reading node certificate: %w", err)
	}
	kpem, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading node key: %w", err)
	}
	return FromPEM(capem, cpem, kpem)
}

// FromPEM builds Material from PEM bytes.
func FromPEM(caPEM, certPEM, keyPEM []byte) (*Material, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("CA file holds no PEM certificate")
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading node certificate and key: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parsing node certificate: %w", err)
	}
	pair.Leaf = leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("node certificate %q is not signed by the cluster CA: %w", leaf.Subject.CommonName, err)
	}
	return &Material{Cert: pair, Pool: pool, NodeID: leaf.Subject.CommonName}, nil
}

// Authorize decides whether a verified peer node may talk to us.
type Authorize func(nodeID string) error

// Policy is who, beyond "signed by the cluster CA and carrying the node
// OU", may complete a handshake with this node, in either direction.
// Whether a peer that completed one may do anything is the transport's
// business (raftstore binds every RPC to the certificate's node and to
// the Raft configuration); the policy only narrows who gets that far.
type Policy struct {
	// Authorize, if set, further restricts the node IDs
	// (tls.allowed_nodes).
	Authorize Authorize
	// Denied lists retired certificates (tls.deny_serials): refused
	// although the CA signed them.
	Denied *DenyList
}

// PeerID returns the node ID of a verified peer certificate chain.
func PeerID(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return cs.PeerCertificates[0].Subject.CommonName
}

// verifyPeer checks a peer chain against the cluster CA and the node OU,
// then the deny list and authorize. Hostnames are not checked: nodes are
// identified by the node ID in their certificate, not by the address they
// dial from.
func (m *Material) verifyPeer(cs tls.ConnectionState, p Policy) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("peer presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.Pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("peer certificate %q: %w", leaf.Subject.CommonName, err)
	}
	ok := false
	for _, ou := range leaf.Subject.OrganizationalUnit {
		ok = ok || ou == NodeOU
	}
	if !ok {
		return fmt.Errorf("peer certificate %q is not a handoff node certificate (OU %q missing)", leaf.Subject.CommonName, NodeOU)
	}
	if err := p.Denied.Check(leaf); err != nil {
		return fmt.Errorf("peer %q refused: %w", leaf.Subject.CommonName, err)
	}
	if p.Authorize != nil {
		if err := p.Authorize(leaf.Subject.CommonName); err != nil {
			return fmt.Errorf("peer %q not authorised: %w", leaf.Subject.CommonName, err)
		}
	}
	return nil
}

// ServerConfig is the TLS config for accepting peers: client certificates
// are required and checked against p.
func (m *Material) ServerConfig(p Policy) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{m.Cert},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return m.verifyPeer(cs, p)
		},
	}
}

// ClientConfig is the TLS config for dialing peers: the server certificate
// is verified against the cluster CA and checked against p the same way.
func (m *Material) ClientConfig(p Policy) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{m.Cert},
		// Standard hostname verification is replaced by verifyPeer, which
		// checks the chain against the cluster CA and the node identity.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			return m.verifyPeer(cs, p)
		},
	}
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		// crypto/rand never fails on Linux; a fixed serial would still be valid.
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}
