//go:build linux

package linux

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/handoffvpn/handoff/providers"
)

// Provider holds VIPs on one interface of one node.
type Provider struct {
	node  string
	cfg   resolved
	log   *slog.Logger
	state stateFile

	ns      netns.NsHandle // -1 (none) for the agent's own namespace
	nl      *netlink.Handle
	ifindex int
	mac     net.HardwareAddr
	raw     int          // AF_PACKET socket bound to the interface
	conn    *net.UDPConn // owner protocol responder

	ctx    context.Context // ends at Close; parents the announcers
	cancel context.CancelFunc
	wg     sync.WaitGroup // the responder and the announcers

	mu         sync.Mutex // guards the following fields
	records    map[string]record
	announcers map[string]*announcer
	closed     bool
	gone       goneDecl // the caller's last KnownGone

	closeOnce sync.Once
	closeErr  error
}

var (
	_ providers.Provider = (*Provider)(nil)
	_ providers.Releaser = (*Provider)(nil)
)

// Factory builds the provider of node from its settings (Settings,
// *Settings or a decoded map); usable with providers.Registry.
func Factory(ctx context.Context, node string, settings any) (providers.Provider, error) {
	s, err := settingsFrom(settings)
	if err != nil {
		return nil, err
	}
	if len(s.Interfaces) > 0 {
		return NewSet(ctx, node, s)
	}
	return New(ctx, node, s)
}

// New opens the interface, the announcement socket and the owner protocol
// responder. Close stops them; it does not remove held VIPs (Release does).
func New(ctx context.Context, node string, s Settings) (*Provider, error) {
	if !nodeRE.MatchString(node) {
		return nil, fmt.Errorf("linux provider: node ID %q: want 1-64 of A-Z, a-z, 0-9, '_', '.', '-'", node)
	}
	cfg, err := s.resolve()
	if err != nil {
		return nil, err
	}
	if len(s.Interfaces) > 0 {
		return nil, fmt.Errorf("linux provider: VIPs on %d more interfaces: open them with NewSet (Factory does)", len(s.Interfaces))
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Provider{
		node: node, cfg: cfg, log: log.With("provider", "linux", "node", node, "interface", s.Interface),
		state: stateFile{path: filepath.Join(cfg.StateDir, "vips-"+s.Interface+".json")},
		ns:    netns.None(), raw: -1, announcers: map[string]*announcer{},
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if err := p.open(); err != nil {
		return nil, errors.Join(err, p.Close())
	}
	p.wg.Go(p.respond)
	return p, nil
}

func (p *Provider) open() error {
	var err error
	if p.records, err = p.state.load(); err != nil {
		return err
	}
	if p.cfg.Netns != "" {
		if strings.ContainsRune(p.cfg.Netns, '/') {
			p.ns, err = netns.GetFromPath(p.cfg.Netns)
		} else {
			p.ns, err = netns.GetFromName(p.cfg.Netns)
		}
		if err != nil {
			return fmt.Errorf("opening network namespace %s: %w", p.cfg.Netns, err)
		}
		// Only rtnetlink: asking for every family (the default) also opens
		// netfilter's, which fails on kernels without nfnetlink.
		p.nl, err = netlink.NewHandleAt(p.ns, unix.NETLINK_ROUTE)
	} else {
		p.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return fmt.Errorf("opening netlink: %w", err)
	}
	link, err := p.nl.LinkByName(p.cfg.Interface)
	if err != nil {
		return fmt.Errorf("finding interface %s: %w", p.cfg.Interface, err)
	}
	p.ifindex, p.mac = link.Attrs().Index, link.Attrs().HardwareAddr
	if len(p.mac) != 6 {
		return fmt.Errorf("interface %s has no Ethernet address (%v)", p.cfg.Interface, p.mac)
	}
	return p.inNetns(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening an AF_PACKET socket (needs CAP_NET_RAW): %w", err)
		}
		p.raw = fd
		// Protocol 0: the socket sends and never receives.
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: p.ifindex}); err != nil {
			return fmt.Errorf("binding the AF_PACKET socket to %s: %w", p.cfg.Interface, err)
		}
		// Bound to the interface: the owner query for a VIP arrives on the
		// VIP's segment, and one responder per interface (see Set) can
		// then share the port.
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, p.cfg.Interface)
			}); err != nil {
				return err
			}
			return serr
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp", fmt.Sprintf(":%d", p.cfg.OwnerPort))
		if err != nil {
			return fmt.Errorf("listening on UDP %d for the owner protocol: %w", p.cfg.OwnerPort, err)
		}
		p.conn = pc.(*net.UDPConn)
		return nil
	})
}

// inNetns runs fn with the calling thread in the provider's namespace, so
// sockets fn creates live there.
func (p *Provider) inNetns(fn func() error) error {
	if !p.ns.IsOpen() {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading the current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(p.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %s: %w", p.cfg.Netns, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with this goroutine rather
		// than serve others from the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("leaving network namespace %s: %w", p.cfg.Netns, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Close stops the announcers and the responder and closes the sockets; it
// is safe to call twice. Held VIPs stay on the interface.
func (p *Provider) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.cancel()
		var errs []error
		if p.conn != nil {
			errs = append(errs, p.conn.Close())
		}
		p.wg.Wait()
		if p.raw >= 0 {
			errs = append(errs, unix.Close(p.raw))
		}
		if p.nl != nil {
			p.nl.Close()
		}
		if p.ns.IsOpen() {
			errs = append(errs, p.ns.Close())
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// parseVIP reads a VIP resource ID of this provider's interface: the
// address with its prefix length, optionally followed by " dev IFACE" (the
// iproute2 and keepalived form), where IFACE must be this interface.
func (p *Provider) parseVIP(id string) (netip.Prefix, error) {
	vip, dev, err := splitDev(id)
	if err != nil {
		return netip.Prefix{}, err
	}
	if dev != "" && dev != p.cfg.Interface {
		return netip.Prefix{}, fmt.Errorf("VIP %q is on interface %s; this provider holds VIPs on %s (list %s under linux interfaces)", id, dev, p.cfg.Interface, dev)
	}
	return parseVIP(vip)
}

// splitDev splits "198.18.0.100/24 dev eth1" into the address part and the
// interface; an ID without " dev " names no interface.
func splitDev(id string) (vip, dev string, err error) {
	f := strings.Fields(id)
	switch {
	case len(f) == 1:
		return f[0], "", nil
	case len(f) == 3 && f[1] == "dev" && ifaceRE.MatchString(f[2]):
		return f[0], f[2], nil
	}
	return "", "", fmt.Errorf("VIP %q: want an address with its prefix length, optionally followed by \"dev\" and an interface name, e.g. \"198.18.0.100/24 dev eth1\"", id)
}

func parseVIP(id string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(id)
	if err != nil || pfx.Addr().Zone() != "" || pfx.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("VIP %q: want an address with its prefix length, e.g. 198.18.0.100/24", id)
	}
	return pfx, nil
}

func (p *Provider) netlinkAddr(pfx netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), pfx.Addr().BitLen())}}
	if pfx.Addr().Is6() {
		// No duplicate address detection: a tentative address can be
		// neither used nor announced, and moving it is the point. And
		// deprecated (preferred lifetime 0, valid forever): still bound
		// explicitly by charon and answered on, but never picked as the
		// source of other traffic, such as the owner protocol's replies,
		// which must come from the node's own address.
		a.Flags = unix.IFA_F_NODAD
		a.PreferedLft, a.ValidLft = 0, 0xffffffff
	}
	return a
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// present reports whether vip is assigned to the interface.
func (p *Provider) present(vip netip.Addr) (bool, error) {
	link, err := p.nl.LinkByIndex(p.ifindex)
	if err != nil {
		return false, fmt.Errorf("reading interface %s: %w", p.cfg.Interface, err)
	}
	addrs, err := p.nl.AddrList(link, family(vip))
	if err != nil {
		return false, fmt.Errorf("listing the addresses of %s: %w", p.cfg.Interface, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == vip {
			return true, nil
		}
	}
	return false, nil
}

func (p *Provider) addAddr(pfx netip.Prefix) error {
	link, err := p.nl.LinkByIndex(p.ifindex)
	if err != nil {
		return fmt.Errorf("reading interface %s: %w", p.cfg.Interface, err)
	}
	if err := p.nl.AddrReplace(link, p.netlinkAddr(pfx)); err != nil {
		return fmt.Errorf("adding %s to %s: %w", pfx, p.cfg.Interface, err)
	}
	return nil
}

func (p *Provider) delAddr(pfx netip.Prefix) error {
	link, err := p.nl.LinkByIndex(p.ifindex)
	if err != nil {
		return fmt.Errorf("reading interface %s: %w", p.cfg.Interface, err)
	}
	err = p.nl.AddrDel(link, p.netlinkAddr(pfx))
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing %s from %s: %w", pfx, p.cfg.Interface, err)
	}
	return nil
}

func (p *Provider) record(vip netip.Addr) record {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.records[vip.String()]
}

// setRecord stores rec for vip unless a higher term is already known, and
// persists the records.
func (p *Provider) setRecord(vip netip.Addr, rec record) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur, ok := p.records[vip.String()]; ok && cur.Term > rec.Term {
		return nil
	}
	p.records[vip.String()] = rec
	return p.state.save(p.records)
}

func staleTerm(node string, term uint64) error {
	return fmt.Errorf("%w: held by %q at term %d", providers.ErrStaleTerm, node, term)
}

// Claim adds every VIP to the interface (in parallel), announces it, and
// then tells the previous holder to drop it.
func (p *Provider) Claim(ctx context.Context, term uint64, rs []providers.Resource) error {
	yields, err := p.claimAll(ctx, term, rs)
	p.yieldAll(ctx, term, yields)
	return err
}

// pendingYield is a previous holder still to be told to drop a VIP that
// this node now holds and has announced.
type pendingYield struct {
	vip    netip.Addr
	holder string
	at     netip.AddrPort
}

// claimAll adds and announces every VIP (in parallel) and returns the
// previous holders to tell; a failure is a *providers.ClaimError.
func (p *Provider) claimAll(ctx context.Context, term uint64, rs []providers.Resource) ([]pendingYield, error) {
	checked, ce := p.checkAll(ctx, term, rs)
	yields, taken := p.takeAll(ctx, term, checked)
	ce.Failed = append(ce.Failed, taken.Failed...)
	ce.Moved = taken.Moved
	if len(ce.Failed) > 0 {
		return yields, &ce
	}
	return yields, nil
}

// vipClaim is a VIP whose claim passed its checks.
type vipClaim struct {
	r     providers.Resource
	pfx   netip.Prefix
	prev  *pendingYield // the holder that answered, to be told to yield
	start time.Time
}

// checkAll runs every VIP's checks in parallel (the term records and the
// owner query: the part that waits on the segment) and returns the ones
// that passed; the others are in the ClaimError's Failed.
func (p *Provider) checkAll(ctx context.Context, term uint64, rs []providers.Resource) ([]vipClaim, providers.ClaimError) {
	cs := make([]vipClaim, len(rs))
	errs := make([]error, len(rs))
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() { cs[i], errs[i] = p.check(ctx, term, r) })
	}
	wg.Wait()
	var (
		ce providers.ClaimError
		ok []vipClaim
	)
	for i, r := range rs {
		if errs[i] != nil {
			ce.Failed = append(ce.Failed, p.claimFailed(r, term, errs[i]))
			continue
		}
		ok = append(ok, cs[i])
	}
	return ok, ce
}

// takeAll adds and announces every checked VIP in parallel.
func (p *Provider) takeAll(ctx context.Context, term uint64, cs []vipClaim) ([]pendingYield, providers.ClaimError) {
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() { errs[i] = p.take(ctx, term, c) })
	}
	wg.Wait()
	var (
		ce     providers.ClaimError
		yields []pendingYield
	)
	for i, c := range cs {
		if errs[i] != nil {
			ce.Failed = append(ce.Failed, p.claimFailed(c.r, term, errs[i]))
			continue
		}
		ce.Moved = append(ce.Moved, c.r)
		if c.prev != nil {
			yields = append(yields, *c.prev)
		}
		p.log.Info("vip claimed", "resource", c.r.String(), "term", term, "took", time.Since(c.start))
	}
	return yields, ce
}

func (p *Provider) claimFailed(r providers.Resource, term uint64, err error) providers.ResourceError {
	p.log.Warn("vip not claimed", "resource", r.String(), "term", term, "err", err)
	return providers.ResourceError{Resource: r, Err: fmt.Errorf("claiming %s for %s at term %d: %w", r, p.node, term, err)}
}

// yieldAll tells the previous holders, in parallel, to drop the VIPs. One
// that does not answer keeps its VIP until it fences itself.
func (p *Provider) yieldAll(ctx context.Context, term uint64, ys []pendingYield) {
	var wg sync.WaitGroup
	for _, y := range ys {
		wg.Go(func() {
			if err := p.yield(ctx, y.at, y.vip, term); err != nil {
				p.log.Warn("previous holder did not yield; it keeps the VIP until it fences itself",
					"vip", y.vip.String(), "holder", y.holder, "at", y.at.String(), "err", err)
			}
		})
	}
	wg.Wait()
}

// check runs one VIP's claim checks: refused for a higher (or another
// node's equal) term on record here or answered by the holder; the holder
// that answered is kept to be told to yield.
func (p *Provider) check(ctx context.Context, term uint64, r providers.Resource) (vipClaim, error) {
	c := vipClaim{r: r, start: time.Now()}
	if r.Kind != KindVIP {
		return c, fmt.Errorf("unknown kind %q (linux moves %s)", r.Kind, KindVIP)
	}
	pfx, err := p.parseVIP(r.ID)
	if err != nil {
		return c, err
	}
	c.pfx = pfx
	if p.ctx.Err() != nil {
		return c, errors.New("the linux provider is closed")
	}
	vip := pfx.Addr()
	rec := p.record(vip)
	if rec.Term > term || (rec.Term == term && rec.Node != p.node) {
		return c, staleTerm(rec.Node, rec.Term)
	}
	held, err := p.present(vip)
	if err != nil {
		return c, err
	}
	// Ask the segment unless this node already holds the VIP at this term,
	// or the holder is known gone: a dead holder cannot answer, and the
	// query would wait out ProbeTimeout for nothing (gone.go).
	if !held || !rec.Held || rec.Node != p.node || rec.Term != term {
		if why := p.holderGone(vip, term); why != "" {
			p.log.Info("claiming without asking the holder", "vip", vip.String(), "term", term, "why", why)
			return c, nil
		}
		m, from, ok := p.query(ctx, vip)
		if ok && m.kind == msgHolder && m.node != p.node {
			if m.term >= term {
				_ = p.setRecord(vip, record{Node: m.node, Term: m.term})
				return c, staleTerm(m.node, m.term)
			}
			c.prev = &pendingYield{vip: vip, holder: m.node, at: from}
		}
	}
	return c, nil
}

// take adds and announces a checked VIP. Only after it may the previous
// holder be told to drop it.
func (p *Provider) take(ctx context.Context, term uint64, c vipClaim) error {
	// A claim whose takeover was called off must not add the VIP: the
	// node may already have fenced itself.
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.addAddr(c.pfx); err != nil {
		return err
	}
	vip := c.pfx.Addr()
	if err := p.setRecord(vip, record{Node: p.node, Term: term, Held: true}); err != nil {
		return err
	}
	p.announce(vip)
	if ok, err := p.present(vip); err != nil || !ok {
		return errors.Join(fmt.Errorf("%s missing from %s after adding it", c.pfx, p.cfg.Interface), err)
	}
	return nil
}

// Release removes the VIPs from the interface (fencing); a VIP that is not
// there is not an error.
func (p *Provider) Release(ctx context.Context, rs []providers.Resource) error {
	var errs []error
	for _, r := range rs {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, fmt.Errorf("releasing %s: %w", r, err))...)
		}
		if err := p.release(r); err != nil {
			errs = append(errs, fmt.Errorf("releasing %s for %s: %w", r, p.node, err))
		}
	}
	return errors.Join(errs...)
}

func (p *Provider) release(r providers.Resource) error {
	if r.Kind != KindVIP {
		return fmt.Errorf("unknown kind %q (linux moves %s)", r.Kind, KindVIP)
	}
	pfx, err := p.parseVIP(r.ID)
	if err != nil {
		return err
	}
	return p.drop(pfx, record{})
}

// drop stops announcing vip, removes it, and records next (or, when next
// is empty, this node's own record marked as no longer held).
func (p *Provider) drop(pfx netip.Prefix, next record) error {
	vip := pfx.Addr()
	p.stopAnnounce(vip)
	if err := p.delAddr(pfx); err != nil {
		return err
	}
	if next.Node == "" {
		next = p.record(vip)
		next.Held = false
	}
	if err := p.setRecord(vip, next); err != nil {
		return err
	}
	p.log.Info("vip released", "vip", pfx.String(), "now", next.Node, "term", next.Term)
	return nil
}

// Owner says who holds the VIP: this node when it is on the interface;
// otherwise whoever answers the owner query sent to the VIP; otherwise the
// node whose MAC (from Peers) the neighbor table resolves the VIP to, with
// an unknown term.
func (p *Provider) Owner(ctx context.Context, r providers.Resource) (providers.Holder, error) {
	if r.Kind != KindVIP {
		return providers.Holder{}, fmt.Errorf("owner of %s: unknown kind %q (linux moves %s)", r, r.Kind, KindVIP)
	}
	pfx, err := p.parseVIP(r.ID)
	if err != nil {
		return providers.Holder{}, fmt.Errorf("owner of %s: %w", r, err)
	}
	vip := pfx.Addr()
	held, err := p.present(vip)
	if err != nil {
		return providers.Holder{}, fmt.Errorf("owner of %s: %w", r, err)
	}
	if held {
		h := providers.Holder{Node: p.node, Target: p.cfg.Interface}
		if rec := p.record(vip); rec.Held && rec.Node == p.node {
			h.Term = rec.Term
		}
		return h, nil
	}
	// A fresh resolution, not what an old entry remembers.
	_ = p.nl.NeighDel(&netlink.Neigh{LinkIndex: p.ifindex, Family: family(vip), IP: vip.AsSlice()})
	if m, from, ok := p.query(ctx, vip); ok && m.kind == msgHolder {
		return providers.Holder{Node: m.node, Term: m.term, Target: from.Addr().String()}, nil
	}
	if err := ctx.Err(); err != nil {
		return providers.Holder{}, fmt.Errorf("owner of %s: %w", r, err)
	}
	if mac := p.neighbor(vip); mac != nil {
		return providers.Holder{Node: p.cfg.peers[mac.String()], Target: mac.String()}, nil
	}
	return providers.Holder{}, nil
}

// neighbor returns the MAC the kernel resolved vip to, if any.
func (p *Provider) neighbor(vip netip.Addr) net.HardwareAddr {
	neighs, err := p.nl.NeighList(p.ifindex, family(vip))
	if err != nil {
		return nil
	}
	const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT
	for _, n := range neighs {
		if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == vip && n.State&usable != 0 && len(n.HardwareAddr) == 6 {
			return n.HardwareAddr
		}
	}
	return nil
}
