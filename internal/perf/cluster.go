package perf

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/raftstore"
)

// ClusterOptions configure a benchmark cluster.
type ClusterOptions struct {
	// Nodes is the number of voters (default 3).
	Nodes int
	// Dir holds one data directory per node.
	Dir string
	// NoSync skips fsync of the Raft logs; production syncs.
	NoSync bool
	// CommitTimeout is Raft's commit_timeout (default 5ms, the agent's
	// default): how long an idle leader waits before telling followers
	// the new commit index.
	CommitTimeout time.Duration
	// HeartbeatTimeout (default 150ms, the agent's default; the election
	// timeout equals it and the lease is a third of it).
	HeartbeatTimeout time.Duration
	// SnapshotThreshold and TrailingLogs (defaults: the agent's, 8192 and
	// 10240).
	SnapshotThreshold, TrailingLogs uint64
	Logger                          *slog.Logger
}

// Cluster is a Raft cluster of real stores over loopback TCP with mutual
// TLS, as the agent runs them, without agents: the benchmarks drive the
// log themselves.
type Cluster struct {
	Stores []*raftstore.Store
	Sealer *raftstore.Sealer

	// LeaderChanges counts the leadership notifications of every store
	// after the first leader (an election during a run means the leader
	// was starved).
	leaderChanges atomic.Int64
	stop          chan struct{}
	drained       sync.WaitGroup
	closeOnce     sync.Once
}

// StartCluster opens, bootstraps and waits for a leader.
func StartCluster(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	if o.Nodes <= 0 {
		o.Nodes = 3
	}
	if o.CommitTimeout <= 0 {
		o.CommitTimeout = 5 * time.Millisecond
	}
	if o.HeartbeatTimeout <= 0 {
		o.HeartbeatTimeout = 150 * time.Millisecond
	}
	if o.SnapshotThreshold == 0 {
		o.SnapshotThreshold = 8192
	}
	if o.TrailingLogs == 0 {
		o.TrailingLogs = 10240
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	ca, err := pki.NewCA("handoff benchmark cluster", time.Hour)
	if err != nil {
		return nil, err
	}
	key := make([]byte, raftstore.KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating cluster key: %w", err)
	}
	sealer, err := raftstore.NewSealer(key)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Sealer: sealer, stop: make(chan struct{})}
	var boot []raftstore.Server
	for i := range o.Nodes {
		id := fmt.Sprintf("n%d", i+1)
		cert, err := ca.Issue(id, []string{"127.0.0.1"}, time.Hour)
		if err != nil {
			return nil, errors.Join(err, c.Close())
		}
		mat, err := pki.FromPEM(ca.PEM, cert.CertPEM, cert.KeyPEM)
		if err != nil {
			return nil, errors.Join(err, c.Close())
		}
		hb := o.HeartbeatTimeout
		s, err := raftstore.Open(raftstore.Config{
			NodeID: id, BindAddr: "127.0.0.1:0", DataDir: filepath.Join(o.Dir, id), TLS: mat,
			HeartbeatTimeout: hb, ElectionTimeout: hb, LeaderLeaseTimeout: hb / 3, CommitTimeout: o.CommitTimeout,
			SnapshotInterval: 30 * time.Second, SnapshotThreshold: o.SnapshotThreshold, TrailingLogs: o.TrailingLogs,
			NoSync: o.NoSync, Logger: o.Logger,
		})
		if err != nil {
			return nil, errors.Join(err, c.Close())
		}
		c.Stores = append(c.Stores, s)
		c.drainLeaderCh(s)
		boot = append(boot, raftstore.Server{ID: id, Address: s.Addr()})
	}
	for _, s := range c.Stores {
		if err := s.Bootstrap(boot); err != nil {
			return nil, errors.Join(err, c.Close())
		}
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	c.leaderChanges.Store(0)
	return c, nil
}

// drainLeaderCh reads the store's leadership notifications, as the agent
// does: Raft blocks stepping down until its notification is taken.
func (c *Cluster) drainLeaderCh(s *raftstore.Store) {
	c.drained.Add(1)
	go func() {
		defer c.drained.Done()
		for {
			select {
			case <-c.stop:
				return
			case <-s.LeaderCh():
				c.leaderChanges.Add(1)
			}
		}
	}()
}

// LeaderChanges is the number of leadership notifications (gained or
// lost, on any store) since the cluster first had a leader.
func (c *Cluster) LeaderChanges() int64 { return c.leaderChanges.Load() }

// WaitLeader waits until one store leads and has applied everything
// committed before (a barrier), and returns it.
func (c *Cluster) WaitLeader(ctx context.Context) (*raftstore.Store, error) {
	for {
		if l := c.Leader(); l != nil {
			if err := l.Barrier(ctx); err == nil {
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a leader: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Leader returns the store that leads now, or nil.
func (c *Cluster) Leader() *raftstore.Store {
	for _, s := range c.Stores {
		if s.IsLeader() {
			return s
		}
	}
	return nil
}

// Followers returns every store but leader.
func (c *Cluster) Followers(leader *raftstore.Store) []*raftstore.Store {
	var out []*raftstore.Store
	for _, s := range c.Stores {
		if s != leader {
			out = append(out, s)
		}
	}
	return out
}

// Close stops every store. Safe twice (a closed store's Close is a no-op).
func (c *Cluster) Close() error {
	var errs []error
	for _, s := range c.Stores {
		errs = append(errs, s.Close())
	}
	c.closeOnce.Do(func() { close(c.stop) })
	c.drained.Wait()
	return errors.Join(errs...)
}
