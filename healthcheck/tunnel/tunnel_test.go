package tunnel

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/healthcheck/internal/vicitest"
)

var loopback = netip.MustParseAddr("127.0.0.1")

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// echoServer stands in for an RFC 862 echo service behind the tunnel. It
// answers request number n (from 1) with reply(payload, n).
func echoServer(t *testing.T, reply func(p []byte, n int) [][]byte) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for n := 1; ; n++ {
			k, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			for _, out := range reply(append([]byte(nil), buf[:k]...), n) {
				_, _ = c.WriteToUDP(out, from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); wg.Wait() })
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

func TestUDPEcho(t *testing.T) {
	port := echoServer(t, func(p []byte, n int) [][]byte {
		stray := append([]byte("not ours"), p...)
		return [][]byte{stray, p}
	})
	e, err := NewEcho(EchoConfig{Target: loopback, Source: loopback, Method: UDP, Port: port, Count: 3, Need: 3, Gap: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Run(ctxT(t, 2*time.Second)); err != nil {
		t.Fatal(err)
	}
}

func TestUDPEchoLoss(t *testing.T) {
	var seen atomic.Int32
	port := echoServer(t, func(p []byte, n int) [][]byte {
		seen.Add(1)
		if n == 2 || n > 3 {
			return [][]byte{p} // of the first run, only the second request comes back
		}
		return nil
	})
	e, err := NewEcho(EchoConfig{Target: loopback, Source: loopback, Method: UDP, Port: port, Count: 3, Need: 2, Gap: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	err = e.Run(ctxT(t, 300*time.Millisecond))
	if !errors.Is(err, ErrNoEcho) || !strings.Contains(err.Error(), "1 of 3 replies (needed 2)") {
		t.Fatalf("got %v", err)
	}
	if seen.Load() != 3 {
		t.Fatalf("server saw %d requests, want 3 (bounded count)", seen.Load())
	}
	one, _ := NewEcho(EchoConfig{Target: loopback, Source: loopback, Method: UDP, Port: port, Count: 3, Gap: 5 * time.Millisecond})
	if err := one.Run(ctxT(t, time.Second)); err != nil {
		t.Fatalf("one reply of three should pass with Need 1: %v", err)
	}
}

func TestICMPEchoLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: ICMP echo needs a raw socket (root)")
	}
	e, err := NewEcho(EchoConfig{Target: loopback, Source: loopback, Count: 2, Need: 2, Gap: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Run(ctxT(t, 2*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Nothing answers from an address no host has: 198.18.0.0/15 is
	// unrouted here, so the send fails or nothing comes back.
	none, _ := NewEcho(EchoConfig{Target: netip.MustParseAddr("198.18.255.254"), Source: loopback, Count: 1})
	if err := none.Run(ctxT(t, 200*time.Millisecond)); err == nil {
		t.Fatal("echo to nowhere passed")
	}
}

func TestNewEchoValidates(t *testing.T) {
	for _, cfg := range []EchoConfig{
		{Target: loopback},
		{Source: loopback},
		{Target: loopback, Source: loopback, Count: 2, Need: 3},
		{Target: loopback, Source: loopback, Count: 101},
		{Target: loopback, Source: loopback, Method: 9},
		{Target: netip.MustParseAddr("::1"), Source: netip.MustParseAddr("::1")},
	} {
		if _, err := NewEcho(cfg); err == nil {
			t.Errorf("accepted %+v", cfg)
		}
	}
}

// children builds list-sa events: one IKE_SA "gw" with the given child
// (uniqueid, packets-in) pairs.
func children(cs ...[2]int) [][]vicitest.Item {
	var items []vicitest.Item
	for _, c := range cs {
		id := strconv.Itoa(c[0])
		items = append(items, vicitest.Sec("gw-"+id,
			vicitest.KV("name", "gw"), vicitest.KV("uniqueid", id), vicitest.KV("state", "INSTALLED"),
			vicitest.KV("bytes-in", strconv.Itoa(c[1]*84)), vicitest.KV("packets-in", strconv.Itoa(c[1])),
			vicitest.KV("bytes-out", "0"), vicitest.KV("packets-out", "0"),
		))
	}
	return [][]vicitest.Item{{vicitest.Sec("gw", vicitest.KV("uniqueid", "1"), vicitest.Sec("child-sas", items...))}}
}

func TestCounters(t *testing.T) {
	s := vicitest.Start(t)
	var mu sync.Mutex
	cur := children([2]int{1, 10})
	s.Stream("list-sas", "list-sa", func() [][]vicitest.Item { mu.Lock(); defer mu.Unlock(); return cur })
	set := func(v [][]vicitest.Item) { mu.Lock(); cur = v; mu.Unlock() }
	expect := true
	c, err := NewCounters(CountersConfig{Socket: s.Path, IKE: "gw", Child: "gw", Expect: func() bool { return expect }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 5*time.Second)
	if err := c.Run(ctx); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	set(children([2]int{1, 12}))
	if err := c.Run(ctx); err != nil {
		t.Fatalf("moving: %v", err)
	}
	if err := c.Run(ctx); !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), "packets in 12") {
		t.Fatalf("stalled: %v", err)
	}
	expect = false
	if err := c.Run(ctx); err != nil {
		t.Fatalf("no traffic expected: %v", err)
	}
	expect = true
	// Rekeyed: a new CHILD_SA that has carried packets counts as moving,
	// even with fewer packets than the old one had.
	set(children([2]int{2, 3}))
	if err := c.Run(ctx); err != nil {
		t.Fatalf("rekeyed: %v", err)
	}
	set(children())
	if err := c.Run(ctx); !errors.Is(err, ErrNoChildSA) {
		t.Fatalf("gone: %v", err)
	}
	got, err := ListChildren(ctx, s.Path, "", "")
	if err != nil || len(got) != 0 {
		t.Fatalf("list: %v %v", got, err)
	}
}

func TestCountersVICIDown(t *testing.T) {
	s := vicitest.Start(t)
	s.SetHang(true)
	c, _ := NewCounters(CountersConfig{Socket: s.Path, Child: "gw"})
	if err := c.Run(ctxT(t, 200*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging VICI: %v", err)
	}
	if _, err := NewCounters(CountersConfig{Socket: s.Path}); err == nil {
		t.Fatal("no child name accepted")
	}
}
