//go:build linux

package linux

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/handoffvpn/handoff/providers"
)

// goneProbe is the owner query timeout of the claimer (a) in these tests:
// long enough that a claim that waited it out is unmistakable on any
// machine, however slow. The other node's (b's) only bounds its own
// claims of VIPs nobody holds yet, which are setup.
const goneProbe = 3 * time.Second

// goneProvider builds role's provider with probe timeout probe, peers for
// a and b, and its log lines in log.
func (l *lab) goneProvider(t *testing.T, role string, probe time.Duration, log *skipLog) *Provider {
	t.Helper()
	p, err := New(context.Background(), role, Settings{
		Interface: l.iface(role), Netns: l.name[role],
		AnnounceCount: 4, AnnounceInterval: "50ms", ProbeTimeout: probe.String(), StateDir: t.TempDir(),
		Peers:  map[string]string{"a": l.mac["a"].String(), "b": l.mac["b"].String()},
		Logger: slog.New(log),
	})
	if err != nil {
		t.Fatalf("linux provider for %s: %v", role, err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// timedClaim claims rs and returns how long the claim took.
func timedClaim(t *testing.T, p *Provider, term uint64, rs ...providers.Resource) time.Duration {
	t.Helper()
	start := time.Now()
	if err := p.Claim(ctxT(t), term, rs); err != nil {
		t.Fatalf("%s claiming %v at term %d: %v", p.node, rs, term, err)
	}
	return time.Since(start)
}

// send makes p's namespace send one UDP datagram to vip (the discard
// port), which starts the kernel's resolution of vip.
func send(t *testing.T, p *Provider, vip netip.Addr) {
	t.Helper()
	must(t, p.inNetns(func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(vip, 9).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	}))
}

// waitNeigh waits (5 s at most) until p's neighbour entry for vip
// satisfies ok, and returns it.
func waitNeigh(t *testing.T, p *Provider, vip netip.Addr, what string, ok func(neighEntry) bool) neighEntry {
	t.Helper()
	var e neighEntry
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if e = p.neighEntry(vip); ok(e) {
			return e
		}
	}
	t.Fatalf("%s's neighbour entry for %s is %+v, never %s", p.node, vip, e, what)
	return e
}

// sysctl writes a sysctl of p's network namespace.
func sysctl(t *testing.T, p *Provider, key, value string) {
	t.Helper()
	must(t, p.inNetns(func() error { return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644) }))
}

// TestLinuxVIPDeadHolderNotAsked: b holds three VIPs and dies as in the
// kernel lab (agent gone, link down). a's claim does not wait out the
// probe timeout for b when the caller declared b gone, or when a's kernel
// already failed to resolve the VIP; with neither, it does (as before).
func TestLinuxVIPDeadHolderNotAsked(t *testing.T) {
	l := newLab(t)
	aLog := &skipLog{}
	a, b, obs := l.goneProvider(t, "a", goneProbe, aLog), l.goneProvider(t, "b", 150*time.Millisecond, &skipLog{}), l.provider(t, "obs")
	declared := providers.Resource{Kind: KindVIP, ID: "198.18.0.100/24"}
	failed := providers.Resource{Kind: KindVIP, ID: "198.18.0.101/24"}
	unknown := providers.Resource{Kind: KindVIP, ID: "198.18.0.102/24"}
	vip := func(r providers.Resource) netip.Addr { return netip.MustParsePrefix(r.ID).Addr() }

	must(t, b.Claim(ctxT(t), 1, []providers.Resource{declared, failed, unknown}))
	if got := l.touch(t, obs, vip(declared)); got != l.mac["b"].String() {
		t.Fatalf("observer resolves the VIP to %q, want b's %s", got, l.mac["b"])
	}
	must(t, b.Close())
	link, err := l.nl["b"].LinkByName("eth0")
	must(t, err)
	must(t, l.nl["b"].LinkSetDown(link))

	t.Run("declared gone", func(t *testing.T) {
		a.KnownGone(2, "b", []string{"b"})
		took := timedClaim(t, a, 2, declared)
		if why := aLog.skipped(vip(declared)); !strings.Contains(why, "b is known gone") {
			t.Errorf("a's claim logged skip reason %q, want b known gone", why)
		}
		if took > goneProbe/2 {
			t.Errorf("claim from a dead holder declared gone took %v, want well under the probe timeout %v", took, goneProbe)
		}
		if !l.has(t, "a", vip(declared)) {
			t.Fatal("the VIP is not on a after its claim")
		}
		if got := l.waitMAC(t, vip(declared), l.mac["b"].String()); got != l.mac["a"].String() {
			t.Errorf("after a's claim the observer has %q for the VIP, want a's %s", got, l.mac["a"])
		}
	})

	t.Run("neighbour entry failed", func(t *testing.T) {
		// One broadcast probe, 100 ms: the kernel gives up on the dead
		// holder quickly, as it would on its own after about 3 s.
		sysctl(t, a, "net/ipv4/neigh/eth0/mcast_solicit", "1")
		sysctl(t, a, "net/ipv4/neigh/eth0/retrans_time_ms", "100")
		send(t, a, vip(failed))
		waitNeigh(t, a, vip(failed), "FAILED", func(e neighEntry) bool { return e.state == neighFailed })
		// No declaration for term 3: the kernel's evidence alone.
		took := timedClaim(t, a, 3, failed)
		if why := aLog.skipped(vip(failed)); !strings.Contains(why, "FAILED") {
			t.Errorf("a's claim logged skip reason %q, want the FAILED neighbour entry", why)
		}
		if took > goneProbe/2 {
			t.Errorf("claim of a VIP whose neighbour entry failed took %v, want well under the probe timeout %v", took, goneProbe)
		}
		if !l.has(t, "a", vip(failed)) {
			t.Fatal("the VIP is not on a after its claim")
		}
	})

	t.Run("no evidence: asks the dead holder", func(t *testing.T) {
		a.KnownGone(4, "b", nil) // a planned hand-over: b may still hold it
		took := timedClaim(t, a, 4, unknown)
		if why := aLog.skipped(vip(unknown)); why != "" {
			t.Errorf("a's claim skipped the owner query (%q) with no evidence that b is gone", why)
		}
		if took < goneProbe*9/10 {
			t.Errorf("claim took %v: it cannot have waited for b's answer (probe timeout %v)", took, goneProbe)
		}
		if !l.has(t, "a", vip(unknown)) {
			t.Fatal("the VIP is not on a after its claim")
		}
	})
}

// TestLinuxVIPLiveHolderStillAsked: with a live holder b, a's claim still
// queries it and tells it to yield when the declaration does not name b
// gone, and when the caller names the wrong previous holder but a's
// kernel resolves the VIP to b; and it still refuses b's higher term.
func TestLinuxVIPLiveHolderStillAsked(t *testing.T) {
	l := newLab(t)
	bLog := &skipLog{}
	a, b := l.goneProvider(t, "a", goneProbe, &skipLog{}), l.goneProvider(t, "b", 150*time.Millisecond, bLog)
	r := providers.Resource{Kind: KindVIP, ID: "198.18.0.100/24"}
	vip := netip.MustParseAddr("198.18.0.100")
	resolvesToB := func(e neighEntry) bool { return e.state == neighValid && e.mac == l.mac["b"].String() }

	must(t, b.Claim(ctxT(t), 1, []providers.Resource{r}))

	t.Run("planned hand-over", func(t *testing.T) {
		a.KnownGone(2, "b", []string{"c"}) // b alive, some other node gone
		timedClaim(t, a, 2, r)
		if !l.has(t, "a", vip) || l.has(t, "b", vip) {
			t.Fatalf("after a's claim: on a %v, on b %v; want only a (b told to yield)", l.has(t, "a", vip), l.has(t, "b", vip))
		}
		if !bLog.yielded(vip) {
			t.Error("b did not log the yield")
		}
	})

	t.Run("the segment overrules a wrong previous holder", func(t *testing.T) {
		must(t, b.Claim(ctxT(t), 3, []providers.Resource{r}))
		send(t, a, vip)
		waitNeigh(t, a, vip, "b's MAC", resolvesToB)
		a.KnownGone(4, "c", []string{"c"}) // the caller thinks c held it, and c is gone
		timedClaim(t, a, 4, r)
		if !l.has(t, "a", vip) || l.has(t, "b", vip) {
			t.Fatalf("after a's claim: on a %v, on b %v; want only a (b, which the VIP resolved to, told to yield)", l.has(t, "a", vip), l.has(t, "b", vip))
		}
	})

	t.Run("a live higher term is refused", func(t *testing.T) {
		r2 := providers.Resource{Kind: KindVIP, ID: "198.18.0.101/24"}
		vip2 := netip.MustParseAddr("198.18.0.101")
		must(t, b.Claim(ctxT(t), 6, []providers.Resource{r2}))
		send(t, a, vip2)
		waitNeigh(t, a, vip2, "b's MAC", resolvesToB)
		a.KnownGone(5, "c", []string{"c"})
		if err := a.Claim(ctxT(t), 5, []providers.Resource{r2}); !errors.Is(err, providers.ErrStaleTerm) {
			t.Fatalf("a claiming at term 5 what b holds at 6: err = %v, want ErrStaleTerm", err)
		}
		if l.has(t, "a", vip2) || !l.has(t, "b", vip2) {
			t.Fatalf("after the refused claim: on a %v, on b %v; want only b", l.has(t, "a", vip2), l.has(t, "b", vip2))
		}
	})
}

// TestKnownGoneTerms: a declaration holds for its own term only, and a
// late one for a lower term does not replace it.
func TestKnownGoneTerms(t *testing.T) {
	p := &Provider{node: "a"}
	p.KnownGone(7, "b", []string{"b"})
	p.KnownGone(6, "c", nil)
	if p.gone.term != 7 || p.gone.previous != "b" || !p.gone.gone["b"] {
		t.Fatalf("after declarations for 7 then 6: %+v, want the one for 7", p.gone)
	}
	for term, want := range map[uint64]bool{6: false, 7: true, 8: false} {
		if got := skipQuery(p.node, term, p.gone, neighEntry{}, nil, time.Second) != ""; got != want {
			t.Errorf("claim at term %d skips = %v, want %v", term, got, want)
		}
	}
	p.KnownGone(8, "b", nil)
	if skipQuery(p.node, 8, p.gone, neighEntry{}, nil, time.Second) != "" {
		t.Error("a declaration for 8 that names nobody gone still skips")
	}
}

// TestNeighEntryOf maps the kernel's neighbour states.
func TestNeighEntryOf(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x0b}
	for _, c := range []struct {
		n    netlink.Neigh
		want neighEntry
	}{
		{netlink.Neigh{State: netlink.NUD_FAILED, Updated: 250}, neighEntry{state: neighFailed, age: 2500 * time.Millisecond}},
		{netlink.Neigh{State: netlink.NUD_INCOMPLETE, Updated: 3}, neighEntry{state: neighIncomplete, age: 30 * time.Millisecond}},
		{netlink.Neigh{State: netlink.NUD_STALE, HardwareAddr: mac}, neighEntry{state: neighValid, mac: mac.String()}},
		{netlink.Neigh{State: netlink.NUD_REACHABLE, HardwareAddr: mac}, neighEntry{state: neighValid, mac: mac.String()}},
		{netlink.Neigh{State: netlink.NUD_REACHABLE}, neighEntry{}},
		{netlink.Neigh{State: netlink.NUD_NOARP}, neighEntry{}},
		{netlink.Neigh{State: netlink.NUD_NONE}, neighEntry{}},
	} {
		if got := neighEntryOf(c.n); got != c.want {
			t.Errorf("neighEntryOf(state %#x) = %+v, want %+v", c.n.State, got, c.want)
		}
	}
}

// skipLog is a slog handler that keeps, per VIP, the reason the provider
// logged for claiming without asking the holder, and the VIPs it yielded.
type skipLog struct {
	mu    sync.Mutex
	why   map[string]string
	yield map[string]bool
}

func (s *skipLog) Enabled(context.Context, slog.Level) bool { return true }
func (s *skipLog) WithAttrs([]slog.Attr) slog.Handler       { return s }
func (s *skipLog) WithGroup(string) slog.Handler            { return s }
func (s *skipLog) Handle(_ context.Context, r slog.Record) error {
	var vip, why string
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "vip":
			vip = a.Value.String()
		case "why":
			why = a.Value.String()
		}
		return true
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.Message {
	case "claiming without asking the holder":
		if s.why == nil {
			s.why = map[string]string{}
		}
		s.why[vip] = why
	case "vip yielded":
		if s.yield == nil {
			s.yield = map[string]bool{}
		}
		s.yield[vip] = true
	}
	return nil
}

func (s *skipLog) skipped(vip netip.Addr) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.why[vip.String()]
}

func (s *skipLog) yielded(vip netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.yield[vip.String()]
}
