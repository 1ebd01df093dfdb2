package hostlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
)

// Netns is one network namespace of a lab.
type Netns struct {
	lab  *Lab
	name string // full name, as `ip netns` knows it
	Tag  string // the short name the test gave it

	mu      sync.Mutex // guards the following fields
	charons []*Charon
	deleted bool
}

// Netns creates a network namespace with lo up. tag is a short name for
// logs and for the namespace's name; it must be unique within the lab.
func (l *Lab) Netns(tag string) *Netns {
	l.t.Helper()
	n := &Netns{lab: l, name: l.id + "-" + tag, Tag: tag}
	if _, err := run(context.Background(), "ip", "netns", "add", n.name); err != nil {
		l.t.Fatalf("creating namespace %s: %v", tag, err)
	}
	l.mu.Lock()
	l.namespaces = append(l.namespaces, n)
	l.mu.Unlock()
	n.IP("link", "set", "lo", "up")
	return n
}

// Name is the namespace's name for `ip netns`.
func (n *Netns) Name() string { return n.name }

// IP runs `ip -n NS args...` and fails the test on error.
func (n *Netns) IP(args ...string) {
	n.lab.t.Helper()
	if _, err := run(context.Background(), "ip", append([]string{"-n", n.name}, args...)...); err != nil {
		n.lab.t.Fatalf("in namespace %s: %v", n.Tag, err)
	}
}

// Sysctl sets a sysctl inside the namespace, e.g. Sysctl("net.ipv4.ip_forward", "1").
func (n *Netns) Sysctl(key, value string) {
	n.lab.t.Helper()
	if _, err := n.Exec(context.Background(), "sysctl", "-q", "-w", key+"="+value); err != nil {
		n.lab.t.Fatalf("in namespace %s: %v", n.Tag, err)
	}
}

// Exec runs a command inside the namespace (ip netns exec) with a bounded
// time and returns its combined output.
func (n *Netns) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	path, err := lookPath(name)
	if err != nil {
		return nil, err
	}
	return run(ctx, "ip", append([]string{"netns", "exec", n.name, path}, args...)...)
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn creates
// stay in the namespace after Do returns, which is how the test process
// (living in the host's namespace) talks to the lab.
func (n *Netns) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading the current namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(n.name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening namespace %s: %w", n.Tag, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering namespace %s: %w", n.Tag, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime ends a locked thread when
		// its goroutine exits, so no other goroutine runs in the wrong
		// namespace.
		return errors.Join(ferr, fmt.Errorf("leaving namespace %s: %w", n.Tag, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// DialContext dials from inside the namespace. It has the signature of
// net.Dialer.DialContext so probes can take it as their dial function.
func (n *Netns) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// ListenPacket opens a packet socket inside the namespace, e.g.
// ListenPacket(ctx, "ip4:icmp", "198.51.100.10") or "udp4".
func (n *Netns) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.Do(func() error {
		var err error
		c, err = (&net.ListenConfig{}).ListenPacket(ctx, network, address)
		return err
	})
	return c, err
}

// Veth joins two namespaces with a veth pair, sets both ends up and gives
// each its address (CIDR form, "" for none). Interface names need only be
// unique inside their namespace (at most 15 bytes).
func (l *Lab) Veth(a *Netns, aIf, aAddr string, b *Netns, bIf, bAddr string) {
	l.t.Helper()
	if _, err := run(context.Background(), "ip", "link", "add", aIf, "netns", a.name,
		"type", "veth", "peer", "name", bIf, "netns", b.name); err != nil {
		l.t.Fatalf("creating veth %s/%s-%s/%s: %v", a.Tag, aIf, b.Tag, bIf, err)
	}
	for _, end := range []struct {
		ns       *Netns
		dev, adr string
	}{{a, aIf, aAddr}, {b, bIf, bAddr}} {
		if end.adr != "" {
			end.ns.IP("addr", "add", end.adr, "dev", end.dev)
		}
		end.ns.IP("link", "set", end.dev, "up")
	}
}

// delete stops the namespace's charons and removes it.
func (n *Netns) delete() error {
	n.mu.Lock()
	if n.deleted {
		n.mu.Unlock()
		return nil
	}
	n.deleted = true
	charons := n.charons
	n.mu.Unlock()
	var errs []error
	for _, c := range charons {
		if err := c.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	// Anything else a test started in the namespace must not outlive it.
	killNamespacePids(n.name)
	if out, err := run(context.Background(), "ip", "netns", "del", n.name); err != nil {
		if !strings.Contains(string(out), "No such file") {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w", n.Tag, err))
		}
	}
	return errors.Join(errs...)
}
