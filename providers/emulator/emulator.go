// Package emulator is Handoff's built-in cloud: one HTTPS server that speaks
// the EC2 query protocol, the GCE REST API and Azure Resource Manager for
// exactly the calls Handoff's providers make, plus the instance metadata
// services (IMDSv2, GCE metadata, Azure IMDS), over one consistent resource
// model per cloud (who holds which address, route and rule), with per-call
// latency and fault injection.
//
// The real SDK clients talk to it in tests, in `handoff demo --provider X`
// and in failover drills (`handoff emulator`). It is not a fake of a Go
// interface: it is a server, and the SDKs' own signing, serialisation,
// retries and pollers run against it.
package emulator

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"sync"
	"time"
)

// Options configure an Emulator.
type Options struct {
	// Addr is the API listen address; default "127.0.0.1:0".
	Addr string
	// Latency is added to every API call.
	Latency time.Duration
	// Logger receives one line per call at debug level.
	Logger *slog.Logger
}

// frontend is one cloud's API surface on the shared server.
type frontend interface {
	// register adds the cloud's API routes to mux.
	register(mux *http.ServeMux)
}

// Emulator is a running cloud emulator. Close stops it.
type Emulator struct {
	gate    *Gate
	log     *slog.Logger
	pool    *x509.CertPool
	cert    []byte // PEM of the server certificate (its own CA)
	ln      net.Listener
	srv     *http.Server
	serving sync.WaitGroup // one per listener served
	closer  sync.Once

	connMu sync.Mutex // guards fresh
	// fresh holds connections that have not started a request yet. A
	// client transport that dialed for a request another connection then
	// served parks such a connection in its pool; http.Server.Shutdown
	// counts it as active for 5 s, so Close ends them itself.
	fresh map[net.Conn]struct{}

	AWS   *AWS
	GCP   *GCP
	Azure *Azure
}

// New starts an emulator listening on opts.Addr.
func New(opts Options) (*Emulator, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cert, pool, err := selfSigned(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("creating the emulator's TLS certificate: %w", err)
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", opts.Addr, err)
	}
	e := &Emulator{gate: newGate(), log: log, pool: pool, cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), ln: ln}
	e.gate.SetLatency(opts.Latency)
	e.AWS = newAWS(e)
	e.GCP = newGCP(e)
	e.Azure = newAzure(e)
	mux := http.NewServeMux()
	for _, f := range []frontend{e.AWS, e.GCP, e.Azure} {
		f.register(mux)
	}
	e.srv = &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnState:         e.trackConn,
	}
	e.Serve(ln)
	return e, nil
}

// Serve answers the cloud APIs on one more listener until Close: the lab
// opens one inside each gateway's network namespace, so that every agent
// reaches "the cloud" at the same address of its own. Its certificate is
// valid for 127.0.0.1, ::1, localhost and Options.Addr.
func (e *Emulator) Serve(ln net.Listener) {
	e.serving.Add(1)
	go func() {
		defer e.serving.Done()
		if err := e.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			e.log.Error("emulator stopped serving", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// Gate is the emulator's latency and fault injection control.
func (e *Emulator) Gate() *Gate { return e.gate }

// URL is the HTTPS base URL of the cloud APIs.
func (e *Emulator) URL() string { return "https://" + e.ln.Addr().String() }

// CertPEM is the emulator's self-signed certificate in PEM, for clients in
// other processes to trust.
func (e *Emulator) CertPEM() []byte { return e.cert }

// CertPool trusts the emulator's certificate.
func (e *Emulator) CertPool() *x509.CertPool { return e.pool }

// HTTPClient returns a client that trusts the emulator's certificate.
func (e *Emulator) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: e.pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 64,
	}}
}

// Close stops the server; it is safe to call twice.
func (e *Emulator) Close() error {
	var err error
	e.closer.Do(func() {
		e.closeFreshConns()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		err = e.srv.Shutdown(ctx)
		if err != nil {
			err = e.srv.Close()
		}
		e.serving.Wait()
	})
	return err
}

func selfSigned(addr string) (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "handoff cloud emulator"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() && !ip.IsUnspecified() {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if ip == nil && host != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, host)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}

func (e *Emulator) trackConn(c net.Conn, st http.ConnState) {
	e.connMu.Lock()
	defer e.connMu.Unlock()
	if e.fresh == nil {
		e.fresh = make(map[net.Conn]struct{})
	}
	if st == http.StateNew {
		e.fresh[c] = struct{}{}
	} else {
		delete(e.fresh, c)
	}
}

func (e *Emulator) closeFreshConns() {
	e.connMu.Lock()
	defer e.connMu.Unlock()
	for c := range e.fresh {
		_ = c.Close()
		delete(e.fresh, c)
	}
}
