package raftstore

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/internal/pki"
)

// Network opens the TCP connections under the TLS layer. Production uses
// plain TCP; tests use one whose links they can cut (internal/faultnet).
type Network interface {
	Listen(node, addr string) (net.Listener, error)
	DialContext(ctx context.Context, from, addr string) (net.Conn, error)
}

// TCP is the production Network.
type TCP struct{}

func (TCP) Listen(_, addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
func (TCP) DialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// First byte a dialer writes after the TLS handshake: which service it wants.
const (
	muxRaft byte = 'R'
	muxRPC  byte = 'C'
)

const handshakeTimeout = 5 * time.Second

// streamLayer is mutual TLS on the Raft port: it accepts connections,
// routes them to Raft ('R', see boundTransport) or serves them as cluster
// RPC ('C': join, leave, health reports, forwarded operator requests), and
// dials both. Every RPC either way is bound to the peer's certificate
// (peerAuthz).
type streamLayer struct {
	node      string
	ln        net.Listener
	advertise net.Addr
	network   Network
	server    *tls.Config
	client    *tls.Config
	log       *slog.Logger
	authz     *peerAuthz
	refusals  *refusalLog
	rpc       func(ctx context.Context, peer string, req *RPCRequest) *RPCResponse

	raftConns chan *tls.Conn
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

func newStreamLayer(node string, ln net.Listener, advertise net.Addr, network Network, server, client *tls.Config,
	authz *peerAuthz, refusals *refusalLog, log *slog.Logger) *streamLayer {
	ctx, cancel := context.WithCancel(context.Background())
	s := &streamLayer{node: node, ln: ln, advertise: advertise, network: network, server: server, client: client,
		log: log, authz: authz, refusals: refusals, raftConns: make(chan *tls.Conn), ctx: ctx, cancel: cancel}
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

func (s *streamLayer) acceptLoop() {
	defer s.wg.Done()
	for {
		raw, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.log.Warn("accepting a peer connection", "err", err)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(raw)
		}()
	}
}

// serve authenticates one inbound connection and routes it.
func (s *streamLayer) serve(raw net.Conn) {
	conn := tls.Server(raw, s.server)
	ctx, cancel := context.WithTimeout(s.ctx, handshakeTimeout)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		s.log.Warn("refused a peer connection", "remote", raw.RemoteAddr().String(), "err", err)
		raw.Close()
		return
	}
	var kind [1]byte
	_ = conn.SetReadDeadline(time.Now().Add(handshakeTimeout))
	if _, err := io.ReadFull(conn, kind[:]); err != nil {
		conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	peer := pki.PeerID(conn.ConnectionState())
	switch kind[0] {
	case muxRaft:
		select {
		case s.raftConns <- conn:
		case <-s.ctx.Done():
			conn.Close()
		}
	case muxRPC:
		s.serveRPC(conn, peer)
	default:
		s.log.Warn("peer asked for an unknown service", "peer", peer, "service", kind[0])
		conn.Close()
	}
}

// acceptRaft returns the next connection a peer opened for Raft.
func (s *streamLayer) acceptRaft(ctx context.Context) (*tls.Conn, error) {
	select {
	case c := <-s.raftConns:
		return c, nil
	case <-ctx.Done():
		return nil, net.ErrClosed
	case <-s.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting and waits for the accept goroutines. Safe twice.
func (s *streamLayer) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.cancel()
		err = s.ln.Close()
		s.wg.Wait()
	})
	return err
}

// Addr is the advertised address.
func (s *streamLayer) Addr() net.Addr { return s.advertise }

// Dial implements raft.StreamLayer: the node that answers must be the one
// the configuration has at addr (peerAuthz.checkDialed).
func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	return s.dial(ctx, string(addr), muxRaft, func(peer string) error { return s.authz.checkDialed(string(addr), peer) })
}

// dial opens a connection to addr for service kind. accept, if set, sees
// the peer's node ID once the handshake has proven it and before the
// service byte is sent; its error ends the dial.
func (s *streamLayer) dial(ctx context.Context, addr string, kind byte, accept func(peer string) error) (*tls.Conn, error) {
	raw, err := s.network.DialContext(ctx, s.node, addr)
	if err != nil {
		return nil, fmt.Errorf("dialing peer %s: %w", addr, err)
	}
	conn := tls.Client(raw, s.client)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	if accept != nil {
		if err := accept(pki.PeerID(conn.ConnectionState())); err != nil {
			conn.Close()
			return nil, err
		}
	}
	if _, err := conn.Write([]byte{kind}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("selecting service on %s: %w", addr, err)
	}
	return conn, nil
}

// RPCRequest is a cluster RPC: one JSON request and one JSON response per
// connection. The caller's identity is its certificate, never the payload.
type RPCRequest struct {
	Op       string     `json:"op"` // join, leave, remove, health
	ID       string     `json:"id,omitempty"`
	Address  string     `json:"address,omitempty"`
	Role     Role       `json:"role,omitempty"`
	Priority int        `json:"priority,omitempty"`
	Health   *HealthCmd `json:"health,omitempty"`
	// Learner: join without a vote (see Store.JoinAsLearner).
	Learner bool `json:"learner,omitempty"`
	// Version is a joining node's build (MemberCmd.Version).
	Version string `json:"version,omitempty"`
}

// Cluster RPC operations the store serves itself.
const (
	opJoin  = "join"
	opLeave = "leave"
	opPing  = "ping"
	// opMember asks whether a node is in the callee's Raft configuration
	// (peerAuthz.vouched).
	opMember = "raft.member"
)

// CodeRefused is the Code of a cluster RPC the transport refused: the
// caller is not a member (peerAuthz.checkCall).
const CodeRefused = "refused"

// RPCResponse answers an RPCRequest.
type RPCResponse struct {
	Error  string `json:"error,omitempty"`
	Leader string `json:"leader,omitempty"`
	// Code classifies Error for forwarded operator requests, so the
	// forwarding node can map it back to a sentinel error.
	Code string `json:"code,omitempty"`
	// Result is an operator request's answer (JSON).
	Result json.RawMessage `json:"result,omitempty"`
	// Index is the leader's last log index after a join.
	Index uint64 `json:"index,omitempty"`
}

const maxRPCBytes = 1 << 20

func (s *streamLayer) serveRPC(conn *tls.Conn, peer string) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	req, err := readRPCRequest(conn)
	if err != nil {
		_ = json.NewEncoder(conn).Encode(&RPCResponse{Error: err.Error()})
		return
	}
	// The check is here, before any handler, so that no handler can
	// forget it: only a member is served, and a non-member only joins.
	if err := s.authz.checkCall(peer, req.Op); err != nil {
		s.refusals.refused("a cluster RPC", peer, err, "op", req.Op, "remote", conn.RemoteAddr().String(), "serial", serialOf(conn))
		_ = json.NewEncoder(conn).Encode(&RPCResponse{Error: fmt.Sprintf("refused by %s: %v", s.node, err), Code: CodeRefused})
		return
	}
	resp := &RPCResponse{Error: "no RPC handler"}
	if s.rpc != nil {
		resp = s.rpc(s.ctx, peer, req)
	}
	_ = json.NewEncoder(conn).Encode(resp)
}

// serialOf is the serial of a TLS connection's peer certificate, for logs.
func serialOf(conn *tls.Conn) string {
	if cs := conn.ConnectionState(); len(cs.PeerCertificates) > 0 {
		return pki.FormatSerial(cs.PeerCertificates[0].SerialNumber)
	}
	return ""
}

// readRPCRequest decodes one cluster RPC request of at most maxRPCBytes
// (FuzzReadRPCRequest).
func readRPCRequest(r io.Reader) (*RPCRequest, error) {
	var req RPCRequest
	if err := json.NewDecoder(io.LimitReader(r, maxRPCBytes)).Decode(&req); err != nil {
		return nil, fmt.Errorf("decoding request: %w", err)
	}
	return &req, nil
}

// call sends one RPC to addr. accept is as for dial.
func (s *streamLayer) call(ctx context.Context, addr string, req *RPCRequest, accept func(peer string) error) (*RPCResponse, error) {
	conn, err := s.dial(ctx, addr, muxRPC, accept)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("sending %s request to %s: %w", req.Op, addr, err)
	}
	var resp RPCResponse
	if err := json.NewDecoder(io.LimitReader(conn, maxRPCBytes)).Decode(&resp); err != nil {
		return nil, fmt.Errorf("reading %s response from %s: %w", req.Op, addr, err)
	}
	return &resp, nil
}
