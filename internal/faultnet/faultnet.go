// Package faultnet is a loopback TCP network whose links between named
// nodes can be cut and healed. It stands in for the network between
// gateways in the in-process cluster tests and the demo: the connections
// are real TCP (and carry real mutual TLS above them); only their delivery
// is switched off, the way a partition or a dead host would.
package faultnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
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
	wc := &conn{Conn: c, n: n, local: from, remote: to}
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
		wc := &conn{Conn: c, n: l.n, local: l.node, remote: from}
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
	return c.Conn.Write(p)
}

func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
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
