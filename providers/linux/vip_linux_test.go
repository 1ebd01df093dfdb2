//go:build linux

package linux

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/handoffvpn/handoff/providers"
)

// lab is a segment of three network namespaces made for one test: nodes
// "a" and "b" (eth0, a veth into the bridge) and an observer "obs" whose
// bridge br0 is its own interface on the segment.
type lab struct {
	name map[string]string // role → namespace name
	nl   map[string]*netlink.Handle
	mac  map[string]net.HardwareAddr
	ip4  map[string]string
	ip6  map[string]string
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: linux VIP tests need root to create network namespaces")
	}
}

func newLab(t *testing.T) *lab {
	t.Helper()
	needRoot(t)
	h := fnv.New32a()
	h.Write([]byte(t.Name()))
	prefix := fmt.Sprintf("hl%d-%x", os.Getpid()%100000, h.Sum32()%0xffff)
	l := &lab{name: map[string]string{}, nl: map[string]*netlink.Handle{}, mac: map[string]net.HardwareAddr{},
		ip4: map[string]string{"a": "198.18.0.11", "b": "198.18.0.12", "obs": "198.18.0.3"},
		ip6: map[string]string{"a": "2001:db8::11", "b": "2001:db8::12", "obs": "2001:db8::3"}}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	for _, role := range []string{"obs", "a", "b"} {
		name := prefix + "-" + role
		_ = netns.DeleteNamed(name)     // a leftover of a killed run
		ns, err := netns.NewNamed(name) // also switches this thread into it
		if err != nil {
			_ = netns.Set(orig)
			t.Fatalf("creating network namespace %s: %v", name, err)
		}
		// New links inherit "default": no DAD, so IPv6 addresses work at once.
		for _, f := range []string{"/proc/sys/net/ipv6/conf/default/accept_dad", "/proc/sys/net/ipv6/conf/all/accept_dad"} {
			if err := os.WriteFile(f, []byte("0"), 0o644); err != nil {
				t.Logf("setting %s in %s: %v", f, name, err)
			}
		}
		if err := netns.Set(orig); err != nil {
			t.Fatalf("leaving network namespace %s: %v", name, err)
		}
		t.Cleanup(func() {
			if err := netns.DeleteNamed(name); err != nil {
				t.Errorf("deleting network namespace %s: %v", name, err)
			}
		})
		nl, err := netlink.NewHandleAt(ns)
		ns.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nl.Close)
		l.name[role], l.nl[role] = name, nl
		lo, err := nl.LinkByName("lo")
		must(t, err)
		must(t, nl.LinkSetUp(lo))
	}
	links := l.segment(t, "br0", "eth0", "p-", func(role string) []string { return []string{l.ip4[role] + "/24", l.ip6[role] + "/64"} })
	for role, link := range links {
		l.mac[role] = link.Attrs().HardwareAddr
	}
	return l
}

// segment adds a bridge to the observer and plugs a and b into it (iface
// in their namespaces, peerPrefix+role in the observer's), each with the
// addresses addrs gives for its role ("obs" for the bridge itself). It
// returns the links by role, the bridge as "obs".
func (l *lab) segment(t *testing.T, bridge, iface, peerPrefix string, addrs func(role string) []string) map[string]netlink.Link {
	t.Helper()
	obs := l.nl["obs"]
	must(t, obs.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}))
	br, err := obs.LinkByName(bridge)
	must(t, err)
	obsNS, err := netns.GetFromName(l.name["obs"])
	must(t, err)
	defer obsNS.Close()
	links := map[string]netlink.Link{}
	for _, role := range []string{"a", "b"} {
		links[role] = l.plug(t, role, iface, peerPrefix+role, br, obsNS, addrs(role)...)
	}
	for _, c := range addrs("obs") {
		addAddr(t, obs, br, c)
	}
	must(t, obs.LinkSetUp(br))
	links["obs"], err = obs.LinkByName(bridge) // up: its MAC is settled
	must(t, err)
	return links
}

// plug connects role to the observer's bridge br with a veth pair (name in
// role's namespace, peer in the observer's), adds the addresses and brings
// it up.
func (l *lab) plug(t *testing.T, role, name, peer string, br netlink.Link, obsNS netns.NsHandle, cidrs ...string) netlink.Link {
	t.Helper()
	n, obs := l.nl[role], l.nl["obs"]
	must(t, n.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer, PeerNamespace: netlink.NsFd(obsNS)}))
	p, err := obs.LinkByName(peer)
	must(t, err)
	must(t, obs.LinkSetMaster(p, br))
	must(t, obs.LinkSetUp(p))
	link, err := n.LinkByName(name)
	must(t, err)
	for _, c := range cidrs {
		addAddr(t, n, link, c)
	}
	must(t, n.LinkSetUp(link))
	return link
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addAddr(t *testing.T, h *netlink.Handle, link netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	must(t, err)
	a.Flags = unix.IFA_F_NODAD
	must(t, h.AddrAdd(link, a))
}

func (l *lab) iface(role string) string {
	if role == "obs" {
		return "br0"
	}
	return "eth0"
}

// provider builds role's provider in its namespace, with quick
// announcements and probes.
func (l *lab) provider(t *testing.T, role string) *Provider {
	t.Helper()
	p, err := New(context.Background(), role, Settings{
		Interface: l.iface(role), Netns: l.name[role],
		AnnounceCount: 4, AnnounceInterval: "50ms", ProbeTimeout: "150ms", StateDir: t.TempDir(),
		Peers: map[string]string{"a": l.mac["a"].String(), "b": l.mac["b"].String()},
	})
	if err != nil {
		t.Fatalf("linux provider for %s: %v", role, err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func (l *lab) has(t *testing.T, role string, vip netip.Addr) bool {
	t.Helper()
	return l.hasOn(t, role, l.iface(role), vip)
}

func (l *lab) hasOn(t *testing.T, role, iface string, vip netip.Addr) bool {
	t.Helper()
	link, err := l.nl[role].LinkByName(iface)
	must(t, err)
	addrs, err := l.nl[role].AddrList(link, family(vip))
	must(t, err)
	for _, a := range addrs {
		if ip, _ := netip.AddrFromSlice(a.IP); ip.Unmap() == vip {
			return true
		}
	}
	return false
}

// neighborMAC is the MAC the observer's neighbor table holds for vip.
func (l *lab) neighborMAC(t *testing.T, vip netip.Addr) string {
	t.Helper()
	br, err := l.nl["obs"].LinkByName("br0")
	must(t, err)
	neighs, err := l.nl["obs"].NeighList(br.Attrs().Index, family(vip))
	must(t, err)
	for _, n := range neighs {
		if ip, _ := netip.AddrFromSlice(n.IP); ip.Unmap() == vip && len(n.HardwareAddr) == 6 {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

// touch makes the observer resolve vip (one UDP datagram to the discard
// port) and waits for the neighbor entry.
func (l *lab) touch(t *testing.T, obs *Provider, vip netip.Addr) string {
	t.Helper()
	send(t, obs, vip)
	return l.waitMAC(t, vip, "")
}

// waitMAC waits (1 s at most) until the observer's entry for vip is not
// other, and returns it.
func (l *lab) waitMAC(t *testing.T, vip netip.Addr, other string) string {
	t.Helper()
	var got string
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if got = l.neighborMAC(t, vip); got != "" && got != other {
			return got
		}
	}
	return got
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantHolder(t *testing.T, p *Provider, r providers.Resource, node string, term uint64) {
	t.Helper()
	h, err := p.Owner(ctxT(t), r)
	if err != nil || h.Node != node || h.Term != term {
		t.Fatalf("owner of %s seen from %s = %+v, %v; want %q at term %d", r, p.node, h, err, node, term)
	}
}

var vips = []struct{ name, id string }{
	{"ipv4", "198.18.0.100/24"},
	{"ipv6", "2001:db8::100/64"},
}

// TestLinuxVIPMovesAndSegmentFollows is the failover on a real segment:
// a claims, the observer resolves the VIP to a; b claims at a higher term,
// the observer's entry turns to b's MAC from the announcement alone, a
// has dropped the VIP, a lower term is refused, and a release removes it.
func TestLinuxVIPMovesAndSegmentFollows(t *testing.T) {
	needRoot(t)
	for _, v := range vips {
		t.Run("linux/"+v.name, func(t *testing.T) {
			l := newLab(t)
			a, b, obs := l.provider(t, "a"), l.provider(t, "b"), l.provider(t, "obs")
			r := providers.Resource{Kind: KindVIP, ID: v.id}
			vip := netip.MustParsePrefix(v.id).Addr()

			must(t, a.Claim(ctxT(t), 1, []providers.Resource{r}))
			if !l.has(t, "a", vip) {
				t.Fatal("the VIP is not on a after a's claim")
			}
			if got := l.touch(t, obs, vip); got != l.mac["a"].String() {
				t.Fatalf("observer resolves the VIP to %q, want a's %s", got, l.mac["a"])
			}

			must(t, b.Claim(ctxT(t), 2, []providers.Resource{r}))
			if got := l.waitMAC(t, vip, l.mac["a"].String()); got != l.mac["b"].String() {
				t.Fatalf("after b's claim the observer has %q for the VIP, want b's %s", got, l.mac["b"])
			}
			if !l.has(t, "b", vip) || l.has(t, "a", vip) {
				t.Fatalf("after b's claim: on a %v, on b %v; want only b", l.has(t, "a", vip), l.has(t, "b", vip))
			}
			wantHolder(t, obs, r, "b", 2)
			wantHolder(t, a, r, "b", 2)
			wantHolder(t, b, r, "b", 2)

			if err := a.Claim(ctxT(t), 1, []providers.Resource{r}); !errors.Is(err, providers.ErrStaleTerm) {
				t.Fatalf("a claiming at term 1 after b's 2: err = %v, want ErrStaleTerm", err)
			}
			wantHolder(t, obs, r, "b", 2)

			must(t, b.Release(ctxT(t), []providers.Resource{r}))
			must(t, b.Release(ctxT(t), []providers.Resource{r})) // idempotent
			if l.has(t, "b", vip) {
				t.Fatal("the VIP is still on b after Release")
			}
			wantHolder(t, obs, r, "", 0)
		})
	}
}

// TestLinuxVIPConformance runs the conformance cases that apply to a
// segment without a cloud API (no throttling or permissions to inject).
func TestLinuxVIPConformance(t *testing.T) {
	l := newLab(t)
	a, b := l.provider(t, "a"), l.provider(t, "b")
	rs := []providers.Resource{{Kind: KindVIP, ID: "198.18.0.100/24"}, {Kind: KindVIP, ID: "2001:db8::100/64"}}

	t.Run("linux/ClaimTwiceIsIdempotent", func(t *testing.T) {
		must(t, a.Claim(ctxT(t), 3, rs))
		must(t, a.Claim(ctxT(t), 3, rs))
		for _, r := range rs {
			wantHolder(t, a, r, "a", 3)
		}
	})
	t.Run("linux/ClaimWhileOtherNodeOwns", func(t *testing.T) {
		must(t, b.Claim(ctxT(t), 5, rs))
		for _, r := range rs {
			wantHolder(t, a, r, "b", 5)
		}
	})
	t.Run("linux/OwnerAfterClaim", func(t *testing.T) {
		must(t, a.Claim(ctxT(t), 6, rs))
		for _, r := range rs {
			wantHolder(t, a, r, "a", 6)
			wantHolder(t, b, r, "a", 6)
		}
	})
	t.Run("linux/LowerTermRefused", func(t *testing.T) {
		must(t, b.Claim(ctxT(t), 9, rs))
		err := a.Claim(ctxT(t), 8, rs)
		var ce *providers.ClaimError
		if !errors.Is(err, providers.ErrStaleTerm) || !errors.As(err, &ce) || len(ce.Failed) != 2 {
			t.Fatalf("claim at a lower term: err = %v, want ErrStaleTerm for both VIPs", err)
		}
		for _, r := range rs {
			wantHolder(t, a, r, "b", 9)
		}
	})
	t.Run("linux/BadResourceReported", func(t *testing.T) {
		bad := append([]providers.Resource{{Kind: KindVIP, ID: "198.18.0.300/24"}}, rs...)
		err := b.Claim(ctxT(t), 9, bad)
		var ce *providers.ClaimError
		if !errors.As(err, &ce) || len(ce.Failed) != 1 || ce.Failed[0].Resource != bad[0] || len(ce.Moved) != 2 {
			t.Fatalf("claim with one bad VIP: err = %v, want it alone failed and the other two moved", err)
		}
	})
}

// TestLinuxVIPHolderAgentDown: the holder's agent is gone but its VIP is
// still on the wire. Owner falls back to the neighbor table and the Peers
// MAC map; a new claim goes ahead (nobody answers to refuse it) and the
// segment follows the announcements.
func TestLinuxVIPHolderAgentDown(t *testing.T) {
	l := newLab(t)
	a, b, obs := l.provider(t, "a"), l.provider(t, "b"), l.provider(t, "obs")
	r := providers.Resource{Kind: KindVIP, ID: "198.18.0.100/24"}
	vip := netip.MustParseAddr("198.18.0.100")
	must(t, b.Claim(ctxT(t), 4, []providers.Resource{r}))
	must(t, b.Close())
	h, err := obs.Owner(ctxT(t), r)
	if err != nil || h.Node != "b" || h.Term != 0 || h.Target != l.mac["b"].String() {
		t.Fatalf("owner with b's agent down = %+v, %v; want b (by MAC %s), term unknown", h, err, l.mac["b"])
	}
	if got := l.touch(t, obs, vip); got != l.mac["b"].String() {
		t.Fatalf("observer entry %q, want b's", got)
	}
	must(t, a.Claim(ctxT(t), 5, []providers.Resource{r}))
	if got := l.waitMAC(t, vip, l.mac["b"].String()); got != l.mac["a"].String() {
		t.Fatalf("after a's claim the observer has %q, want a's %s", got, l.mac["a"])
	}
	if err := b.Claim(ctxT(t), 6, []providers.Resource{r}); err == nil {
		t.Fatal("claim on a closed provider succeeded")
	}
}

// addSegment gives a and b a second interface (eth1) on a second bridge
// (br1 in the observer's namespace), 198.18.1.0/24.
func (l *lab) addSegment(t *testing.T) {
	t.Helper()
	host := map[string]int{"obs": 3, "a": 11, "b": 12}
	l.segment(t, "br1", "eth1", "q-", func(role string) []string { return []string{fmt.Sprintf("198.18.1.%d/24", host[role])} })
}

// TestLinuxVIPSetMovesBothSegments: an outside and an inside VIP on two
// interfaces move together, each segment's responder (they share the owner
// port) answers for its own VIP, and a VIP on an interface that is not
// configured is refused by name.
func TestLinuxVIPSetMovesBothSegments(t *testing.T) {
	l := newLab(t)
	l.addSegment(t)
	yielded := &yieldLog{}
	set := func(role string) *Set {
		t.Helper()
		p, err := Factory(context.Background(), role, Settings{
			Interface: "eth0", Interfaces: []string{"eth1"}, Netns: l.name[role],
			AnnounceCount: 2, AnnounceInterval: "50ms", ProbeTimeout: "150ms", StateDir: t.TempDir(),
			Logger: slog.New(yielded),
		})
		if err != nil {
			t.Fatalf("linux provider set for %s: %v", role, err)
		}
		t.Cleanup(func() { _ = p.(*Set).Close() })
		return p.(*Set)
	}
	a, b := set("a"), set("b")
	outside := providers.Resource{Kind: KindVIP, ID: "198.18.0.100/24"}
	inside := providers.Resource{Kind: KindVIP, ID: "198.18.1.1/24 dev eth1"}
	rs := []providers.Resource{outside, inside}
	out, in := netip.MustParseAddr("198.18.0.100"), netip.MustParseAddr("198.18.1.1")

	must(t, a.Claim(ctxT(t), 1, rs))
	if !l.hasOn(t, "a", "eth0", out) || !l.hasOn(t, "a", "eth1", in) {
		t.Fatal("after a's claim the VIPs are not on a's eth0 and eth1")
	}
	must(t, b.Claim(ctxT(t), 2, rs))
	// a yields the inside VIP first: holding only the outside one it can
	// still encrypt (it keeps its SAs until it fences), holding only the
	// inside one it could not.
	if got := yielded.vips(); fmt.Sprint(got) != fmt.Sprint([]string{in.String(), out.String()}) {
		t.Errorf("a yielded %v in that order, want the inside VIP first: [%s %s]", got, in, out)
	}
	for _, c := range []struct {
		role, iface string
		vip         netip.Addr
		want        bool
	}{{"a", "eth0", out, false}, {"a", "eth1", in, false}, {"b", "eth0", out, true}, {"b", "eth1", in, true}, {"b", "eth0", in, false}} {
		if got := l.hasOn(t, c.role, c.iface, c.vip); got != c.want {
			t.Errorf("after b's claim: %s on %s's %s = %v, want %v", c.vip, c.role, c.iface, got, c.want)
		}
	}
	for _, r := range rs {
		h, err := a.Owner(ctxT(t), r)
		if err != nil || h.Node != "b" || h.Term != 2 {
			t.Errorf("owner of %s seen from a = %+v, %v; want b at term 2 (answered on its own segment)", r, h, err)
		}
	}

	stray := providers.Resource{Kind: KindVIP, ID: "198.18.2.1/24 dev eth2"}
	err := b.Claim(ctxT(t), 3, append([]providers.Resource{stray}, rs...))
	var ce *providers.ClaimError
	if !errors.As(err, &ce) || len(ce.Failed) != 1 || ce.Failed[0].Resource != stray || len(ce.Moved) != 2 ||
		!strings.Contains(err.Error(), "eth2") {
		t.Fatalf("claim with a VIP on an unconfigured interface: err = %v, want it alone refused, naming eth2", err)
	}
	if _, err := b.provs[0].Owner(ctxT(t), inside); err == nil || !strings.Contains(err.Error(), "eth1") {
		t.Errorf("eth0's provider asked about eth1's VIP: err = %v, want a refusal naming eth1", err)
	}

	// The outside interface goes first: when its VIP cannot move, the
	// inside one is not touched (it would draw replies a does not have
	// the outside address to encrypt from).
	badOut := providers.Resource{Kind: KindVIP, ID: "198.18.0.300/24"}
	err = a.Claim(ctxT(t), 4, []providers.Resource{badOut, inside})
	if !errors.As(err, &ce) || len(ce.Failed) != 2 || len(ce.Moved) != 0 || !strings.Contains(err.Error(), "not added") {
		t.Fatalf("claim with a bad outside VIP: err = %v, want both failed, the inside one not added", err)
	}
	if l.hasOn(t, "a", "eth1", in) || !l.hasOn(t, "b", "eth1", in) {
		t.Fatal("the inside VIP moved although the outside one could not")
	}

	must(t, b.Release(ctxT(t), rs))
	if l.hasOn(t, "b", "eth0", out) || l.hasOn(t, "b", "eth1", in) {
		t.Error("VIPs still on b after Release")
	}
}

func TestSplitDev(t *testing.T) {
	for _, c := range []struct{ id, vip, dev string }{
		{"198.18.0.1/24", "198.18.0.1/24", ""},
		{"198.18.0.1/24 dev eth1", "198.18.0.1/24", "eth1"},
		{" 2001:db8::1/64  dev  in0 ", "2001:db8::1/64", "in0"},
	} {
		vip, dev, err := splitDev(c.id)
		if err != nil || vip != c.vip || dev != c.dev {
			t.Errorf("splitDev(%q) = %q, %q, %v; want %q, %q", c.id, vip, dev, err, c.vip, c.dev)
		}
	}
	for _, bad := range []string{"", "198.18.0.1/24 eth1", "198.18.0.1/24 dev", "198.18.0.1/24 dev a/b", "198.18.0.1/24 dev eth1 x"} {
		if _, _, err := splitDev(bad); err == nil {
			t.Errorf("splitDev(%q) accepted", bad)
		}
	}
}

// yieldLog is a slog handler that records, in order, the VIPs the
// provider logged as yielded.
type yieldLog struct {
	mu  sync.Mutex
	got []string
}

func (y *yieldLog) Enabled(context.Context, slog.Level) bool { return true }
func (y *yieldLog) WithAttrs([]slog.Attr) slog.Handler       { return y }
func (y *yieldLog) WithGroup(string) slog.Handler            { return y }
func (y *yieldLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "vip yielded" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "vip" {
			y.mu.Lock()
			y.got = append(y.got, a.Value.String())
			y.mu.Unlock()
		}
		return true
	})
	return nil
}

func (y *yieldLog) vips() []string {
	y.mu.Lock()
	defer y.mu.Unlock()
	return append([]string(nil), y.got...)
}
