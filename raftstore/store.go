package raftstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/internal/buildinfo"
	"github.com/handoffvpn/handoff/internal/bulk"
	"github.com/handoffvpn/handoff/internal/pki"
)

// Config configures a Store.
type Config struct {
	NodeID string
	// BindAddr is the TCP listen address of Raft and the cluster RPC.
	BindAddr string
	// AdvertiseAddr is the address peers dial; defaults to the listener's.
	AdvertiseAddr string
	// DataDir holds the Raft log (wal/) and snapshots, mode 0700.
	DataDir string
	TLS     *pki.Material
	// Authorize, if set, further restricts which verified nodes may
	// connect (tls.allowed_nodes). It only narrows: what a connected node
	// may do is decided by its membership (see peerAuthz).
	Authorize pki.Authorize
	// Denied lists retired certificates (tls.deny_serials), refused on
	// every handshake, either way.
	Denied *pki.DenyList
	// Network defaults to TCP.
	Network Network

	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	SnapshotInterval   time.Duration
	SnapshotThreshold  uint64
	TrailingLogs       uint64
	// NoSync skips fsync of the log (tests and benchmarks only).
	NoSync bool
	// Lane paces the FSM's work (see package bulk); nil: unpaced.
	Lane *bulk.Lane

	Logger *slog.Logger
	// RaftLogLevel is the level of hashicorp/raft's own logs ("warn").
	RaftLogLevel string
	// Version is this node's build, recorded in its member entry when it
	// joins (default: buildinfo.Read's).
	Version string
}

// logCacheEntries is how many recent log entries the leader keeps in
// memory for replication: the feed commits one entry at a time, so a few
// cover the entries in flight; a follower further behind is served from
// the log on disk. At most 16 full sa-batch entries (~2.6 MB each at the
// default max_batch of 4096) stay referenced.
const logCacheEntries = 16

// Store is a node's Raft instance, its durable log and snapshots, the FSM
// and the authenticated transport.
type Store struct {
	cfg       Config
	log       *slog.Logger
	fsm       *FSM
	raft      *raft.Raft
	layer     *streamLayer
	authz     *peerAuthz
	transport *boundTransport
	logs      *logStore
	observer  *raft.Observer
	obsCh     chan raft.Observation
	extraRPC  func(ctx context.Context, peer string, req *RPCRequest) *RPCResponse
	stateHook func(raft.RaftState, time.Time)
	applyObs  atomic.Pointer[func(time.Duration, error)]
	obsDone   chan struct{}
	closed    chan struct{}
	// warmDone is closed when keepVotersWarm has returned.
	warmDone chan struct{}
	// heartbeat is the configured heartbeat timeout; leaderHeartbeat is
	// the one this node runs with while it leads (see applyHeartbeat).
	heartbeat, leaderHeartbeat time.Duration

	hbMu sync.Mutex // guards the following fields, and Raft's reloadable config
	// leading: this node is the leader; expedited: the lowered timeout
	// ExpediteElection asked for (0: none).
	leading   bool
	expedited time.Duration
}

// Open starts a node. It does not bootstrap or join: see Bootstrap and
// JoinCluster.
func Open(cfg Config) (*Store, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("opening raft store: node ID is empty")
	}
	if cfg.TLS == nil {
		return nil, errors.New("opening raft store: TLS material is required (Raft runs over mutual TLS only)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Network == nil {
		cfg.Network = TCP{}
	}
	if cfg.Version == "" {
		cfg.Version = buildinfo.Read().Version
	}
	log := cfg.Logger.With("node", cfg.NodeID)
	if err := cfg.Denied.Check(cfg.TLS.Cert.Leaf); err != nil {
		return nil, fmt.Errorf("opening raft store: this node's own %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data dir %s: %w", cfg.DataDir, err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("securing data dir %s: %w", cfg.DataDir, err)
	}
	s := &Store{cfg: cfg, log: log, fsm: NewFSM(log), closed: make(chan struct{})}
	s.fsm.SetLane(cfg.Lane)

	ln, err := cfg.Network.Listen(cfg.NodeID, cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", cfg.BindAddr, err)
	}
	adv := ln.Addr()
	if cfg.AdvertiseAddr != "" {
		a, err := net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("resolving advertise address %q: %w", cfg.AdvertiseAddr, err)
		}
		adv = a
	}
	policy := pki.Policy{Authorize: cfg.Authorize, Denied: cfg.Denied}
	s.authz = newPeerAuthz(cfg.NodeID, log)
	s.authz.ask = s.askMember
	refusals := newRefusalLog(log, 10*time.Second)
	s.layer = newStreamLayer(cfg.NodeID, ln, adv, cfg.Network,
		cfg.TLS.ServerConfig(policy), cfg.TLS.ClientConfig(policy), s.authz, refusals, log)
	s.layer.rpc = s.handleRPC

	hl := newRaftLogger(log, cfg.RaftLogLevel)
	s.transport = newBoundTransport(s.layer, s.authz, refusals, hl, 2*time.Second)

	s.logs, err = openLogStore(cfg.DataDir, cfg.NoSync, hl)
	if err != nil {
		s.transport.Close()
		return nil, err
	}
	fss, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hl)
	if err != nil {
		s.logs.Close()
		s.transport.Close()
		return nil, fmt.Errorf("opening snapshot store: %w", err)
	}
	snaps := &privateSnapshots{FileSnapshotStore: fss, dir: filepath.Join(cfg.DataDir, "snapshots")}
	if err := os.Chmod(snaps.dir, 0o700); err != nil {
		s.logs.Close()
		s.transport.Close()
		return nil, fmt.Errorf("securing snapshot dir: %w", err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hl
	rc.BatchApplyCh = true
	setDur(&rc.HeartbeatTimeout, cfg.HeartbeatTimeout)
	setDur(&rc.ElectionTimeout, cfg.ElectionTimeout)
	setDur(&rc.LeaderLeaseTimeout, cfg.LeaderLeaseTimeout)
	setDur(&rc.CommitTimeout, cfg.CommitTimeout)
	setDur(&rc.SnapshotInterval, cfg.SnapshotInterval)
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if err := raft.ValidateConfig(rc); err != nil {
		s.logs.Close()
		s.transport.Close()
		return nil, fmt.Errorf("raft timing: %w", err)
	}
	// Replication reads back the entries it sends and the term of the one
	// before them: without a cache, a read and a decode of the
	// whole entry (megabytes for a full sa-batch) per follower and send
	// from the disk. The cache keeps the last few entries in memory instead.
	cached, err := raft.NewLogCache(logCacheEntries, s.logs)
	if err != nil {
		s.logs.Close()
		s.transport.Close()
		return nil, fmt.Errorf("creating the raft log cache: %w", err)
	}
	s.heartbeat = rc.HeartbeatTimeout
	s.leaderHeartbeat = max(rc.LeaderLeaseTimeout, 5*time.Millisecond)
	s.raft, err = raft.NewRaft(rc, s.fsm, cached, s.logs, snaps, s.transport)
	if err != nil {
		s.logs.Close()
		s.transport.Close()
		return nil, fmt.Errorf("starting raft: %w", err)
	}
	s.authz.raft.Store(s.raft)
	s.obsCh = make(chan raft.Observation, 64)
	s.obsDone = make(chan struct{})
	s.observer = raft.NewObserver(s.obsCh, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.RaftState)
		return ok
	})
	s.raft.RegisterObserver(s.observer)
	go s.forwardObservations()
	s.warmDone = make(chan struct{})
	go func() {
		defer close(s.warmDone)
		s.keepVotersWarm()
	}()
	return s, nil
}

func setDur(dst *time.Duration, v time.Duration) {
	if v > 0 {
		*dst = v
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// OnStateChange registers fn to be called (from one goroutine, in order)
// with every Raft state change and the local time it was seen. It must be
// called before the node can change state, i.e. right after Open.
func (s *Store) OnStateChange(fn func(raft.RaftState, time.Time)) { s.stateHook = fn }

func (s *Store) forwardObservations() {
	defer close(s.obsDone)
	for {
		select {
		case <-s.closed:
			return
		case o := <-s.obsCh:
			if st, ok := o.Data.(raft.RaftState); ok {
				s.hbMu.Lock()
				s.leading = st == raft.Leader
				if err := s.applyHeartbeatLocked(); err != nil {
					s.log.Error("setting the raft heartbeat for the new state", "state", st.String(), "err", err)
				}
				s.hbMu.Unlock()
				if s.stateHook != nil {
					s.stateHook(st, time.Now())
				}
			}
		}
	}
}

// SetApplyObserver registers fn to be told, for every Apply on this node,
// how long the entry took to commit and be applied locally, and the commit
// error if any (the operator surface's commit latency metric). fn must not
// block.
func (s *Store) SetApplyObserver(fn func(took time.Duration, err error)) { s.applyObs.Store(&fn) }

// SetRPCHandler handles cluster RPC operations the store does not (health
// reports); it must be set before the node joins a cluster.
func (s *Store) SetRPCHandler(fn func(ctx context.Context, peer string, req *RPCRequest) *RPCResponse) {
	s.extraRPC = fn
}

// NodeID is this node's ID.
func (s *Store) NodeID() string { return s.cfg.NodeID }

// Addr is the advertised Raft address.
func (s *Store) Addr() string { return s.layer.Addr().String() }

// FSM is the node's state machine.
func (s *Store) FSM() *FSM { return s.fsm }

// Raft exposes the Raft instance for operator commands and tests.
func (s *Store) Raft() *raft.Raft { return s.raft }

// LeaderCh delivers leadership changes. A slow reader sees only the latest
// one: two trues in a row mean leadership was lost and regained in
// between. It is Raft's own LeaderCh, not Config.NotifyCh: Raft blocks on
// NotifyCh until it is read, and an agent that waits for its leader
// goroutine (itself waiting on a Raft future) before reading again would
// deadlock with it.
func (s *Store) LeaderCh() <-chan bool { return s.raft.LeaderCh() }

// IsLeader reports whether this node is the leader now.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// Term is the current Raft term.
func (s *Store) Term() uint64 { return s.raft.CurrentTerm() }

// LastContact is when this node last heard from a leader.
func (s *Store) LastContact() time.Time { return s.raft.LastContact() }

// State is this node's Raft state (follower, candidate, leader, shutdown).
func (s *Store) State() raft.RaftState { return s.raft.State() }

// ExpediteElection lowers this node's heartbeat timeout to after, so that
// a follower that has not heard from its leader for that long starts an
// election now instead of at its randomised timeout (1–2 × the configured
// one). Raft re-checks the last contact itself: a follower that did hear
// from the leader within after stays a follower. RestoreHeartbeat puts the
// configured timeout back. after must not be below the leader lease
// (Raft refuses it) and must not be below twice the lease, or a cut-off
// leader may not have stepped down yet (the agent's detector guarantees
// this).
func (s *Store) ExpediteElection(after time.Duration) error {
	if after >= s.heartbeat {
		return fmt.Errorf("lowering the heartbeat timeout to %s: it is %s already", after, s.heartbeat)
	}
	s.hbMu.Lock()
	defer s.hbMu.Unlock()
	s.expedited = after
	if err := s.applyHeartbeatLocked(); err != nil {
		s.expedited = 0
		return fmt.Errorf("lowering the heartbeat timeout to %s: %w", after, err)
	}
	return nil
}

// HeartbeatTimeout is the configured heartbeat timeout (Raft's own
// failure detector, and the bound ExpediteElection must stay under).
func (s *Store) HeartbeatTimeout() time.Duration { return s.heartbeat }

// RestoreHeartbeat puts the configured heartbeat timeout back after
// ExpediteElection.
func (s *Store) RestoreHeartbeat() error {
	s.hbMu.Lock()
	defer s.hbMu.Unlock()
	s.expedited = 0
	if err := s.applyHeartbeatLocked(); err != nil {
		return fmt.Errorf("restoring the heartbeat timeout %s: %w", s.heartbeat, err)
	}
	return nil
}

// applyHeartbeatLocked sets Raft's heartbeat timeout for this node's
// state.
//
// A leader sends a heartbeat every 1–2 × a tenth of the heartbeat timeout
// and steps down when a quorum has not answered within the lease. At the
// defaults (150 ms, lease 50 ms) heartbeats went out every 15–30 ms, which
// left a heartbeat's round trip as little as 20 ms: a scheduling hiccup of
// that size on a busy node cost the leader its lease. The heartbeat
// timeout has no other use on a leader, so a leader runs with its lease as
// the timeout (Raft's floor), sending every 5–10 ms: a round trip may take
// 40 ms before the lease is at risk. Followers keep the configured timeout,
// and a node that stops leading gets it back before it could matter: an
// ex-leader's early election is refused by the followers that still have
// a leader, and Raft itself re-checks the last contact.
func (s *Store) applyHeartbeatLocked() error {
	want := s.heartbeat
	switch {
	case s.leading:
		want = s.leaderHeartbeat
	case s.expedited > 0:
		want = s.expedited
	}
	rc := s.raft.ReloadableConfig()
	if rc.HeartbeatTimeout == want {
		return nil
	}
	rc.HeartbeatTimeout = want
	return s.raft.ReloadConfig(rc)
}

// Leader returns the current leader's ID and address, if known.
func (s *Store) Leader() (id, addr string) {
	a, i := s.raft.LeaderWithID()
	return string(i), string(a)
}

// HasState reports whether the data dir already holds Raft state.
func (s *Store) HasState() (bool, error) {
	last, err := s.logs.LastIndex()
	if err != nil {
		return false, fmt.Errorf("reading raft log: %w", err)
	}
	return last > 0 || s.raft.LastIndex() > 0, nil
}

// Server is a voter for Bootstrap.
type Server struct {
	ID, Address string
}

// Bootstrap creates a new cluster with servers as voters. It does nothing on
// a node that already has state, so restarting with bootstrap set is safe.
func (s *Store) Bootstrap(servers []Server) error {
	has, err := s.HasState()
	if err != nil {
		return err
	}
	if has {
		return nil
	}
	var cfg raft.Configuration
	for _, srv := range servers {
		cfg.Servers = append(cfg.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(srv.ID), Address: raft.ServerAddress(srv.Address)})
	}
	if err := s.raft.BootstrapCluster(cfg).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrapping cluster: %w", err)
	}
	return nil
}

// timeoutOf turns a context deadline into a raft timeout (0 = none).
func timeoutOf(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d > 0 {
			return d
		}
		return time.Millisecond
	}
	return 0
}

// Apply commits a command and returns its log position. The FSM's refusal
// comes back as the error.
func (s *Store) Apply(ctx context.Context, payload any) (ApplyResult, error) {
	data, err := Encode(payload)
	if err != nil {
		return ApplyResult{}, err
	}
	return s.ApplyRaw(ctx, data)
}

// ApplyRaw commits an already encoded entry. Tests use it to feed the FSM
// malformed input through the real log. When ctx ends first, the entry may
// still commit: the error says only that the caller stopped waiting.
func (s *Store) ApplyRaw(ctx context.Context, data []byte) (ApplyResult, error) {
	start := time.Now()
	f, err := await(ctx, func() (raft.ApplyFuture, error) {
		f := s.raft.Apply(data, timeoutOf(ctx))
		return f, f.Error()
	})
	if obs := s.applyObs.Load(); obs != nil {
		(*obs)(time.Since(start), err)
	}
	if err != nil {
		return ApplyResult{}, fmt.Errorf("committing log entry: %w", err)
	}
	res, _ := f.Response().(ApplyResult)
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

// Barrier waits until every committed entry is applied locally.
func (s *Store) Barrier(ctx context.Context) error {
	_, err := await(ctx, func() (struct{}, error) { return struct{}{}, s.raft.Barrier(timeoutOf(ctx)).Error() })
	if err != nil {
		return fmt.Errorf("raft barrier: %w", err)
	}
	return nil
}

// await runs op, a Raft call that takes no context, and waits for it or
// for ctx to end. Raft answers every future by its shutdown at the latest,
// so an abandoned op's goroutine ends too.
func await[T any](ctx context.Context, op func() (T, error)) (T, error) {
	if ctx.Done() == nil {
		return op()
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := op()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// Servers returns the Raft configuration.
func (s *Store) Servers() ([]raft.Server, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("reading raft configuration: %w", err)
	}
	return f.Configuration().Servers, nil
}

// ErrNotLeader is returned by leader-only operations on a follower.
var ErrNotLeader = errors.New("not the leader")

// Join adds a voter (leader only). It is idempotent: the same ID and address
// only refreshes the member's metadata; a changed address replaces the old
// entry. An address another member holds is refused: join is open to any
// node the CA certified (it is how a node becomes a member), so it must not
// be a way to evict one; the operator removes the old node first. A member
// that joined as a learner is promoted.
func (s *Store) Join(ctx context.Context, m MemberCmd) error {
	return s.join(ctx, m, false)
}

// JoinAsLearner adds a non-voting member (leader only), the first half of a
// join: the leader's quorum does not count on a node until it has caught up
// and answered, and a second Join promotes it. Adding a voter that is still
// starting moves the quorum onto a node that cannot answer yet, and the
// leader loses its lease (in the kernel lab every first join cost the
// leader its lease, and the formation went through up to eight terms). A
// member that is already a voter stays one.
func (s *Store) JoinAsLearner(ctx context.Context, m MemberCmd) error {
	return s.join(ctx, m, true)
}

func (s *Store) join(ctx context.Context, m MemberCmd, learner bool) error {
	if !s.IsLeader() {
		return ErrNotLeader
	}
	if m.ID == "" || m.Address == "" {
		return fmt.Errorf("join: need node ID and address (got %q, %q)", m.ID, m.Address)
	}
	if !m.Role.Valid() {
		return fmt.Errorf("join of %s: role %q is not gateway or witness", m.ID, m.Role)
	}
	servers, err := s.Servers()
	if err != nil {
		return err
	}
	for _, srv := range servers {
		if string(srv.Address) == m.Address && string(srv.ID) != m.ID {
			return fmt.Errorf("join of %s: address %s belongs to member %s; remove it first (handoff operator raft remove-peer %s)",
				m.ID, m.Address, srv.ID, srv.ID)
		}
	}
	present, voter := false, false
	for _, srv := range servers {
		sameID, sameAddr := string(srv.ID) == m.ID, string(srv.Address) == m.Address
		switch {
		case sameID && sameAddr:
			present, voter = true, srv.Suffrage == raft.Voter
		case sameID:
			if err := s.raft.RemoveServer(srv.ID, 0, timeoutOf(ctx)).Error(); err != nil {
				return fmt.Errorf("join of %s: removing stale entry %s at %s: %w", m.ID, srv.ID, srv.Address, err)
			}
		}
	}
	switch {
	case !present && learner:
		if err := s.raft.AddNonvoter(raft.ServerID(m.ID), raft.ServerAddress(m.Address), 0, timeoutOf(ctx)).Error(); err != nil {
			return fmt.Errorf("join of %s: adding learner: %w", m.ID, err)
		}
	case !learner && !voter:
		if err := s.raft.AddVoter(raft.ServerID(m.ID), raft.ServerAddress(m.Address), 0, timeoutOf(ctx)).Error(); err != nil {
			return fmt.Errorf("join of %s: adding voter: %w", m.ID, err)
		}
	}
	if _, err := s.Apply(ctx, &m); err != nil {
		return fmt.Errorf("join of %s: recording member: %w", m.ID, err)
	}
	return nil
}

// Remove removes a node from the Raft configuration and the members
// (leader only). Removing an unknown node is not an error.
func (s *Store) Remove(ctx context.Context, id string) error {
	if !s.IsLeader() {
		return ErrNotLeader
	}
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, timeoutOf(ctx)).Error(); err != nil {
		return fmt.Errorf("removing %s from raft: %w", id, err)
	}
	known := false
	s.fsm.View(func(st *State) { _, known = st.Members[id] })
	if known {
		if _, err := s.Apply(ctx, &RemoveMemberCmd{ID: id}); err != nil {
			return fmt.Errorf("removing member %s: %w", id, err)
		}
	}
	return nil
}

// TransferLeadership hands leadership to id (or to the most up-to-date
// voter when id is empty).
func (s *Store) TransferLeadership(id, addr string) error {
	var f raft.Future
	if id == "" {
		f = s.raft.LeadershipTransfer()
	} else {
		f = s.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(addr))
	}
	if err := f.Error(); err != nil {
		return fmt.Errorf("transferring leadership to %q: %w", id, err)
	}
	return nil
}

// TakeSnapshot asks Raft for a snapshot now.
func (s *Store) TakeSnapshot() error {
	if err := s.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return fmt.Errorf("taking snapshot: %w", err)
	}
	return nil
}

func (s *Store) handleRPC(ctx context.Context, peer string, req *RPCRequest) *RPCResponse {
	_, leader := s.Leader()
	fail := func(err error) *RPCResponse { return &RPCResponse{Error: err.Error(), Leader: leader} }
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// The transport has checked that peer is a member, or that this is a
	// join (peerAuthz.checkCall).
	switch req.Op {
	case opJoin:
		// A node may only join as itself: the ID is its certificate's.
		if req.ID != peer {
			return fail(fmt.Errorf("join as %q refused: certificate says %q", req.ID, peer))
		}
		join := s.Join
		if req.Learner {
			join = s.JoinAsLearner
		}
		if err := join(ctx, MemberCmd{ID: req.ID, Address: req.Address, Role: req.Role, Priority: req.Priority, Version: req.Version}); err != nil {
			return fail(err)
		}
		// Index: the learner is a voter's match once it has applied this.
		return &RPCResponse{Leader: leader, Index: s.raft.LastIndex()}
	case opPing:
		return &RPCResponse{Leader: leader}
	case opMember:
		// Another member asks whether req.ID is in this node's
		// configuration: its own lags (peerAuthz.vouched).
		srv, ok, err := s.authz.member(req.ID)
		if err != nil {
			return fail(err)
		}
		res, err := json.Marshal(memberAnswer{Member: ok, Address: string(srv.Address)})
		if err != nil {
			return fail(fmt.Errorf("encoding the answer: %w", err))
		}
		return &RPCResponse{Leader: leader, Result: res}
	case opLeave:
		if req.ID != peer {
			return fail(fmt.Errorf("leave for %q refused: certificate says %q", req.ID, peer))
		}
		if err := s.Remove(ctx, req.ID); err != nil {
			return fail(err)
		}
		return &RPCResponse{Leader: leader}
	default:
		if s.extraRPC != nil {
			return s.extraRPC(ctx, peer, req)
		}
		return fail(fmt.Errorf("unknown cluster RPC %q", req.Op))
	}
}

// CallLeader sends an RPC to the current leader, following leader hints.
func (s *Store) CallLeader(ctx context.Context, req *RPCRequest) error {
	_, addr := s.Leader()
	if addr == "" {
		return fmt.Errorf("%s: no known leader", req.Op)
	}
	return s.Call(ctx, []string{addr}, req)
}

// Call sends an RPC to the first of addrs that answers, following the
// leader hint a follower returns, until ctx ends.
func (s *Store) Call(ctx context.Context, addrs []string, req *RPCRequest) error {
	_, err := s.callAny(ctx, addrs, req, nil)
	return err
}

// callAny is Call returning the answer that succeeded. failed, if set, is
// told of every attempt that did not (the address asked and why).
func (s *Store) callAny(ctx context.Context, addrs []string, req *RPCRequest, failed func(addr string, err error)) (*RPCResponse, error) {
	var lastErr error
	fail := func(addr string, err error) {
		lastErr = err
		if failed != nil {
			failed(addr, err)
		}
	}
	backoff := 50 * time.Millisecond
	for {
		for _, addr := range addrs {
			resp, err := s.call(ctx, addr, req)
			if err != nil {
				fail(addr, err)
				continue
			}
			if resp.Error == "" {
				return resp, nil
			}
			fail(addr, fmt.Errorf("%s at %s: %s", req.Op, addr, resp.Error))
			if resp.Leader != "" && resp.Leader != addr {
				if resp2, err := s.call(ctx, resp.Leader, req); err == nil && resp2.Error == "" {
					return resp2, nil
				} else if err == nil {
					fail(resp.Leader, fmt.Errorf("%s at leader %s: %s", req.Op, resp.Leader, resp2.Error))
				} else {
					fail(resp.Leader, err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w (last error: %v)", req.Op, ctx.Err(), lastErr)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// Ping checks that the node at addr answers cluster RPCs within Raft's
// election timeout (or ctx, if that ends first): a node slower than that
// could not win an election either. A leader pings before it hands
// leadership to a node, so that it does not hand it to a dead one.
func (s *Store) Ping(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, s.raft.ReloadableConfig().ElectionTimeout)
	defer cancel()
	resp, err := s.call(ctx, addr, &RPCRequest{Op: opPing})
	if err != nil {
		return fmt.Errorf("pinging %s: %w", addr, err)
	}
	if resp.Error != "" {
		return fmt.Errorf("pinging %s: %s", addr, resp.Error)
	}
	return nil
}

// CallOnce sends one RPC to addr and returns the peer's answer as it is:
// no retry and no leader following. Operator requests forwarded to the
// leader use it, so that a refusal comes back at once.
func (s *Store) CallOnce(ctx context.Context, addr string, req *RPCRequest) (*RPCResponse, error) {
	return s.call(ctx, addr, req)
}

// call sends one RPC to addr. A join first makes this node accept the
// replication RPCs of the node it is sent to (peerAuthz.expectJoin): a
// leader adds a new voter, and starts replicating to it, before it
// answers. A join that fails withdraws that, unless an earlier one had
// asked for it already.
func (s *Store) call(ctx context.Context, addr string, req *RPCRequest) (*RPCResponse, error) {
	if req.Op != opJoin {
		return s.layer.call(ctx, addr, req, nil)
	}
	var via string
	resp, err := s.layer.call(ctx, addr, req, func(peer string) error {
		if s.authz.expectJoin(peer, addr) {
			via = peer
		}
		return nil
	})
	if via != "" && (err != nil || resp.Error != "") {
		s.authz.forgetJoin(via)
	}
	return resp, err
}

// memberAnswer answers opMember.
type memberAnswer struct {
	Member  bool   `json:"member"`
	Address string `json:"address,omitempty"`
}

// askMember asks the node id at addr whether peer is in its Raft
// configuration and at which address. The node that answers must be id:
// the answer is only worth that member's word.
func (s *Store) askMember(ctx context.Context, id, addr, peer string) (string, bool, error) {
	resp, err := s.layer.call(ctx, addr, &RPCRequest{Op: opMember, ID: peer}, func(got string) error {
		if got != id {
			return fmt.Errorf("asking %s at %s about %s: %q answered", id, addr, peer, got)
		}
		return nil
	})
	if err != nil {
		return "", false, err
	}
	if resp.Error != "" {
		return "", false, fmt.Errorf("asking %s about %s: %s", id, peer, resp.Error)
	}
	var ans memberAnswer
	if err := json.Unmarshal(resp.Result, &ans); err != nil {
		return "", false, fmt.Errorf("asking %s about %s: decoding the answer: %w", id, peer, err)
	}
	return ans.Address, ans.Member, nil
}

// JoinCluster asks the cluster at addrs to add this node, retrying until ctx
// ends. Joining a cluster this node is already in is a no-op. The node
// joins as a learner, catches up, and only then asks to vote (see
// JoinAsLearner); a leader that predates learners adds it as a voter at
// once, and the second request changes nothing. Every attempt that fails
// is logged with its error (at warn: a node outside its cluster carries
// nothing), and each step that succeeds at info: a join that cannot reach
// its peers must not be silent until it gives up.
func (s *Store) JoinCluster(ctx context.Context, addrs []string, role Role, priority int) error {
	req := RPCRequest{Op: opJoin, ID: s.cfg.NodeID, Address: s.Addr(), Role: role, Priority: priority, Learner: true, Version: s.cfg.Version}
	start := time.Now()
	attempts := 0
	logFailed := func(step string) func(addr string, err error) {
		return func(addr string, err error) {
			attempts++
			s.log.Warn("join attempt failed", "step", step, "attempt", attempts, "peer", addr, "since", time.Since(start).Round(time.Millisecond), "err", err)
		}
	}
	s.log.Info("joining the cluster", "via", addrs, "role", role)
	resp, err := s.callAny(ctx, addrs, &req, logFailed("learner"))
	if err != nil {
		return fmt.Errorf("joining as a learner via %v after %d failed attempts: %w", addrs, attempts, err)
	}
	s.log.Info("joined as a learner; catching up", "leader_index", resp.Index)
	if err := s.waitCaughtUp(ctx, resp.Index); err != nil {
		return fmt.Errorf("joining as a learner: %w", err)
	}
	req.Learner = false
	if _, err := s.callAny(ctx, addrs, &req, logFailed("voter")); err != nil {
		return fmt.Errorf("asking to vote via %v after %d failed attempts: %w", addrs, attempts, err)
	}
	s.log.Info("joined the cluster as a voter", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// UpdateMember asks the leader to record m, this node's own member entry
// with new metadata (a new build or priority). It is the join RPC's
// metadata refresh: for a voter at an unchanged address the leader only
// commits the entry.
func (s *Store) UpdateMember(ctx context.Context, m MemberCmd) error {
	if m.ID != s.cfg.NodeID {
		return fmt.Errorf("updating member %s: only this node's own entry (%s) can be", m.ID, s.cfg.NodeID)
	}
	return s.CallLeader(ctx, &RPCRequest{Op: opJoin, ID: m.ID, Address: m.Address, Role: m.Role, Priority: m.Priority, Version: m.Version})
}

// waitCaughtUp waits until this node has applied index and hears from a
// leader (or leads: a node may "join" the cluster it leads): a voter the
// quorum can count on.
func (s *Store) waitCaughtUp(ctx context.Context, index uint64) error {
	const poll = 20 * time.Millisecond
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		_, leader := s.Leader()
		if s.IsLeader() || s.raft.AppliedIndex() >= index && leader != "" && time.Since(s.raft.LastContact()) < s.raft.ReloadableConfig().HeartbeatTimeout {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("catching up to log index %d (applied %d, leader %q): %w", index, s.raft.AppliedIndex(), leader, ctx.Err())
		case <-t.C:
		}
	}
}

// Leave removes this node from the cluster: a leader hands leadership over
// first, then asks the new leader to remove it.
func (s *Store) Leave(ctx context.Context) error {
	if s.IsLeader() {
		if err := s.TransferLeadership("", ""); err != nil {
			return fmt.Errorf("leaving: %w", err)
		}
	}
	return s.Call(ctx, s.peerAddrs(), &RPCRequest{Op: opLeave, ID: s.cfg.NodeID})
}

func (s *Store) peerAddrs() []string {
	servers, err := s.Servers()
	if err != nil {
		return nil
	}
	var out []string
	for _, srv := range servers {
		if string(srv.ID) != s.cfg.NodeID {
			out = append(out, string(srv.Address))
		}
	}
	return out
}

// Close shuts Raft down and releases the log and the listener. Safe twice.
func (s *Store) Close() error {
	select {
	case <-s.closed:
		return nil
	default:
	}
	close(s.closed)
	errs := []error{s.raft.Shutdown().Error()}
	s.raft.DeregisterObserver(s.observer)
	<-s.obsDone
	errs = append(errs, s.transport.Close(), s.layer.Close())
	// After the layer: a keep-open RPC still dialing ends with it.
	<-s.warmDone
	errs = append(errs, s.logs.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing raft store: %w", err)
	}
	return nil
}

// privateSnapshots keeps snapshot files readable by the owner only. They
// hold sealed SAs, but cluster metadata is nobody else's business either.
type privateSnapshots struct {
	*raft.FileSnapshotStore
	dir string
}

func (p *privateSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := p.FileSnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	return &privateSink{SnapshotSink: sink, dir: p.dir}, nil
}

type privateSink struct {
	raft.SnapshotSink
	dir string
}

func (s *privateSink) Close() error {
	if err := s.SnapshotSink.Close(); err != nil {
		return err
	}
	dir := filepath.Join(s.dir, s.ID())
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("securing snapshot %s: %w", s.ID(), err)
	}
	for _, e := range entries {
		if err := os.Chmod(filepath.Join(dir, e.Name()), 0o600); err != nil {
			return fmt.Errorf("securing snapshot file %s: %w", e.Name(), err)
		}
	}
	return os.Chmod(dir, 0o700)
}
