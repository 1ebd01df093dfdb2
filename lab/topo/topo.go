// Package topo builds the lab's network out of network namespaces: a
// "cloud" namespace with two bridges (br-out for the outside segment, br-in
// for the protected one), N gateway namespaces with an outer and an inner
// interface, a client (site-to-site peer or road warrior) with a protected
// inner address, and a protected inside host.
//
// It talks netlink from the calling process (one UML process start costs
// ~100 ms, a netlink call well under one) and has nothing UML-specific: on a
// host kernel without the dummy link type the client's inner address goes
// on its loopback instead, and Spec.Prefix keeps namespace names apart from
// everybody else's on a shared host.
//
// Addresses come only from the documentation and benchmarking ranges:
//
//	client     203.0.113.2/24, inner 198.51.100.10/32
//	gateway i  203.0.113.1i/24 outside, 198.18.1.1i/24 inside (i = 1..9)
//	VIPs       203.0.113.100 (outside), 198.18.1.1 (inside next hop)
//	inside     198.18.1.10/24, default route via 198.18.1.1
package topo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The lab's address plan.
const (
	ClientOuter = "203.0.113.2"
	ClientInner = "198.51.100.10"
	ClientNet   = "198.51.100.0/24"
	OuterNet    = "203.0.113.0/24"
	VIPOuter    = "203.0.113.100"
	VIPInner    = "198.18.1.1"
	InsideHost  = "198.18.1.10"
	InsideNet   = "198.18.1.0/24"
	// ProtectedNet is what the client routes into the tunnel.
	ProtectedNet = "198.18.0.0/15"
	// MaxGateways is how many gateways the 1x address scheme has room for.
	MaxGateways = 9
)

// Interface names inside the nodes.
const (
	OuterIf = "out0"
	InnerIf = "in0"
	// DummyIf carries the client's inner address where the kernel has the
	// dummy link type.
	DummyIf = "inner0"
)

// GatewayOuter is gateway i's own outside address (i counts from 1).
func GatewayOuter(i int) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)}) }

// GatewayInner is gateway i's own inside address (i counts from 1).
func GatewayInner(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i)}) }

// Spec says what to build.
type Spec struct {
	// Prefix is prepended to every namespace name. Empty in a lab guest
	// (its /run is private); unique per run on a shared host.
	Prefix string
	// Gateways is the number of gateway namespaces, 1..MaxGateways.
	Gateways int
	// StaticVIPs puts both VIPs on gateway 1 at build time, for scenarios
	// without VRRP.
	StaticVIPs bool
	// RoadWarrior leaves the client without its inner address and the
	// route using it: charon installs the address as a virtual IP (and the
	// route in table 220) when the tunnel comes up.
	RoadWarrior bool
	// Log receives progress; nil discards it.
	Log *slog.Logger
}

// Topology is the built network. Close removes it.
type Topology struct {
	// Cloud holds the bridges and the cloud side of every veth pair.
	Cloud  *Node
	Client *Node
	Inside *Node
	// Gateways[0] is gw1.
	Gateways []*Node

	log   *slog.Logger
	nodes []*Node

	mu     sync.Mutex // guards the following fields
	closed bool
}

// Node is one network namespace of the topology.
type Node struct {
	// Name is the logical name: net, client, gw1…, inside.
	Name string
	// NS is the namespace's name under /run/netns.
	NS string
	// Outer and Inner are the node's own addresses; invalid where the node
	// has no such side. The client's Inner is its protected address.
	Outer, Inner netip.Prefix
	// InnerDev is the device holding Inner: in0, or inner0 / lo for the
	// client.
	InnerDev string

	handle netns.NsHandle
	nl     *netlink.Handle

	mu    sync.Mutex // guards the following fields
	procs []*os.Process
}

// Build creates the namespaces, links, addresses, routes and sysctls of
// spec. On error it removes what it had built.
func Build(ctx context.Context, spec Spec) (*Topology, error) {
	if spec.Gateways < 1 || spec.Gateways > MaxGateways {
		return nil, fmt.Errorf("building topology: %d gateways, want 1..%d", spec.Gateways, MaxGateways)
	}
	t := &Topology{log: spec.Log}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if err := t.build(ctx, spec); err != nil {
		return nil, errors.Join(err, t.Close())
	}
	return t, nil
}

func (t *Topology) build(ctx context.Context, spec Spec) error {
	mk := func(name string) (*Node, error) {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("building topology: %w", err)
		}
		n, err := newNode(name, spec.Prefix+name)
		if err != nil {
			return nil, err
		}
		t.nodes = append(t.nodes, n)
		return n, nil
	}
	var err error
	if t.Cloud, err = mk("net"); err != nil {
		return err
	}
	if t.Client, err = mk("client"); err != nil {
		return err
	}
	for i := 1; i <= spec.Gateways; i++ {
		gw, err := mk(fmt.Sprintf("gw%d", i))
		if err != nil {
			return err
		}
		gw.Outer = netip.PrefixFrom(GatewayOuter(i), 24)
		gw.Inner = netip.PrefixFrom(GatewayInner(i), 24)
		gw.InnerDev = InnerIf
		t.Gateways = append(t.Gateways, gw)
	}
	if t.Inside, err = mk("inside"); err != nil {
		return err
	}
	t.Client.Outer = netip.MustParsePrefix(ClientOuter + "/24")
	t.Client.Inner = netip.MustParsePrefix(ClientInner + "/32")
	t.Inside.Inner = netip.MustParsePrefix(InsideHost + "/24")
	t.Inside.InnerDev = InnerIf

	for _, n := range t.nodes {
		if err := n.linkUp("lo"); err != nil {
			return err
		}
	}
	for _, br := range []string{"br-out", "br-in"} {
		b := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: br}}
		if err := t.Cloud.nl.LinkAdd(b); err != nil {
			return fmt.Errorf("adding bridge %s: %w", br, err)
		}
		if err := t.Cloud.linkUp(br); err != nil {
			return err
		}
	}
	for _, n := range t.nodes {
		if n.Outer.IsValid() {
			if err := t.plug(n, "br-out", "-o", OuterIf, n.Outer); err != nil {
				return err
			}
		}
		if n.InnerDev == InnerIf {
			if err := t.plug(n, "br-in", "-i", InnerIf, n.Inner); err != nil {
				return err
			}
		}
	}
	if err := t.setupClient(spec.RoadWarrior); err != nil {
		return err
	}
	for _, gw := range t.Gateways {
		if err := setupGateway(gw); err != nil {
			return err
		}
	}
	if err := t.Inside.nl.RouteAdd(&netlink.Route{
		Gw: net.ParseIP(VIPInner), LinkIndex: t.Inside.index(InnerIf),
	}); err != nil {
		return fmt.Errorf("adding inside default route: %w", err)
	}
	if spec.StaticVIPs {
		gw := t.Gateways[0]
		if err := gw.AddAddr(OuterIf, netip.MustParsePrefix(VIPOuter+"/24")); err != nil {
			return err
		}
		if err := gw.AddAddr(InnerIf, netip.MustParsePrefix(VIPInner+"/24")); err != nil {
			return err
		}
	}
	t.log.Info("topology built", "gateways", spec.Gateways, "client_inner_dev", t.Client.InnerDev)
	return nil
}

// plug connects n to bridge br in the cloud namespace with a veth pair
// whose node end is named dev and carries addr.
func (t *Topology) plug(n *Node, br, suffix, dev string, addr netip.Prefix) error {
	cloudEnd := n.Name + suffix
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: cloudEnd},
		PeerName:      dev,
		PeerNamespace: netlink.NsFd(n.handle),
	}
	if err := t.Cloud.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth %s/%s for %s: %w", cloudEnd, dev, n.Name, err)
	}
	link, err := t.Cloud.nl.LinkByName(cloudEnd)
	if err != nil {
		return fmt.Errorf("finding %s: %w", cloudEnd, err)
	}
	bridge, err := t.Cloud.nl.LinkByName(br)
	if err != nil {
		return fmt.Errorf("finding %s: %w", br, err)
	}
	if err := t.Cloud.nl.LinkSetMaster(link, bridge); err != nil {
		return fmt.Errorf("attaching %s to %s: %w", cloudEnd, br, err)
	}
	if err := t.Cloud.linkUp(cloudEnd); err != nil {
		return err
	}
	if err := n.linkUp(dev); err != nil {
		return err
	}
	return n.AddAddr(dev, addr)
}

func (t *Topology) setupClient(roadWarrior bool) error {
	c := t.Client
	if err := c.Sysctl("net.ipv4.conf.all.rp_filter", "0"); err != nil {
		return err
	}
	if roadWarrior {
		c.InnerDev = ""
		return nil
	}
	c.InnerDev = DummyIf
	err := c.nl.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: DummyIf}})
	switch {
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT):
		// No dummy link type in this kernel (the host's): lo will do.
		c.InnerDev = "lo"
	case err != nil:
		return fmt.Errorf("adding %s: %w", DummyIf, err)
	default:
		if err := c.linkUp(DummyIf); err != nil {
			return err
		}
	}
	if err := c.AddAddr(c.InnerDev, c.Inner); err != nil {
		return err
	}
	// Traffic for the protected side leaves from the inner address; the
	// XFRM policy then carries it into the tunnel. A main-table route keeps
	// this independent of charon's table 220 (install_routes = no).
	return c.nl.RouteAdd(&netlink.Route{
		Dst:       ipNet(netip.MustParsePrefix(ProtectedNet)),
		Gw:        net.ParseIP(VIPOuter),
		Src:       net.ParseIP(ClientInner),
		LinkIndex: c.index(OuterIf),
	})
}

func setupGateway(gw *Node) error {
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
		{"net.ipv4.conf." + OuterIf + ".rp_filter", "0"},
		{"net.ipv4.conf." + InnerIf + ".rp_filter", "0"},
		// Only the holder of a VIP answers ARP for it, on that interface.
		{"net.ipv4.conf.all.arp_ignore", "1"},
		{"net.ipv4.conf.all.arp_announce", "2"},
	} {
		if err := gw.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return gw.GatewayRoutes()
}

// GatewayRoutes (re)installs a gateway's static routes. Every gateway
// routes the client's inner net itself: charon's table 220 routes do not
// follow an XFRM copy to a takeover node. The kernel drops a route when its
// device's link goes down and does not bring it back; on a real host the
// network configuration does (systemd-networkd on carrier), in the lab
// whoever brings a link back up calls this.
func (n *Node) GatewayRoutes() error {
	return n.RouteVia(netip.MustParsePrefix(ClientNet), netip.MustParseAddr(ClientOuter), OuterIf)
}

// RouteVia adds or replaces the route to dst via gw on dev.
func (n *Node) RouteVia(dst netip.Prefix, gw netip.Addr, dev string) error {
	if err := n.nl.RouteReplace(&netlink.Route{Dst: ipNet(dst), Gw: gw.AsSlice(), LinkIndex: n.index(dev)}); err != nil {
		return fmt.Errorf("routing %s via %s on %s in %s: %w", dst, gw, dev, n.Name, err)
	}
	return nil
}

// PinNeighbor makes ip resolve to mac on dev for good (a permanent
// neighbour entry): how the lab's cloud fabric delivers a VIP to the
// interface the cloud assigned it to, with no ARP involved.
func (n *Node) PinNeighbor(dev string, ip netip.Addr, mac net.HardwareAddr) error {
	err := n.nl.NeighSet(&netlink.Neigh{LinkIndex: n.index(dev), Family: family(ip), State: netlink.NUD_PERMANENT,
		IP: ip.AsSlice(), HardwareAddr: mac})
	if err != nil {
		return fmt.Errorf("pinning %s to %s on %s in %s: %w", ip, mac, dev, n.Name, err)
	}
	return nil
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// Nodes returns every node in creation order (net, client, gw1…, inside).
func (t *Topology) Nodes() []*Node { return append([]*Node(nil), t.nodes...) }

// Namespaces returns the names of the topology's namespaces.
func (t *Topology) Namespaces() []string {
	names := make([]string, 0, len(t.nodes))
	for _, n := range t.nodes {
		names = append(names, n.NS)
	}
	return names
}

// Close kills whatever process a node started that is still running,
// then deletes the namespaces. It is safe to call twice.
func (t *Topology) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	for i := len(t.nodes) - 1; i >= 0; i-- {
		n := t.nodes[i]
		n.killAll()
		if n.nl != nil {
			n.nl.Close()
		}
		if err := n.handle.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing namespace handle %s: %w", n.NS, err))
		}
		if err := netns.DeleteNamed(n.NS); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w", n.NS, err))
		}
	}
	return errors.Join(errs...)
}

func newNode(name, ns string) (*Node, error) {
	if strings.ContainsAny(ns, "/ ") || len(name) > 10 {
		return nil, fmt.Errorf("namespace name %q / node name %q", ns, name)
	}
	var h netns.NsHandle
	err := onThread(func(orig netns.NsHandle) error {
		var err error
		h, err = netns.NewNamed(ns)
		if err != nil {
			return fmt.Errorf("creating namespace %s: %w", ns, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE, unix.NETLINK_XFRM)
	if err != nil {
		h.Close()
		_ = netns.DeleteNamed(ns)
		return nil, fmt.Errorf("opening netlink in %s: %w", ns, err)
	}
	return &Node{Name: name, NS: ns, handle: h, nl: nl}, nil
}

// onThread runs fn on a locked OS thread and puts the thread back into its
// original namespace afterwards. A thread that cannot be put back is never
// unlocked, so the runtime discards it with its goroutine.
func onThread(fn func(orig netns.NsHandle) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("reading current namespace: %w", err)
			return
		}
		defer orig.Close()
		ferr := fn(orig)
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restoring namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Do runs fn on an OS thread inside the node's namespace: sockets it opens
// stay in the namespace after fn returns.
func (n *Node) Do(fn func() error) error {
	return onThread(func(netns.NsHandle) error {
		if err := netns.Set(n.handle); err != nil {
			return fmt.Errorf("entering namespace %s: %w", n.NS, err)
		}
		return fn()
	})
}

// Start starts cmd inside the node's namespace (the child inherits the
// namespace of the thread that forks it). The node kills it on Topology
// Close if it is still running then; its owner should stop it first.
func (n *Node) Start(cmd *exec.Cmd) error {
	err := n.Do(cmd.Start)
	if err != nil {
		return fmt.Errorf("starting %s in %s: %w", cmd.Path, n.Name, err)
	}
	n.mu.Lock()
	n.procs = append(n.procs, cmd.Process)
	n.mu.Unlock()
	return nil
}

func (n *Node) killAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.procs {
		_ = p.Kill() // already finished is fine
	}
	n.procs = nil
}

// Netlink returns a netlink handle bound to the node's namespace.
func (n *Node) Netlink() *netlink.Handle { return n.nl }

// Sysctl writes a sysctl of the node's namespace, e.g.
// Sysctl("net.ipv4.ip_forward", "1").
func (n *Node) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	err := n.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("setting %s=%s in %s: %w", key, value, n.Name, err)
	}
	return nil
}

// AddAddr adds addr to dev.
func (n *Node) AddAddr(dev string, addr netip.Prefix) error {
	link, err := n.nl.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", dev, n.Name, err)
	}
	if err := n.nl.AddrAdd(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("adding %s to %s in %s: %w", addr, dev, n.Name, err)
	}
	return nil
}

// DelAddr removes addr from dev.
func (n *Node) DelAddr(dev string, addr netip.Prefix) error {
	link, err := n.nl.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", dev, n.Name, err)
	}
	if err := n.nl.AddrDel(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("removing %s from %s in %s: %w", addr, dev, n.Name, err)
	}
	return nil
}

// HasAddr reports whether any interface of the node carries a.
func (n *Node) HasAddr(a netip.Addr) (bool, error) {
	addrs, err := n.nl.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("listing addresses in %s: %w", n.Name, err)
	}
	for _, ad := range addrs {
		if got, ok := netip.AddrFromSlice(ad.IP); ok && got.Unmap() == a {
			return true, nil
		}
	}
	return false, nil
}

// LinksDown takes the node's outer and inner interfaces down: the node is
// gone from both segments (a crashed machine neither forwards nor answers
// ARP).
func (n *Node) LinksDown() error {
	var errs []error
	for _, dev := range []string{OuterIf, InnerIf} {
		link, err := n.nl.LinkByName(dev)
		if err != nil {
			continue // the node has no such side
		}
		if err := n.nl.LinkSetDown(link); err != nil {
			errs = append(errs, fmt.Errorf("setting %s down in %s: %w", dev, n.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (n *Node) linkUp(dev string) error {
	link, err := n.nl.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", dev, n.Name, err)
	}
	if err := n.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up in %s: %w", dev, n.Name, err)
	}
	return nil
}

func (n *Node) index(dev string) int {
	link, err := n.nl.LinkByName(dev)
	if err != nil {
		return 0
	}
	return link.Attrs().Index
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
