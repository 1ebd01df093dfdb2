//go:build linux

package linux

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// respond serves the owner protocol until Close closes the socket.
func (p *Provider) respond() {
	buf := make([]byte, 512)
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Error("owner protocol responder stopped", "err", err)
			}
			return
		}
		m, err := parseMessage(buf[:n])
		if err != nil {
			p.log.Debug("ignoring an owner protocol datagram", "from", from.String(), "err", err)
			continue
		}
		if reply, ok := p.answer(m); ok {
			if _, err := p.conn.WriteToUDPAddrPort(reply.encode(), from); err != nil {
				p.log.Debug("answering the owner protocol", "to", from.String(), "err", err)
			}
		}
	}
}

// answer handles one request. A YIELD with a higher term than this node
// holds the VIP under removes the VIP here: the claimer has already added
// and announced it.
func (p *Provider) answer(m message) (message, bool) {
	rec := p.record(m.vip)
	holder := message{kind: msgHolder, vip: m.vip, node: p.node, term: rec.Term}
	held := rec.Held && rec.Node == p.node
	if held {
		if ok, err := p.present(m.vip); err != nil || !ok {
			held = false
		}
	}
	switch m.kind {
	case msgQuery:
		if !held {
			return message{kind: msgNone, vip: m.vip}, true
		}
		return holder, true
	case msgYield:
		if !held {
			if m.term > rec.Term {
				_ = p.setRecord(m.vip, record{Node: m.node, Term: m.term})
			}
			return message{kind: msgNone, vip: m.vip}, true
		}
		if m.term <= rec.Term {
			return holder, true
		}
		bits := 32
		if m.vip.Is6() {
			bits = 128
		}
		pfx, err := p.heldPrefix(m.vip, bits)
		if err == nil {
			err = p.drop(pfx, record{Node: m.node, Term: m.term})
		}
		if err != nil {
			p.log.Error("yielding the VIP failed", "vip", m.vip.String(), "to", m.node, "term", m.term, "err", err)
			return holder, true
		}
		p.log.Info("vip yielded", "vip", m.vip.String(), "to", m.node, "term", m.term)
		return message{kind: msgYielded, vip: m.vip, node: m.node, term: m.term}, true
	}
	return message{}, false
}

// heldPrefix finds the prefix length vip has on the interface.
func (p *Provider) heldPrefix(vip netip.Addr, fallback int) (netip.Prefix, error) {
	link, err := p.nl.LinkByIndex(p.ifindex)
	if err != nil {
		return netip.Prefix{}, err
	}
	addrs, err := p.nl.AddrList(link, family(vip))
	if err != nil {
		return netip.Prefix{}, err
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == vip {
			ones, _ := a.Mask.Size()
			return netip.PrefixFrom(vip, ones), nil
		}
	}
	return netip.PrefixFrom(vip, fallback), nil
}

// exchange sends req to dst a few times within ProbeTimeout and returns
// the first reply about the same VIP that accept takes, with its source.
func (p *Provider) exchange(ctx context.Context, dst netip.AddrPort, req message, accept func(message) bool) (message, netip.AddrPort, error) {
	var conn *net.UDPConn
	err := p.inNetns(func() error {
		var err error
		conn, err = net.ListenUDP("udp", nil)
		return err
	})
	if err != nil {
		return message{}, netip.AddrPort{}, fmt.Errorf("opening a UDP socket for the owner protocol: %w", err)
	}
	defer conn.Close()
	deadline := time.Now().Add(p.cfg.probeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()
	// Three sends spread over the timeout: the first may wait on ARP.
	resend := p.cfg.probeTimeout / 3
	buf := make([]byte, 512)
	for next := time.Now(); ; {
		if now := time.Now(); !now.Before(next) {
			if _, err := conn.WriteToUDPAddrPort(req.encode(), dst); err != nil {
				return message{}, netip.AddrPort{}, fmt.Errorf("sending %s to %s: %w", req.kind, dst, err)
			}
			next = now.Add(resend)
		}
		_ = conn.SetReadDeadline(minTime(next, deadline))
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err == nil {
			if m, perr := parseMessage(buf[:n]); perr == nil && m.vip == req.vip && accept(m) {
				return m, from, nil
			}
			continue
		}
		if ctx.Err() != nil {
			return message{}, netip.AddrPort{}, ctx.Err()
		}
		if !time.Now().Before(deadline) {
			return message{}, netip.AddrPort{}, fmt.Errorf("no %s answer from %s within %v", req.kind, dst, p.cfg.probeTimeout)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// query asks the VIP itself who holds it.
func (p *Provider) query(ctx context.Context, vip netip.Addr) (message, netip.AddrPort, bool) {
	dst := netip.AddrPortFrom(vip, uint16(p.cfg.OwnerPort))
	m, from, err := p.exchange(ctx, dst, message{kind: msgQuery, vip: vip}, func(m message) bool {
		return m.kind == msgHolder || m.kind == msgNone
	})
	if err != nil {
		p.log.Debug("owner query unanswered", "vip", vip.String(), "err", err)
		return message{}, netip.AddrPort{}, false
	}
	return m, from, true
}

// yield tells the previous holder at addr to drop vip.
func (p *Provider) yield(ctx context.Context, addr netip.AddrPort, vip netip.Addr, term uint64) error {
	if addr.Addr().Unmap() == vip {
		return fmt.Errorf("the holder answered from the VIP itself, no other address to reach it at")
	}
	m, _, err := p.exchange(ctx, addr, message{kind: msgYield, vip: vip, node: p.node, term: term}, func(m message) bool {
		return m.kind == msgYielded || m.kind == msgHolder || m.kind == msgNone
	})
	if err != nil {
		return err
	}
	if m.kind == msgHolder && m.term >= term {
		return fmt.Errorf("%s refused to yield: it holds the VIP at term %d", m.node, m.term)
	}
	return nil
}
