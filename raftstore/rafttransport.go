package raftstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/internal/pki"
)

// boundTransport is the Store's raft.Transport. Outgoing RPCs go through
// one raft.NetworkTransport, as they always did. Incoming connections do
// not: each gets a NetworkTransport of its own, and every RPC it decodes
// is checked against the certificate of that one connection (peerAuthz)
// before Raft sees it, heartbeats included.
//
// Why this shape: a NetworkTransport hands the RPCs of all its
// connections to one Consumer channel and keeps no trace of the
// connection an RPC came on, so a filter on that channel cannot know
// whose certificate sent it. Decoding the wire format here instead would
// copy hashicorp/raft's protocol and silently miss the next RPC type it
// adds. One NetworkTransport per connection keeps raft's own decoder,
// heartbeat fast path and answers, and makes "the connection this RPC
// came on" exact. It costs a goroutine and a NetworkTransport per
// accepted connection; Raft keeps a few long-lived ones per peer.
type boundTransport struct {
	*raft.NetworkTransport // outgoing RPCs; its listener never accepts

	layer    *streamLayer
	authz    *peerAuthz
	refusals *refusalLog
	hl       hclog.Logger

	rpcCh     chan raft.RPC
	heartbeat atomic.Pointer[func(raft.RPC)]

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

var (
	_ raft.Transport   = (*boundTransport)(nil)
	_ raft.WithClose   = (*boundTransport)(nil)
	_ raft.WithPreVote = (*boundTransport)(nil)
)

func newBoundTransport(layer *streamLayer, authz *peerAuthz, refusals *refusalLog, hl hclog.Logger, timeout time.Duration) *boundTransport {
	ctx, cancel := context.WithCancel(context.Background())
	b := &boundTransport{
		NetworkTransport: raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: newDialer(layer), MaxPool: 3, Timeout: timeout, Logger: hl,
		}),
		layer: layer, authz: authz, refusals: refusals, hl: hl,
		rpcCh: make(chan raft.RPC), ctx: ctx, cancel: cancel,
	}
	b.wg.Add(1)
	go b.acceptLoop()
	return b
}

// Consumer is where Raft reads the incoming RPCs that passed the check.
func (b *boundTransport) Consumer() <-chan raft.RPC { return b.rpcCh }

// SetHeartbeatHandler sets Raft's fast path for heartbeats; they are
// checked like every other RPC before it runs.
func (b *boundTransport) SetHeartbeatHandler(cb func(raft.RPC)) {
	if cb == nil {
		b.heartbeat.Store(nil)
		return
	}
	b.heartbeat.Store(&cb)
}

// Close stops accepting, closes every incoming connection, the outgoing
// transport and the stream layer under both. Safe twice.
func (b *boundTransport) Close() error {
	var err error
	b.closeOnce.Do(func() {
		b.cancel()
		b.wg.Wait()
		_ = b.NetworkTransport.Close()
		err = b.layer.Close()
	})
	return err
}

func (b *boundTransport) acceptLoop() {
	defer b.wg.Done()
	for {
		conn, err := b.layer.acceptRaft(b.ctx)
		if err != nil {
			return
		}
		b.serve(conn)
	}
}

// serve runs one accepted Raft connection: its own NetworkTransport
// decodes and answers, and a forwarding goroutine, which ends with the
// connection, checks each RPC before handing it to Raft.
func (b *boundTransport) serve(conn *tls.Conn) {
	pc := &peerConn{Conn: conn, peer: pki.PeerID(conn.ConnectionState()), serial: serialOf(conn), done: make(chan struct{})}
	if !b.authz.known(pc.peer) {
		// What it sends will likely be refused; it gets a few seconds to
		// send something that is not (see deliver), not a connection held
		// open for ever.
		_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
		pc.probation.Store(true)
	}
	in := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: &oneConn{conn: pc, addr: b.layer.Addr(), done: make(chan struct{})}, Logger: b.hl,
	})
	in.SetHeartbeatHandler(func(rpc raft.RPC) { b.heartbeatOn(pc, rpc) })
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer in.Close()
		defer pc.Close()
		for {
			select {
			case rpc := <-in.Consumer():
				b.deliver(pc, rpc)
			case <-pc.done:
				return
			case <-b.ctx.Done():
				return
			}
		}
	}()
}

// deliver hands a checked RPC to Raft, or refuses it.
func (b *boundTransport) deliver(pc *peerConn, rpc raft.RPC) {
	if err := b.check(pc, rpc); err != nil {
		b.refuse(pc, rpc, err)
		return
	}
	pc.admitted()
	select {
	case b.rpcCh <- rpc:
	case <-b.ctx.Done():
		rpc.Respond(nil, raft.ErrTransportShutdown)
	}
}

// heartbeatOn runs on the connection's own goroutine (Raft's fast path,
// which keeps heartbeats from queueing behind log writes).
func (b *boundTransport) heartbeatOn(pc *peerConn, rpc raft.RPC) {
	if err := b.check(pc, rpc); err != nil {
		b.refuse(pc, rpc, err)
		return
	}
	pc.admitted()
	if fn := b.heartbeat.Load(); fn != nil {
		(*fn)(rpc)
		return
	}
	select {
	case b.rpcCh <- rpc:
	case <-b.ctx.Done():
		rpc.Respond(nil, raft.ErrTransportShutdown)
	}
}

// errWindingDown answers what a connection sends after a refused
// InstallSnapshot (bytes that were buffered behind it).
var errWindingDown = errors.New("an earlier InstallSnapshot on this connection was refused; it is closing")

func (b *boundTransport) check(pc *peerConn, rpc raft.RPC) error {
	if pc.refused.Load() {
		return errWindingDown
	}
	return b.authz.checkRaft(b.ctx, pc.peer, rpc.Command)
}

// refuse answers rpc with why it was refused and logs it. The connection
// stays open (every RPC on it is checked, and a peer whose membership
// changes may be heard again), except after a refused InstallSnapshot.
func (b *boundTransport) refuse(pc *peerConn, rpc raft.RPC, err error) {
	if !errors.Is(err, errWindingDown) {
		b.refusals.refused("a raft RPC", pc.peer, err, "remote", pc.RemoteAddr().String(), "serial", pc.serial)
	}
	if rpc.Reader != nil {
		// InstallSnapshot: the snapshot follows the request on the
		// stream, as long as the request claims; reading it all would
		// let the sender choose how much this node reads for nothing.
		// The connection winds down instead: reads end now (peerConn),
		// so this only empties what is buffered, no part of the
		// snapshot is decoded as a request, and the connection closes
		// after the answer.
		pc.refuse()
		_, _ = io.Copy(io.Discard, rpc.Reader)
	}
	rpc.Respond(nil, fmt.Errorf("refused by %s: %w", b.authz.self, err))
}

// peerConn is an accepted Raft connection and the node its certificate
// names. Once refuse is called it winds down: reads end (EOF, so raft's
// handler stops without an error of its own), the next answer is its last
// write, and it closes after that.
type peerConn struct {
	*tls.Conn
	peer, serial string
	// probation: the peer was not known when it connected, and nothing
	// it sent has been accepted yet; a deadline bounds the connection
	// until then (see serve).
	probation atomic.Bool
	refused   atomic.Bool
	// closing: this side closes the connection, so a read it breaks is
	// the end of the stream, not an error worth raft's log.
	closing   atomic.Bool
	done      chan struct{}
	closeOnce sync.Once
}

// admitted lifts probation: an RPC on the connection was accepted.
func (c *peerConn) admitted() {
	if c.probation.CompareAndSwap(true, false) {
		_ = c.Conn.SetDeadline(time.Time{})
	}
}

// refuse winds the connection down.
func (c *peerConn) refuse() { c.refused.Store(true) }

func (c *peerConn) Read(p []byte) (int, error) {
	if c.refused.Load() {
		return 0, io.EOF
	}
	n, err := c.Conn.Read(p)
	if err != nil && (c.refused.Load() || c.closing.Load() || (c.probation.Load() && isTimeout(err))) {
		return n, io.EOF
	}
	return n, err
}

func (c *peerConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.refused.Load() {
		c.Close()
	}
	return n, err
}

func (c *peerConn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		c.closing.Store(true)
		err = c.Conn.Close()
		close(c.done)
	})
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// oneConn is the listener of an incoming connection's NetworkTransport:
// it hands over its one connection, then blocks until the transport
// closes it.
type oneConn struct {
	conn   net.Conn
	addr   net.Addr
	handed atomic.Bool
	done   chan struct{}
	once   sync.Once
}

func (l *oneConn) Accept() (net.Conn, error) {
	if l.handed.CompareAndSwap(false, true) {
		return l.conn, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConn) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConn) Addr() net.Addr { return l.addr }

func (l *oneConn) Dial(raft.ServerAddress, time.Duration) (net.Conn, error) {
	return nil, errors.New("an incoming connection's transport does not dial")
}

// dialer is the stream layer of the outgoing NetworkTransport: it dials
// through the layer and never accepts (incoming connections are
// boundTransport's).
type dialer struct {
	*streamLayer
	done chan struct{}
	once sync.Once
}

func newDialer(l *streamLayer) *dialer { return &dialer{streamLayer: l, done: make(chan struct{})} }

func (d *dialer) Accept() (net.Conn, error) {
	<-d.done
	return nil, net.ErrClosed
}

// Close ends Accept; the layer itself is the Store's to close.
func (d *dialer) Close() error {
	d.once.Do(func() { close(d.done) })
	return nil
}
