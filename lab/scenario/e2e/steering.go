package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/handoffvpn/handoff/lab/topo"
)

// vipWatch records, from netlink address events, when each gateway gained
// the outside VIP. The agents move both VIPs themselves (the linux
// provider with the inside one on in0, "dev in0"); until 2026-12-02 this
// type moved the inside VIP after the outside one, and its lag (up to
// 200 ms in the starved guest, with neither gateway holding the inside
// VIP) was the probes a planned drain lost.
type vipWatch struct {
	log  *slog.Logger
	done chan struct{}
	wg   sync.WaitGroup

	gains
}

func startWatch(gws []*topo.Node, log *slog.Logger) (*vipWatch, error) {
	m := &vipWatch{log: log, done: make(chan struct{})}
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

func (m *vipWatch) follow(gw *topo.Node, ch <-chan netlink.AddrUpdate) {
	outer := netip.MustParseAddr(topo.VIPOuter)
	for u := range ch {
		a, ok := netip.AddrFromSlice(u.LinkAddress.IP)
		if !ok || a.Unmap() != outer {
			continue
		}
		if u.NewAddr {
			m.add(gw.Name, time.Now())
		}
		m.log.Info("outside VIP moved", "gateway", gw.Name, "added", u.NewAddr)
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

// Err is nil: watching has no failures to report once subscribed.
func (m *vipWatch) Err() error { return nil }

// Close stops watching. Safe twice.
func (m *vipWatch) Close() {
	select {
	case <-m.done:
	default:
		close(m.done)
	}
	m.wg.Wait()
}

// steering is what sends the client's and the protected host's packets to
// a gateway: the linux provider's VIPs (outside and inside), or
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
	*vipWatch
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
