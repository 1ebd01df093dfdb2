package egress_test

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/handoffvpn/handoff/ipsec/egress"
	"github.com/handoffvpn/handoff/lab/hostlab"
)

// A fenced namespace sends IKE (zero marker) and NAT keepalives on port
// 4500 but no ESP and no ESP in UDP; lifted, everything passes again; a
// second Block replaces the table, a second Lift is no error.
func TestPrivilegedFenceDropsOnlyESP(t *testing.T) {
	lab := hostlab.New(t)
	gw, peer := lab.Netns("gw"), lab.Netns("peer")
	lab.Veth(gw, "out0", "198.18.0.1/24", peer, "out0", "198.18.0.2/24")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	udpIn, err := peer.ListenPacket(ctx, "udp4", "198.18.0.2:4500")
	if err != nil {
		t.Fatal(err)
	}
	defer udpIn.Close()
	espIn, err := peer.ListenPacket(ctx, "ip4:50", "198.18.0.2")
	if err != nil {
		t.Fatal(err)
	}
	defer espIn.Close()
	udpOut, err := gw.ListenPacket(ctx, "udp4", "198.18.0.1:4500")
	if err != nil {
		t.Fatal(err)
	}
	defer udpOut.Close()
	espOut, err := gw.ListenPacket(ctx, "ip4:50", "198.18.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer espOut.Close()

	var fence *egress.Fence
	var nsFD netns.NsHandle
	if err := gw.Do(func() error {
		var err error
		nsFD, err = netns.Get()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer nsFD.Close()
	fence = egress.New(int(nsFD))

	peerUDP := &net.UDPAddr{IP: net.IPv4(198, 18, 0, 2), Port: 4500}
	peerIP := &net.IPAddr{IP: net.IPv4(198, 18, 0, 2)}
	ike := append([]byte{0, 0, 0, 0}, make([]byte, 28)...)
	espInUDP := append([]byte{0xc0, 0xff, 0xee, 0x01}, make([]byte, 28)...)
	esp := append([]byte{0xc0, 0xff, 0xee, 0x02}, make([]byte, 28)...)
	keepalive := []byte{0xff}

	// arrives sends one datagram of each kind and reports which arrived.
	arrives := func(step string) map[string]bool {
		t.Helper()
		for _, p := range []struct {
			c    net.PacketConn
			b    []byte
			addr net.Addr
		}{{udpOut, ike, peerUDP}, {udpOut, espInUDP, peerUDP}, {udpOut, keepalive, peerUDP}, {espOut, esp, peerIP}} {
			// A locally sent packet the fence drops fails with EPERM.
			if _, err := p.c.WriteTo(p.b, p.addr); err != nil && !errors.Is(err, syscall.EPERM) {
				t.Fatalf("%s: sending: %v", step, err)
			}
		}
		got := map[string]bool{}
		buf := make([]byte, 2048)
		for _, in := range []net.PacketConn{udpIn, espIn} {
			for {
				_ = in.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				n, _, err := in.ReadFrom(buf)
				if err != nil {
					break
				}
				switch b := buf[:n]; {
				case in == espIn:
					got["esp"] = true // the raw socket's payload starts at the IP header
				case n == 1:
					got["keepalive"] = true
				case b[0] == 0:
					got["ike"] = true
				default:
					got["esp-in-udp"] = true
				}
			}
		}
		return got
	}

	if got := arrives("unfenced"); !got["ike"] || !got["esp-in-udp"] || !got["keepalive"] || !got["esp"] {
		t.Fatalf("unfenced: arrived %v, want all four", got)
	}
	for i := range 2 {
		if err := fence.Block(); err != nil {
			t.Fatal(err)
		}
		if up, err := fence.Blocked(); err != nil || !up {
			t.Fatalf("block %d: blocked %v, %v", i, up, err)
		}
	}
	if got := arrives("fenced"); !got["ike"] || !got["keepalive"] || got["esp-in-udp"] || got["esp"] {
		t.Fatalf("fenced: arrived %v, want IKE and the keepalive only", got)
	}
	for range 2 {
		if err := fence.Lift(); err != nil {
			t.Fatal(err)
		}
	}
	if got := arrives("lifted"); !got["ike"] || !got["esp-in-udp"] || !got["keepalive"] || !got["esp"] {
		t.Fatalf("lifted: arrived %v, want all four", got)
	}
}
