//go:build linux

package linux

import (
	"context"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// announcer repeats a VIP's announcement for a while after a claim, so a
// neighbor that missed one frame (or a switch that had not learned the
// port yet) still moves to this node.
type announcer struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// announce starts (or restarts) the announcement rounds of vip.
func (p *Provider) announce(vip netip.Addr) {
	frames, err := announcements(p.mac, vip)
	if err != nil {
		p.log.Error("cannot announce the VIP", "vip", vip.String(), "err", err)
		return
	}
	p.stopAnnounce(vip)
	ctx, cancel := context.WithCancel(p.ctx)
	a := &announcer{cancel: cancel, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		cancel()
		return
	}
	p.announcers[vip.String()] = a
	// Added under mu while not closed: Close's Wait never races an Add.
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		defer close(a.done)
		defer cancel()
		t := time.NewTicker(p.cfg.announceInterval)
		defer t.Stop()
		for round := 0; round < p.cfg.AnnounceCount; round++ {
			if round > 0 {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
			for _, f := range frames {
				if err := p.sendFrame(f); err != nil {
					p.log.Warn("sending a VIP announcement", "vip", vip.String(), "round", round, "err", err)
				}
			}
		}
		p.mu.Lock()
		if p.announcers[vip.String()] == a {
			delete(p.announcers, vip.String())
		}
		p.mu.Unlock()
	}()
}

// stopAnnounce ends vip's announcements and waits for them to stop.
func (p *Provider) stopAnnounce(vip netip.Addr) {
	p.mu.Lock()
	a := p.announcers[vip.String()]
	delete(p.announcers, vip.String())
	p.mu.Unlock()
	if a != nil {
		a.cancel()
		<-a.done
	}
}

func (p *Provider) sendFrame(f []byte) error {
	var dst [8]byte
	copy(dst[:], f[:6])
	return unix.Sendto(p.raw, f, 0, &unix.SockaddrLinklayer{Ifindex: p.ifindex, Halen: 6, Addr: dst})
}
