package raftstore_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/raftstore"
)

// A retired certificate (tls.deny_serials) cannot connect, either way:
// a node presenting gw2's retired certificate can neither join gw1 nor
// answer gw1's dial, while gw2's new certificate joins as usual (the
// serial is retired, not the node). A node whose own certificate is
// retired refuses to start.
func TestRetiredCertificateCannotConnect(t *testing.T) {
	f := newFixture(t)
	retired := f.material(f.ca, "gw2")
	deny, err := pki.ParseDenyList([]string{pki.FormatSerial(retired.Cert.Leaf.SerialNumber)})
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	cfg := f.config("gw1", f.material(f.ca, "gw1"))
	cfg.Denied, cfg.Logger = deny, slog.New(slog.NewTextHandler(&logs, nil))
	gw1, err := raftstore.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw1.Close() })
	if err := gw1.Bootstrap([]raftstore.Server{{ID: "gw1", Address: gw1.Addr()}}); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, gw1)

	old := f.open("gw2", retired, nil)
	if err := old.JoinCluster(ctx(t, time.Second), []string{gw1.Addr()}, raftstore.RoleGateway, 1); err == nil {
		t.Error("a retired certificate joined")
	}
	if !strings.Contains(logs.String(), "retired in tls.deny_serials") {
		t.Errorf("gw1's log does not say why it refused the retired certificate:\n%s", logs.String())
	}
	if err := gw1.Ping(ctx(t, time.Second), old.Addr()); err == nil || !strings.Contains(err.Error(), "retired in tls.deny_serials") {
		t.Errorf("dialing a server with a retired certificate: err = %v, want a refusal naming the deny list", err)
	}
	if v := voters(t, gw1); len(v) != 1 {
		t.Errorf("voters = %v, want only gw1", v)
	}
	old.Close()

	renewed := f.open("gw2", nil, nil)
	if err := renewed.JoinCluster(ctx(t, 10*time.Second), []string{gw1.Addr()}, raftstore.RoleGateway, 1); err != nil {
		t.Errorf("gw2's new certificate: %v", err)
	}

	self := f.config("gw2", retired)
	self.Denied = deny
	if s, err := raftstore.Open(self); err == nil {
		s.Close()
		t.Error("a node started with its own certificate retired")
	} else if !strings.Contains(err.Error(), "retired") {
		t.Errorf("starting with a retired certificate: %v", err)
	}
}
