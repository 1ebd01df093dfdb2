// Package tunnel checks that the IPsec data plane carries traffic: an echo
// (ICMP or UDP) to an address behind the tunnel, sent from an address in
// the protected range so the IPsec policy applies to it, and CHILD_SA
// counters read over VICI that must keep moving while traffic is expected.
package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// ErrNoEcho: fewer echo replies than needed came back in time.
var ErrNoEcho = errors.New("no echo through the tunnel")

// Method is how Echo probes.
type Method uint8

const (
	// ICMP echo over a raw socket (needs CAP_NET_RAW, which the agent has
	// anyway to manage XFRM).
	ICMP Method = iota
	// UDP sends datagrams to an echo service (RFC 862) behind the tunnel.
	UDP
)

// EchoConfig configures an Echo.
type EchoConfig struct {
	// Target is the address behind the tunnel.
	Target netip.Addr
	// Source is a local address inside the policy's local traffic
	// selector: binding to it is what makes the packets match the IPsec
	// policy instead of leaving in the clear (or not at all).
	Source netip.Addr
	Method Method
	// Port is the UDP echo port (default 7).
	Port uint16
	// Count is how many requests one run sends (default 3), Gap the time
	// between them (default 50 ms) and Need how many replies pass
	// (default 1).
	Count, Need int
	Gap         time.Duration
	// ListenPacket opens the socket (net.ListenConfig by default); tests
	// pass one that opens it inside a network namespace.
	ListenPacket func(ctx context.Context, network, address string) (net.PacketConn, error)
}

// Echo is the tunnel reachability check.
type Echo struct {
	cfg  EchoConfig
	name string
}

// NewEcho validates cfg and fills its defaults.
func NewEcho(cfg EchoConfig) (*Echo, error) {
	if !cfg.Target.Is4() || !cfg.Source.Is4() {
		return nil, fmt.Errorf("creating tunnel echo: target %v and source %v must be IPv4 addresses", cfg.Target, cfg.Source)
	}
	if cfg.Count == 0 {
		cfg.Count = 3
	}
	if cfg.Need == 0 {
		cfg.Need = 1
	}
	if cfg.Gap == 0 {
		cfg.Gap = 50 * time.Millisecond
	}
	if cfg.Port == 0 {
		cfg.Port = 7
	}
	if cfg.Count < 1 || cfg.Need < 1 || cfg.Need > cfg.Count || cfg.Count > 100 || cfg.Gap < 0 {
		return nil, fmt.Errorf("creating tunnel echo: count %d, need %d, gap %v: want 1 <= need <= count <= 100", cfg.Count, cfg.Need, cfg.Gap)
	}
	if cfg.Method != ICMP && cfg.Method != UDP {
		return nil, fmt.Errorf("creating tunnel echo: unknown method %d", cfg.Method)
	}
	if cfg.ListenPacket == nil {
		cfg.ListenPacket = (&net.ListenConfig{}).ListenPacket
	}
	kind := "icmp"
	if cfg.Method == UDP {
		kind = "udp"
	}
	return &Echo{cfg: cfg, name: fmt.Sprintf("tunnel-%s:%v->%v", kind, cfg.Source, cfg.Target)}, nil
}

// Name is "tunnel-icmp:SOURCE->TARGET" (or tunnel-udp).
func (e *Echo) Name() string { return e.name }

// Run sends Count requests Gap apart and passes as soon as Need replies
// came back; it fails when ctx ends first.
func (e *Echo) Run(ctx context.Context) error {
	network, laddr, raddr := "ip4:icmp", e.cfg.Source.String(), net.Addr(&net.IPAddr{IP: e.cfg.Target.AsSlice()})
	if e.cfg.Method == UDP {
		network, laddr = "udp4", netip.AddrPortFrom(e.cfg.Source, 0).String()
		raddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(e.cfg.Target, e.cfg.Port))
	}
	conn, err := e.cfg.ListenPacket(ctx, network, laddr)
	if err != nil {
		return fmt.Errorf("echo %v->%v: opening %s socket: %w", e.cfg.Source, e.cfg.Target, network, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var token [8]byte
	if _, err := rand.Read(token[:]); err != nil {
		return fmt.Errorf("echo: reading a random token: %w", err)
	}
	id := binary.BigEndian.Uint16(token[:2])

	// The sender is owned by Run: it ends when its loop is done or the
	// socket closes, and Run waits for it.
	sendErr := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		sendErr <- e.send(conn, raddr, id, token[:], done)
	}()
	defer func() {
		close(done)
		<-sendErr
	}()

	got := map[int]bool{}
	buf := make([]byte, 1500)
	for len(got) < e.cfg.Need {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("echo %v->%v: %w: %d of %d replies (needed %d): %w", e.cfg.Source, e.cfg.Target, ErrNoEcho, len(got), e.cfg.Count, e.cfg.Need, context.Cause(ctx))
			}
			return fmt.Errorf("echo %v->%v: reading: %w", e.cfg.Source, e.cfg.Target, err)
		}
		if seq, ok := e.match(buf[:n], from, id, token[:]); ok {
			got[seq] = true
		}
	}
	return nil
}

func (e *Echo) send(conn net.PacketConn, to net.Addr, id uint16, token []byte, done <-chan struct{}) error {
	for seq := range e.cfg.Count {
		if seq > 0 {
			t := time.NewTimer(e.cfg.Gap)
			select {
			case <-done:
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		if _, err := conn.WriteTo(e.request(id, seq, token), to); err != nil {
			return err
		}
	}
	return nil
}

// request is an ICMP echo request, or for UDP the token and sequence.
func (e *Echo) request(id uint16, seq int, token []byte) []byte {
	payload := binary.BigEndian.AppendUint16(append([]byte(nil), token...), uint16(seq))
	if e.cfg.Method == UDP {
		return payload
	}
	m := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: int(id), Seq: seq, Data: payload}}
	b, _ := m.Marshal(nil) // only fails for body types it does not know
	return b
}

// match reports whether b is a reply to one of this run's requests and
// which. Other traffic on the socket (a raw ICMP socket sees every ICMP
// packet) is ignored.
func (e *Echo) match(b []byte, from net.Addr, id uint16, token []byte) (int, bool) {
	var payload []byte
	switch e.cfg.Method {
	case UDP:
		ua, ok := from.(*net.UDPAddr)
		if !ok || ua.AddrPort().Addr().Unmap() != e.cfg.Target {
			return 0, false
		}
		payload = b
	default:
		ia, ok := from.(*net.IPAddr)
		if !ok {
			return 0, false
		}
		if a, ok := netip.AddrFromSlice(ia.IP); !ok || a.Unmap() != e.cfg.Target {
			return 0, false
		}
		m, err := icmp.ParseMessage(1, b)
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			return 0, false
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || uint16(echo.ID) != id {
			return 0, false
		}
		payload = echo.Data
	}
	if len(payload) != len(token)+2 || !bytes.Equal(payload[:len(token)], token) {
		return 0, false
	}
	seq := int(binary.BigEndian.Uint16(payload[len(token):]))
	return seq, seq < e.cfg.Count
}
