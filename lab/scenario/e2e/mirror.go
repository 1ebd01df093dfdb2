package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/handoffvpn/handoff/lab/topo"
)

// innerMirror keeps the inside VIP (198.18.1.1, the protected host's next
// hop) on whichever gateway holds the outside VIP.
//
// It stands in for a second provider resource: the linux provider holds
// VIPs on one interface per node, and a gateway's two VIPs live on two
// segments (out0 and in0). The agent moves the outside VIP; this mirror
// follows it on netlink address events, adding the inside VIP (with
// gratuitous ARP) when the outside one appears and removing it when the
// outside one goes (fencing). It reacts within a millisecond, and records
// when each gateway gained the outside VIP.
type innerMirror struct {
	log  *slog.Logger
	done chan struct{}
	wg   sync.WaitGroup

	gains

	mu   sync.Mutex // guards the following fields
	lost map[string][]time.Time
	errs []error
}

func startMirror(gws []*topo.Node, log *slog.Logger) (*innerMirror, error) {
	m := &innerMirror{log: log, done: make(chan struct{}), lost: map[string][]time.Time{}}
	for _, gw := range gws {
		ch := make(chan netlink.AddrUpdate, 64)
		err := gw.Do(func() error {
			return netlink.AddrSubscribeWithOptions(ch, m.done, netlink.AddrSubscribeOptions{ListExisting: true})
		})
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("subscribing to address events of %s: %w", gw.Name, err)
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.follow(gw, ch)
		}()
	}
	return m, nil
}

func (m *innerMirror) follow(gw *topo.Node, ch <-chan netlink.AddrUpdate) {
	outer := netip.MustParseAddr(topo.VIPOuter)
	inner := netip.MustParsePrefix(topo.VIPInner + "/24")
	for u := range ch {
		a, ok := netip.AddrFromSlice(u.LinkAddress.IP)
		if !ok || a.Unmap() != outer {
			continue
		}
		now := time.Now()
		var err error
		if u.NewAddr {
			err = gw.AddAddr(topo.InnerIf, inner)
			if errors.Is(err, unix.EEXIST) {
				err = nil
			}
			if err == nil {
				err = garp(gw, topo.InnerIf, inner.Addr())
			}
		} else {
			err = gw.DelAddr(topo.InnerIf, inner)
			if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ENOENT) {
				err = nil
			}
		}
		if u.NewAddr {
			m.add(gw.Name, now)
		}
		m.mu.Lock()
		if !u.NewAddr {
			m.lost[gw.Name] = append(m.lost[gw.Name], now)
		}
		if err != nil {
			m.errs = append(m.errs, err)
		}
		m.mu.Unlock()
		m.log.Info("inside VIP follows the outside VIP", "gateway", gw.Name, "added", u.NewAddr, "err", err)
	}
}

// gains records when each gateway started to get the VIP's traffic.
type gains struct {
	mu sync.Mutex // guards at
	at map[string][]time.Time
}

func (g *gains) add(gw string, t time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.at == nil {
		g.at = map[string][]time.Time{}
	}
	g.at[gw] = append(g.at[gw], t)
}

// GainedAfter is the first time after t that gw got the VIP's traffic.
func (g *gains) GainedAfter(gw string, t time.Time) (time.Time, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, at := range g.at[gw] {
		if at.After(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

// Err reports the mirror's failures.
func (m *innerMirror) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return errors.Join(m.errs...)
}

// Close stops following. Safe twice.
func (m *innerMirror) Close() {
	select {
	case <-m.done:
	default:
		close(m.done)
	}
	m.wg.Wait()
}

// garp announces ip at dev's MAC with a gratuitous ARP request and reply,
// sent from n's namespace.
func garp(n *topo.Node, dev string, ip netip.Addr) error {
	return n.Do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return fmt.Errorf("finding %s: %w", dev, err)
		}
		proto := htons(unix.ETH_P_ARP)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		defer unix.Close(fd)
		bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		to := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index, Halen: 6}
		copy(to.Addr[:], bcast)
		ip4 := ip.As4()
		for _, op := range []byte{1, 2} {
			target := []byte{0, 0, 0, 0, 0, 0}
			if op == 2 {
				target = bcast
			}
			var f []byte
			f = append(f, bcast...)
			f = append(f, ifi.HardwareAddr...)
			f = append(f, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, op)
			f = append(f, ifi.HardwareAddr...)
			f = append(f, ip4[:]...)
			f = append(f, target...)
			f = append(f, ip4[:]...)
			if err := unix.Sendto(fd, f, 0, to); err != nil {
				return fmt.Errorf("sending gratuitous ARP for %s on %s: %w", ip, dev, err)
			}
		}
		return nil
	})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// steering is what sends the client's and the protected host's packets to
// a gateway: the linux provider's VIPs (with the inside one mirrored), or
// the emulated cloud's fabric.
type steering interface {
	// holds: gateway i gets both the client's and the protected host's
	// traffic.
	holds(i int) (bool, error)
	// holdsVIP: gateway i gets the client's traffic.
	holdsVIP(i int) (bool, error)
	// GainedAfter is the first time after t that gw got the client's
	// traffic.
	GainedAfter(gw string, t time.Time) (time.Time, bool)
	Err() error
}

// linuxSteering reads the VIPs off the gateways' interfaces.
type linuxSteering struct {
	*innerMirror
	gws []*topo.Node
}

func (l linuxSteering) holdsVIP(i int) (bool, error) {
	return l.gws[i].HasAddr(netip.MustParseAddr(topo.VIPOuter))
}

func (l linuxSteering) holds(i int) (bool, error) {
	outer, err := l.holdsVIP(i)
	if err != nil || !outer {
		return false, err
	}
	return l.gws[i].HasAddr(netip.MustParseAddr(topo.VIPInner))
}
