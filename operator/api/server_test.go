package api_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/operator/api"
)

// statusOnly stands in for the agent in these unit tests, which only need
// a status; any other call would panic on the nil embedded Backend.
type statusOnly struct {
	api.Backend
	promoted chan string
}

func (statusOnly) OperatorStatus() agent.Status {
	return agent.Status{Node: "gw1", RaftState: "Leader", Leader: "gw1", Active: "gw1"}
}

func (s statusOnly) Promote(_ context.Context, node string) (agent.Handover, error) {
	s.promoted <- node
	return agent.Handover{From: "gw1", To: node}, nil
}

// syncBuf is a log sink safe for the server's goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestTLSAndTokensNeverLogged(t *testing.T) {
	ca, err := pki.NewCA("api test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("gw1", []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(cert.CertPEM, cert.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	const token = "secret-token-never-in-logs-0123"
	logs := &syncBuf{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := statusOnly{promoted: make(chan string, 1)}
	srv, err := api.New(api.Config{Addr: "127.0.0.1:0", Tokens: []string{token},
		TLS: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, Logger: log}, b)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	defer srv.Close() // safe twice
	if !strings.HasPrefix(srv.URL(), "https://") {
		t.Fatalf("URL %s", srv.URL())
	}
	ctx := context.Background()

	c, err := api.NewClient(srv.URL(), token, api.ClientOptions{CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.Active != "gw1" {
		t.Fatalf("status over TLS: %+v, %v", st, err)
	}
	if h, err := c.Promote(ctx, "gw2"); err != nil || h.To != "gw2" || <-b.promoted != "gw2" {
		t.Fatalf("promote over TLS: %+v, %v", h, err)
	}
	// A client that does not trust the CA does not get through.
	untrusting, _ := api.NewClient(srv.URL(), token, api.ClientOptions{})
	if _, err := untrusting.Status(ctx); !errors.Is(err, api.ErrUnreachable) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("client without the CA: %v", err)
	}
	// A wrong token is refused and the refusal logged, without either token.
	wrong, _ := api.NewClient(srv.URL(), "wrong-token-also-not-logged", api.ClientOptions{CAFile: caFile})
	if _, err := wrong.Promote(ctx, "gw3"); !errors.Is(err, api.ErrUnauthorized) {
		t.Errorf("wrong token: %v", err)
	}
	out := logs.String()
	if !strings.Contains(out, "API request refused") || !strings.Contains(out, "path=/v1/promote") {
		t.Errorf("refusal not logged:\n%s", out)
	}
	if strings.Contains(out, token) || strings.Contains(out, "wrong-token-also-not-logged") {
		t.Errorf("a token reached the log:\n%s", out)
	}
}

func TestConfigRefusesEmptyToken(t *testing.T) {
	if _, err := api.New(api.Config{Tokens: []string{""}}, statusOnly{}); err == nil {
		t.Error("an empty token was accepted")
	}
}

func TestClientAddressForms(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:7950", "http://127.0.0.1:7950", "https://gw1.example:7950/", ""} {
		if _, err := api.NewClient(addr, "", api.ClientOptions{}); err != nil {
			t.Errorf("%q: %v", addr, err)
		}
	}
	for _, addr := range []string{"ftp://x", "http://", "::"} {
		if _, err := api.NewClient(addr, "", api.ClientOptions{}); err == nil {
			t.Errorf("%q accepted", addr)
		}
	}
}

// TestLoopbackReadsCheckTheHost: a read from loopback without a token is
// served only to a client that names the agent by a loopback or configured
// name; a page whose own name was rebound to 127.0.0.1 (DNS rebinding) is
// refused with 421 saying why, and a token opens reads under any name.
func TestLoopbackReadsCheckTheHost(t *testing.T) {
	srv, err := api.New(api.Config{Addr: "127.0.0.1:7950", Tokens: []string{"host-test-token-0123456789"}, Hosts: []string{"gw1.example"}}, statusOnly{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		remote, host, tok string
		status            int
	}{
		{"127.0.0.1:40000", "127.0.0.1:7950", "", 200},
		{"127.0.0.1:40000", "localhost:7950", "", 200},
		{"127.0.0.1:40000", "LOCALHOST.:7950", "", 200},
		{"127.0.0.1:40000", "ui.localhost", "", 200},
		{"[::1]:40000", "[::1]:7950", "", 200},
		{"127.0.0.1:40000", "127.0.0.2", "", 200},
		{"127.0.0.1:40000", "gw1.example:7950", "", 200},
		{"127.0.0.1:40000", "", "", 200},
		{"127.0.0.1:40000", "rebind.attacker.example:7950", "", 421},
		{"127.0.0.1:40000", "rebind.attacker.example", "", 421},
		{"[::1]:40000", "198.51.100.7:7950", "", 421},
		{"127.0.0.1:40000", "rebind.attacker.example:7950", "host-test-token-0123456789", 200},
		{"127.0.0.1:40000", "rebind.attacker.example:7950", "wrong-token-wrong-token", 403},
		{"192.0.2.10:40000", "127.0.0.1:7950", "", 401},
	} {
		req := httptest.NewRequest("GET", "/v1/status", nil)
		req.RemoteAddr, req.Host = c.remote, c.host
		if c.tok != "" {
			req.Header.Set("Authorization", "Bearer "+c.tok)
		}
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		if rec.Code != c.status {
			t.Errorf("read from %s as %q (token %v): %d, want %d: %s", c.remote, c.host, c.tok != "", rec.Code, c.status, rec.Body)
		}
		if rec.Code == 421 && !strings.Contains(rec.Body.String(), "is not a name of this agent") {
			t.Errorf("421 without saying why: %s", rec.Body)
		}
	}
}
