package perf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"time"
)

// ReplicationOptions configure Replication.
type ReplicationOptions struct {
	// StormSAs are offered at once (throughput); RateSAs at Rate per
	// second (lag under a steady rekey load).
	StormSAs, RateSAs int
	Rate              float64
	NoSync            bool
	BatchWindow       time.Duration
	CommitTimeout     time.Duration
	// HeartbeatTimeout is Raft's heartbeat and election timeout; the
	// leader lease is a third of it (default 150ms, the agent's).
	HeartbeatTimeout time.Duration
	MaxBatch         int
	// Dir is a scratch directory (a temporary one if empty).
	Dir string
	// Logger receives the stores' (and Raft's) warnings.
	Logger *slog.Logger
}

// ReplicationResult holds a storm run and a steady run.
type ReplicationResult struct {
	Options       ReplicationOptions
	Storm, Steady *FeedResult
	// LeaderChanges counts leadership notifications during the runs: an
	// election means a leader was starved past its lease.
	LeaderChanges int64
}

// Replication starts a fresh three-node cluster, feeds a storm of
// StormSAs, then RateSAs more at Rate, and returns both runs.
func Replication(ctx context.Context, o ReplicationOptions) (res *ReplicationResult, err error) {
	dir := o.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "handoff-perf-"); err != nil {
			return nil, fmt.Errorf("creating scratch dir: %w", err)
		}
		defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	}
	c, err := StartCluster(ctx, ClusterOptions{Dir: dir, NoSync: o.NoSync, CommitTimeout: o.CommitTimeout, HeartbeatTimeout: o.HeartbeatTimeout, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	sas, err := SAs(o.StormSAs+o.RateSAs, 0)
	if err != nil {
		return nil, err
	}
	res = &ReplicationResult{Options: o}
	if o.StormSAs > 0 {
		res.Storm, err = Feed(ctx, c, FeedOptions{SAs: sas[:o.StormSAs], BatchWindow: o.BatchWindow, MaxBatch: o.MaxBatch})
		if err != nil {
			return nil, fmt.Errorf("storm of %d SAs (%d leadership changes): %w", o.StormSAs, c.LeaderChanges(), err)
		}
	}
	if o.RateSAs > 0 {
		if o.StormSAs > 0 {
			// The storm's aftermath (its garbage, the followers' last
			// applies) would otherwise land on the first 100 ms of the
			// steady run: measure the steady state, not the storm's tail.
			runtime.GC()
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
		res.Steady, err = Feed(ctx, c, FeedOptions{SAs: sas[o.StormSAs:], Rate: o.Rate, BatchWindow: o.BatchWindow, MaxBatch: o.MaxBatch})
		if err != nil {
			return nil, fmt.Errorf("%d SAs at %.0f/s (%d leadership changes): %w", o.RateSAs, o.Rate, c.LeaderChanges(), err)
		}
	}
	res.LeaderChanges = c.LeaderChanges()
	return res, nil
}
