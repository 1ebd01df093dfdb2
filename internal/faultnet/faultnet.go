// Package faultnet is a loopback TCP network whose links between named
// nodes can be cut and healed, and delayed. It stands in for the network
// between gateways in the in-process cluster tests and the demo: the
// connections are real TCP (and carry real mutual TLS above them); only
// their delivery is switched off, the way a partition or a dead host would,
// or held back, the way a loaded network's latency and jitter would.
package faultnet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrCut is returned by I/O on a link that is cut.
var ErrCut = errors.New("faultnet: link cut")

// Net is a set of nodes on loopback with switchable links.
type Net struct {
	mu       sync.Mutex        // guards the following fields
	byAddr   map[string]string // listen address → node
	dialers  map[string]string // dialer's local address → node
	cut      map[[2]string]bool
	isolated map[string]bool
	conns    map[*conn]struct{}

	// fixed and jitter delay every Write on every link (SetDelay).
	fixed, jitter atomic.Int64
}

// New returns a network with every link up.
func New() *Net {
	return &Net{byAddr: map[string]string{}, dialers: map[string]string{}, cut: map[[2]string]bool{},
		isolated: map[string]bool{}, conns: map[*conn]struct{}{}}
}

func pair(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

// blockedLocked reports whether traffic between a and b is cut.
func (n *Net) blockedLocked(a, b string) bool {
	return n.isolated[a] || n.isolated[b] || n.cut[pair(a, b)]
}

// Listen listens on loopback for node.
func (n *Net) Listen(node, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.byAddr[ln.Addr().String()] = node
	n.mu.Unlock()
	return &listener{Listener: ln, n: n, node: node}, nil
}

// DialContext dials addr as node from.
func (n *Net) DialContext(ctx context.Context, from, addr string) (net.Conn, error) {
	n.mu.Lock()
	to, known := n.byAddr[addr]
	blocked := known && n.blockedLocked(from, to)
	n.mu.Unlock()
	if blocked {
		// A cut link looks like a host that does not answer.
		<-ctx.Done()
		return nil, fmt.Errorf("dialing %s (%s) from %s: %w", addr, to, from, ErrCut)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.dialers[c.LocalAddr().String()] = from
	wc := newConn(c, n, from, to)
	n.conns[wc] = struct{}{}
	n.mu.Unlock()
	return wc, nil
}

// Cut cuts the link between a and b in both directions.
func (n *Net) Cut(a, b string) { n.update(func() { n.cut[pair(a, b)] = true }) }

// Partition cuts every link between the two groups.
func (n *Net) Partition(left, right []string) {
	n.update(func() {
		for _, a := range left {
			for _, b := range right {
				n.cut[pair(a, b)] = true
			}
		}
	})
}

// Isolate cuts every link of node (a crashed or unplugged host).
func (n *Net) Isolate(node string) { n.update(func() { n.isolated[node] = true }) }

// Heal restores every link.
func (n *Net) Heal() {
	n.update(func() {
		n.cut = map[[2]string]bool{}
		n.isolated = map[string]bool{}
	})
}

// SetDelay delays every Write on every link, open now or opened later, by
// fixed plus a random duration in [0, jitter], drawn afresh for each Write:
// the latency and jitter of a loaded network, without loss. A link keeps
// its order: its writes wait one after the other, each inside Write. Zero
// for both turns the delay off. Cut, Isolate and Heal work as without it;
// a Write whose link is cut while it waits fails with ErrCut.
func (n *Net) SetDelay(fixed, jitter time.Duration) {
	n.fixed.Store(int64(max(fixed, 0)))
	n.jitter.Store(int64(max(jitter, 0)))
}

// SetJitter sets the random part of the delay (see SetDelay) to [0, upTo]
// and keeps the fixed part; 0 turns the jitter off.
func (n *Net) SetJitter(upTo time.Duration) { n.jitter.Store(int64(max(upTo, 0))) }

// Delay returns the delay's fixed part and the jitter's bound.
func (n *Net) Delay() (fixed, jitter time.Duration) {
	return time.Duration(n.fixed.Load()), time.Duration(n.jitter.Load())
}

// writeDelay draws the delay of one Write.
func (n *Net) writeDelay() time.Duration {
	d := n.fixed.Load()
	if j := n.jitter.Load(); j > 0 {
		d += rand.Int64N(j + 1)
	}
	return time.Duration(d)
}

// update changes the link table and closes connections it cuts.
func (n *Net) update(fn func()) {
	n.mu.Lock()
	fn()
	var kill []*conn
	for c := range n.conns {
		if c.remote != "" && n.blockedLocked(c.local, c.remote) {
			kill = append(kill, c)
		}
	}
	n.mu.Unlock()
	for _, c := range kill {
		c.Close()
	}
}

type listener struct {
	net.Listener
	n    *Net
	node string
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.n.mu.Lock()
		from := l.n.dialers[c.RemoteAddr().String()]
		if from != "" && l.n.blockedLocked(l.node, from) {
			l.n.mu.Unlock()
			c.Close()
			continue
		}
		wc := newConn(c, l.n, l.node, from)
		l.n.conns[wc] = struct{}{}
		l.n.mu.Unlock()
		return wc, nil
	}
}

type conn struct {
	net.Conn
	n             *Net
	local, remote string
	closeOnce     sync.Once
	closed        chan struct{} // closed by Close: ends a delayed Write's wait
	// wmu orders writes: a delayed Write holds it while it waits, so a
	// later Write cannot overtake it.
	wmu sync.Mutex
}

func newConn(c net.Conn, n *Net, local, remote string) *conn {
	return &conn{Conn: c, n: n, local: local, remote: remote, closed: make(chan struct{})}
}

func (c *conn) check() error {
	if c.remote == "" {
		return nil
	}
	c.n.mu.Lock()
	blocked := c.n.blockedLocked(c.local, c.remote)
	c.n.mu.Unlock()
	if blocked {
		c.Close()
		return ErrCut
	}
	return nil
}

func (c *conn) Read(p []byte) (int, error) {
	if err := c.check(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *conn) Write(p []byte) (int, error) {
	if err := c.check(); err != nil {
		return 0, err
	}
	// Taken even without a delay: a Write must not overtake one that is
	// still waiting out a delay set just before.
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if d := c.n.writeDelay(); d > 0 {
		if err := c.wait(d); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(p)
}

// wait sleeps d, or until the conn is closed (a cut closes it), and then
// checks the link again: the delay must not carry data across a cut.
func (c *conn) wait(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.closed:
	}
	if err := c.check(); err != nil {
		return err
	}
	select {
	case <-c.closed:
		return net.ErrClosed
	default:
		return nil
	}
}

func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closed)
		err = c.Conn.Close()
		c.n.mu.Lock()
		delete(c.n.conns, c)
		if c.remote != "" && c.n.byAddr[c.Conn.RemoteAddr().String()] == "" {
			delete(c.n.dialers, c.Conn.LocalAddr().String())
		}
		c.n.mu.Unlock()
	})
	return err
}
