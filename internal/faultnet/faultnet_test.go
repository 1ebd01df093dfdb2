package faultnet

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// link opens one connection from node "b" to node "a" and returns both
// ends, each wrapped by the network.
func link(t *testing.T, n *Net) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := n.Listen("a", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialed, err = n.DialContext(ctx, "b", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dialed.Close() })
	// Accepted after the dial returned: the dialer is registered by then,
	// so the accepted end knows its peer and obeys cuts too.
	accepted, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return dialed, accepted
}

func TestDelayHoldsEachWrite(t *testing.T) {
	n := New()
	a, b := link(t, n)
	const fixed = 30 * time.Millisecond
	n.SetDelay(fixed, 5*time.Millisecond)
	for _, w := range []net.Conn{a, b} {
		start := time.Now()
		if _, err := w.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < fixed {
			t.Fatalf("a Write under a fixed delay of %v took %v", fixed, took)
		}
	}
	buf := make([]byte, 1)
	for _, r := range []net.Conn{b, a} {
		if _, err := io.ReadFull(r, buf); err != nil || buf[0] != 'x' {
			t.Fatalf("read %q, %v after a delayed write", buf, err)
		}
	}
}

func TestJitterKeepsOrder(t *testing.T) {
	n := New()
	a, b := link(t, n)
	n.SetJitter(2 * time.Millisecond)
	const count = 200
	errc := make(chan error, 1)
	go func() {
		var msg [4]byte
		for i := range uint32(count) {
			binary.BigEndian.PutUint32(msg[:], i)
			if _, err := a.Write(msg[:]); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	var msg [4]byte
	for i := range uint32(count) {
		if _, err := io.ReadFull(b, msg[:]); err != nil {
			t.Fatalf("reading message %d: %v", i, err)
		}
		if got := binary.BigEndian.Uint32(msg[:]); got != i {
			t.Fatalf("message %d arrived as number %d: jitter reordered the link", i, got)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestDelayIsDrawnWithinBoundsAndZeroTurnsItOff(t *testing.T) {
	n := New()
	if f, j := n.Delay(); f != 0 || j != 0 {
		t.Fatalf("a new network delays writes by %v + [0, %v]", f, j)
	}
	n.SetDelay(3*time.Millisecond, 2*time.Millisecond)
	varied := false
	first := n.writeDelay()
	for range 1000 {
		d := n.writeDelay()
		if d < 3*time.Millisecond || d > 5*time.Millisecond {
			t.Fatalf("drew a delay of %v, want 3ms..5ms", d)
		}
		varied = varied || d != first
	}
	if !varied {
		t.Fatal("1000 draws of a jittered delay were all equal")
	}
	n.SetJitter(0)
	for range 100 {
		if d := n.writeDelay(); d != 3*time.Millisecond {
			t.Fatalf("jitter off: drew %v, want the fixed 3ms", d)
		}
	}
	n.SetDelay(0, 0)
	for range 100 {
		if d := n.writeDelay(); d != 0 {
			t.Fatalf("delay off: drew %v", d)
		}
	}
	n.SetDelay(-time.Second, -time.Second)
	if d := n.writeDelay(); d != 0 {
		t.Fatalf("negative delay: drew %v", d)
	}
	// Off again, a write still goes through.
	a, b := link(t, n)
	if _, err := a.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(b, buf); err != nil || buf[0] != 'y' {
		t.Fatalf("read %q, %v", buf, err)
	}
}

func TestCutDuringDelayFailsTheWriteAndHealWorks(t *testing.T) {
	n := New()
	a, _ := link(t, n)
	n.SetDelay(time.Minute, 0)
	errc := make(chan error, 1)
	go func() {
		_, err := a.Write([]byte("lost"))
		errc <- err
	}()
	// Let the Write start waiting; the Cut must end it either way.
	time.Sleep(20 * time.Millisecond)
	n.Cut("a", "b")
	select {
	case err := <-errc:
		if !errors.Is(err, ErrCut) {
			t.Fatalf("a Write waiting out its delay when the link was cut returned %v, want ErrCut", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a Write waiting out a one-minute delay did not end when its link was cut")
	}

	n.Heal()
	n.SetDelay(10*time.Millisecond, time.Millisecond)
	a, b := link(t, n)
	start := time.Now()
	if _, err := a.Write([]byte("z")); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 10*time.Millisecond {
		t.Fatalf("after the heal a delayed Write took %v", took)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(b, buf); err != nil || buf[0] != 'z' {
		t.Fatalf("read %q, %v after the heal", buf, err)
	}
}
