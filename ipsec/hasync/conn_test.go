package hasync

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// charonEnd stands in for charon's ha socket in these tests: a UDP socket
// on loopback, connected to the Conn the way the plugin connects to its
// `remote`.
func charonEnd(t *testing.T, peer netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, net.UDPAddrFromAddrPort(peer))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// freePort finds a free UDP port on 127.0.0.1.
func freePort(t *testing.T) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// The captured datagrams go from "charon" to the Conn and come out decoded
// in order; a malformed one is reported and skipped; a stranger's
// datagram never arrives; Send reaches charon in order; ctx ends Receive.
func TestConnCarriesTheChannelBothWays(t *testing.T) {
	charonAddr := freePort(t)
	conn, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), charonAddr, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	charon, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(charonAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer charon.Close()
	stranger := charonEnd(t, conn.LocalAddr())

	capture := loadCapture(t)
	var (
		mu   sync.Mutex
		got  []*Message
		bads [][]byte
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- conn.Receive(ctx, func(m *Message) {
			mu.Lock()
			got = append(got, m)
			mu.Unlock()
		}, func(b []byte, err error) {
			mu.Lock()
			bads = append(bads, b)
			mu.Unlock()
		})
	}()
	if _, err := stranger.Write(capture[1].Raw); err != nil {
		t.Fatal(err)
	}
	to := net.UDPAddrFromAddrPort(conn.LocalAddr())
	for i, m := range capture {
		if i == 3 {
			if _, err := charon.WriteToUDP([]byte{Version, byte(IKEAdd), byte(AttrIKEID), 2}, to); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := charon.WriteToUDP(m.Raw, to); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= len(capture) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d datagrams", n, len(capture))
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	for i, m := range got {
		if !bytes.Equal(m.Raw, capture[i].Raw) {
			t.Fatalf("datagram %d arrived out of order or altered (%s, want %s)", i, m.Type, capture[i].Type)
		}
	}
	if len(got) != len(capture) || len(bads) != 1 {
		t.Fatalf("received %d datagrams (want %d: the stranger's must not arrive) and %d bad ones (want 1)", len(got), len(capture), len(bads))
	}
	mu.Unlock()

	out := [][]byte{capture[1].Raw, capture[2].Raw, capture[3].Raw}
	if err := conn.Send(context.Background(), out, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, maxDatagram)
	for i, want := range out {
		_ = charon.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := charon.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("charon reading datagram %d: %v", i, err)
		}
		if from.AddrPort() != conn.LocalAddr() || !bytes.Equal(buf[:n], want) {
			t.Fatalf("datagram %d: from %v, %d bytes; want from %v, the sent one", i, from, n, conn.LocalAddr())
		}
	}

	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Receive ended with %v, want the context's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Receive did not end with its context")
	}
	sctx, scancel := context.WithCancel(context.Background())
	scancel()
	if err := conn.Send(sctx, out, time.Millisecond); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send with an ended context: %v", err)
	}
}

func TestListenNamesWhatIsMissing(t *testing.T) {
	if _, err := Listen(netip.AddrPort{}, netip.MustParseAddrPort("127.0.0.1:4510"), 0); err == nil {
		t.Fatal("Listen without a local address succeeded")
	}
}
