package site

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/lab/swan"
	"github.com/handoffvpn/handoff/lab/topo"
	"github.com/handoffvpn/handoff/lab/traffic"
)

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestPrivilegedSiteLibipsecOnHost runs the whole site on the host kernel,
// which has no ESP, with charon's kernel-libipsec: the same code the UML
// scenarios use, with userspace ESP.
func TestPrivilegedSiteLibipsecOnHost(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: -short runs no lab")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: the lab site needs root (network namespaces, charon); CI runs this as root")
	}
	if _, err := os.Stat(swan.DefaultCharon); err != nil {
		t.Fatalf("%s missing: run `make lab-deps`", swan.DefaultCharon)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := topo.SweepStale("tl"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s, err := Start(ctx, Options{
		Gateways: 1, StaticVIPs: true, Libipsec: true, Prefix: topo.HostPrefix("tl"),
		Profile: swan.Profile{Encap: true}, Dir: dir, RunDir: dir + "/run",
		Log: slog.New(slog.NewTextHandler(tlog{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	up, err := s.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tunnel up in %v", up)
	p, err := s.Probe(ctx, traffic.ProbeConfig{Interval: 2 * time.Millisecond, Count: 300})
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := s.Capture.Report()
	t.Logf("probes %+v capture esp=%d ike=%d reused=%d", r, c.ESP, c.IKE, c.Reused)
	if r.Lost != 0 || c.ESP < 2*r.Received || c.Reused != 0 {
		t.Errorf("probes through libipsec: lost %d, %d ESP packets on the wire for %d echoes, %d reused", r.Lost, c.ESP, r.Received, c.Reused)
	}
	sas, err := s.Client.ChildSAs(ctx)
	if err != nil || len(sas) != 1 || !sas[0].Encap {
		t.Errorf("client CHILD_SAs %+v (%v), want one UDP-encapsulated", sas, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
