//go:build linux

package linux

import (
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/handoffvpn/handoff/providers"
)

var (
	_ providers.GoneAware = (*Provider)(nil)
	_ providers.GoneAware = (*Set)(nil)
)

// userHZ is the unit of the kernel's neighbour cache times (clock_t ticks
// of USER_HZ, 100 on every architecture Go runs Linux on).
const userHZ = 100

// KnownGone records the caller's declaration for the claims at term (see
// providers.GoneAware); one for a lower term than the one recorded is
// ignored, so a late caller cannot undo a newer declaration.
func (p *Provider) KnownGone(term uint64, previous string, gone []string) {
	d := newGoneDecl(term, previous, gone)
	p.mu.Lock()
	defer p.mu.Unlock()
	if term >= p.gone.term {
		p.gone = d
	}
}

// KnownGone passes the declaration to every interface's provider.
func (s *Set) KnownGone(term uint64, previous string, gone []string) {
	for _, p := range s.provs {
		p.KnownGone(term, previous, gone)
	}
}

// holderGone says why the claim at term may take vip without the owner
// query (see skipQuery), or "" when it must ask.
func (p *Provider) holderGone(vip netip.Addr, term uint64) string {
	p.mu.Lock()
	d := p.gone
	p.mu.Unlock()
	return skipQuery(p.node, term, d, p.neighEntry(vip), p.cfg.peers, p.cfg.probeTimeout)
}

// neighEntry reads the kernel's neighbour entry for vip on the interface.
// An error reads as no entry: the claim then relies on the declaration
// alone, or asks, as it always did.
func (p *Provider) neighEntry(vip netip.Addr) neighEntry {
	neighs, err := p.nl.NeighList(p.ifindex, family(vip))
	if err != nil {
		p.log.Debug("reading the neighbour table", "vip", vip.String(), "err", err)
		return neighEntry{}
	}
	for _, n := range neighs {
		if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == vip {
			return neighEntryOf(n)
		}
	}
	return neighEntry{}
}

func neighEntryOf(n netlink.Neigh) neighEntry {
	e := neighEntry{age: time.Duration(n.Updated) * time.Second / userHZ}
	const valid = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT
	switch {
	case n.State&netlink.NUD_FAILED != 0:
		e.state = neighFailed
	case n.State&netlink.NUD_INCOMPLETE != 0:
		e.state = neighIncomplete
	case n.State&valid != 0 && len(n.HardwareAddr) == 6:
		e.state, e.mac = neighValid, n.HardwareAddr.String()
	}
	return e
}
