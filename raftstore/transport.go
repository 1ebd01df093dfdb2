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

// streamLayer is a raft.StreamLayer over mutual TLS that also carries the
// cluster RPC (join, leave, health reports) on the same port.
type streamLayer struct {
	node      string
	ln        net.Listener
	advertise net.Addr
	network   Network
	server    *tls.Config
	client    *tls.Config
	log       *slog.Logger
	rpc       func(ctx context.Context, peer string, req *RPCRequest) *RPCResponse

	raftConns chan net.Conn
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(node string, ln net.Listener, advertise net.Addr, network Network, server, client *tls.Config, log *slog.Logger) *streamLayer {
	ctx, cancel := context.WithCancel(context.Background())
	s := &streamLayer{node: node, ln: ln, advertise: advertise, network: network, server: server, client: client,
		log: log, raftConns: make(chan net.Conn), ctx: ctx, cancel: cancel}
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
	peer := conn.ConnectionState().PeerCertificates[0].Subject.CommonName
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

// Accept implements net.Listener for raft.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.raftConns:
		return c, nil
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

// Dial implements raft.StreamLayer.
func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	return s.dial(ctx, string(addr), muxRaft)
}

func (s *streamLayer) dial(ctx context.Context, addr string, kind byte) (net.Conn, error) {
	raw, err := s.network.DialContext(ctx, s.node, addr)
	if err != nil {
		return nil, fmt.Errorf("dialing peer %s: %w", addr, err)
	}
	conn := tls.Client(raw, s.client)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
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
}

// RPCResponse answers an RPCRequest.
type RPCResponse struct {
	Error  string `json:"error,omitempty"`
	Leader string `json:"leader,omitempty"`
	// Code classifies Error for forwarded operator requests, so the
	// forwarding node can map it back to a sentinel error.
	Code string `json:"code,omitempty"`
	// Result is an operator request's answer (JSON).
	Result json.RawMessage `json:"result,omitempty"`
}

const maxRPCBytes = 1 << 20

func (s *streamLayer) serveRPC(conn net.Conn, peer string) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	req, err := readRPCRequest(conn)
	if err != nil {
		_ = json.NewEncoder(conn).Encode(&RPCResponse{Error: err.Error()})
		return
	}
	resp := &RPCResponse{Error: "no RPC handler"}
	if s.rpc != nil {
		resp = s.rpc(s.ctx, peer, req)
	}
	_ = json.NewEncoder(conn).Encode(resp)
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

// call sends one RPC to addr.
func (s *streamLayer) call(ctx context.Context, addr string, req *RPCRequest) (*RPCResponse, error) {
	conn, err := s.dial(ctx, addr, muxRPC)
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
