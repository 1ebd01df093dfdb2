package topo_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/lab/topo"
	"github.com/handoffvpn/handoff/lab/traffic"
)

func TestHostPrefixParses(t *testing.T) {
	p := topo.HostPrefix("tt")
	if p != fmt.Sprintf("tt%d-", os.Getpid()) {
		t.Errorf("HostPrefix = %q", p)
	}
}

func TestAddressPlan(t *testing.T) {
	for i := 1; i <= topo.MaxGateways; i++ {
		out, in := topo.GatewayOuter(i), topo.GatewayInner(i)
		if !netip.MustParsePrefix(topo.OuterNet).Contains(out) || !netip.MustParsePrefix(topo.InsideNet).Contains(in) {
			t.Errorf("gateway %d: %s / %s outside the plan", i, out, in)
		}
		if out.String() == topo.VIPOuter || in.String() == topo.VIPInner || in.String() == topo.InsideHost {
			t.Errorf("gateway %d collides with a VIP or the inside host", i)
		}
	}
	if _, err := topo.Build(context.Background(), topo.Spec{Gateways: topo.MaxGateways + 1}); err == nil {
		t.Error("built more gateways than the plan has addresses for")
	}
}

// TestPrivilegedTopoOnHost builds the lab topology on the host kernel (the
// hostlab case: no dummy links, so the client's inner address goes on lo)
// and sends plaintext probes along the path the tunnel takes: client →
// VIP on gw1 → inside host and back.
func TestPrivilegedTopoOnHost(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: -short runs no lab")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: building network namespaces needs root; CI runs this as root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := topo.SweepStale("tt"); err != nil {
		t.Fatal(err)
	}
	prefix := topo.HostPrefix("tt")
	tp, err := topo.Build(ctx, topo.Spec{Prefix: prefix, Gateways: 2, StaticVIPs: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	for _, ns := range tp.Namespaces() {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			t.Errorf("namespace %s: %v", ns, err)
		}
	}
	t.Logf("client inner address on %s", tp.Client.InnerDev)

	var echo *traffic.Echoer
	if err := tp.Inside.Do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(topo.InsideHost), Port: 9000})
		echo = traffic.NewEchoer(c)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	var capt *traffic.Capture
	if err := tp.Cloud.Do(func() (err error) {
		capt, err = traffic.OpenCapture("client-o")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer capt.Close()

	probe := func(count int) traffic.ProbeReport {
		t.Helper()
		var conn *net.UDPConn
		if err := tp.Client.Do(func() (err error) {
			conn, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(topo.ClientInner)},
				&net.UDPAddr{IP: net.ParseIP(topo.InsideHost), Port: 9000})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		p, err := traffic.StartProbe(ctx, conn, traffic.ProbeConfig{Interval: time.Millisecond, Count: count, Drain: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		r, err := p.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// The first probe may wait for ARP; give the path a moment.
	if r := probe(200); r.Lost > 1 || r.Received < 199 {
		t.Fatalf("plaintext path client → gw1 → inside: %+v", r)
	}

	// UDP-encapsulated ESP headers from the client (nobody needs to
	// listen: the capture sits on the client's bridge port): one sequence
	// number sent twice with another payload (a reuse), and one packet
	// sent again as it was (a duplicate).
	if err := tp.Client.Do(func() error {
		// Unconnected: gw1's port unreachable must not fail the next write.
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(topo.ClientOuter), Port: 4500})
		if err != nil {
			return err
		}
		defer c.Close()
		for i, seq := range []uint32{1, 2, 2, 1} {
			b := make([]byte, 40)
			binary.BigEndian.PutUint32(b, 0xc1000001)
			binary.BigEndian.PutUint32(b[4:], seq)
			if i == 2 {
				b[8] = 0x22
			}
			if _, err := c.WriteToUDP(b, &net.UDPAddr{IP: topo.GatewayOuter(1).AsSlice(), Port: 4500}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for capt.Report().ESP < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r := capt.Report(); r.ESP != 4 || r.Reused != 1 || r.Duplicates != 1 || len(r.SPIs) != 1 || !r.SPIs[0].UDPEncap {
		t.Errorf("capture: %+v", r)
	}

	// A dead gw1 (links down) takes the path with it.
	if err := tp.Gateways[0].LinksDown(); err != nil {
		t.Fatal(err)
	}
	if r := probe(20); r.Received != 0 {
		t.Errorf("probes crossed a gateway whose links are down: %+v", r)
	}

	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tp.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for _, ns := range tp.Namespaces() {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("namespace %s left behind", ns)
		}
	}
}
