package perf

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/raftstore"
)

// FeedOptions configure Feed.
type FeedOptions struct {
	// SAs are offered as new CHILD_SAs (upserts), each once. Their IDs
	// must not be in the log yet.
	SAs []*sa.ChildSA
	// Rate is the offered load in upserts per second, delivered every
	// Tick. Zero offers every SA at once: a rekey storm, where the
	// dataplane hands changes over as fast as the feed takes them (its
	// channel blocks, as the VICI/XFRM dataplane's does).
	Rate float64
	// Tick is the producer's period at a fixed Rate (default 1ms).
	Tick time.Duration
	// BatchWindow is replication.batch_window: how long changes are
	// gathered before a commit starts. Zero commits as soon as nothing is
	// in flight (changes still gather while the previous entry commits).
	BatchWindow time.Duration
	// MaxBatch is replication.max_batch (default agent.DefaultMaxBatch).
	MaxBatch int
	// Wait bounds the wait for the followers to apply everything
	// (default 60s).
	Wait time.Duration
}

// FeedResult is what one Feed run measured.
type FeedResult struct {
	Upserts int
	// Entries is the number of sa-batch log entries committed.
	Entries int
	// Elapsed runs from the first change seen to the last one committed.
	Elapsed time.Duration
	// PerSec is Upserts / Elapsed: upserts committed per second.
	PerSec float64
	// Commit is, per upsert, the time from the active seeing the change
	// to its entry being committed (durable on a majority) and applied on
	// the leader.
	Commit Latencies
	// Lag is, per upsert and follower, the time from the active seeing
	// the change to that follower's FSM applying it.
	Lag Latencies
}

// item is one change with the time the active saw it.
type item struct {
	c  sa.Change
	at time.Time
}

// Feed runs the active node's SA feed against the cluster's leader the way
// agent/feed.go does it (gather changes within the batch window or while
// the previous entry commits, then the agent's own SACommitter: skip no-op
// upserts by plaintext hash, seal, commit one entry at a time) and measures throughput,
// commit latency and the followers' replication lag. It fails unless every
// follower ends up holding every SA.
//
// A change is "seen" when the dataplane hands it to the feed; at a fixed
// Rate it is its scheduled time, so a feed that falls behind is charged
// for the wait (no coordinated omission).
func Feed(ctx context.Context, c *Cluster, o FeedOptions) (*FeedResult, error) {
	if o.MaxBatch <= 0 {
		o.MaxBatch = agent.DefaultMaxBatch
	}
	if o.Tick <= 0 {
		o.Tick = time.Millisecond
	}
	if o.Wait <= 0 {
		o.Wait = 60 * time.Second
	}
	leader := c.Leader()
	if leader == nil {
		return nil, errors.New("feeding SAs: no leader")
	}
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changes := make(chan item, 16384)
	go produce(pctx, o, changes)

	// The SAs are new (see SAs): no need to read the log's hashes first,
	// which at 50k SAs in the log takes longer than the steady run's p99.
	f := &feedRun{committer: agent.NewSACommitter(leader, c.Sealer, o.MaxBatch, nil, map[string][32]byte{}, nil),
		seen: make(map[string]time.Time, len(o.SAs)), res: &FeedResult{}}
	pending := make(map[string]item)
	var window <-chan time.Time
	var first time.Time
	flush := func() error {
		window = nil
		if len(pending) == 0 {
			return nil
		}
		err := f.commit(ctx, pending)
		clear(pending)
		return err
	}
loop:
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("feeding SAs: %w", ctx.Err())
		case it, ok := <-changes:
			if !ok {
				break loop
			}
			if first.IsZero() {
				first = it.at
			}
			pending[it.c.ID] = it
			if window == nil && o.BatchWindow > 0 {
				window = time.After(o.BatchWindow)
			}
			// Drain what is already queued without waiting.
		drain:
			for len(pending) < o.MaxBatch {
				select {
				case it, ok := <-changes:
					if !ok {
						break drain
					}
					pending[it.c.ID] = it
				default:
					break drain
				}
			}
			if len(pending) >= o.MaxBatch || o.BatchWindow <= 0 {
				if err := flush(); err != nil {
					return nil, err
				}
			}
		case <-window:
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	r := f.res
	r.Elapsed = f.last.Sub(first)
	if r.Elapsed > 0 {
		r.PerSec = float64(r.Upserts) / r.Elapsed.Seconds()
	}
	wctx, wcancel := context.WithTimeout(ctx, o.Wait)
	defer wcancel()
	for _, fl := range c.Followers(leader) {
		if err := waitApplied(wctx, fl.FSM(), f.seen); err != nil {
			return nil, fmt.Errorf("follower %s: %w", fl.NodeID(), err)
		}
		for id, at := range f.seen {
			r.Lag = append(r.Lag, fl.FSM().AppliedAt(id).Sub(at))
		}
	}
	return r, nil
}

func produce(ctx context.Context, o FeedOptions, out chan<- item) {
	defer close(out)
	send := func(c *sa.ChildSA, at time.Time) bool {
		select {
		case out <- item{c: sa.Change{Op: sa.Upsert, ID: c.ID, SA: c}, at: at}:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if o.Rate <= 0 {
		for _, c := range o.SAs {
			if !send(c, time.Now()) {
				return
			}
		}
		return
	}
	t := time.NewTicker(o.Tick)
	defer t.Stop()
	start := time.Now()
	next := 0
	for next < len(o.SAs) {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			due := min(len(o.SAs), int(o.Rate*now.Sub(start).Seconds()))
			for ; next < due; next++ {
				at := start.Add(time.Duration(float64(next) / o.Rate * float64(time.Second)))
				if !send(o.SAs[next], at) {
					return
				}
			}
		}
	}
}

type feedRun struct {
	committer *agent.SACommitter
	seen      map[string]time.Time
	last      time.Time
	res       *FeedResult
}

// commit hands pending to the agent's SACommitter (validate, skip what
// did not change, seal, commit). pending never holds more than one
// entry's worth (the feed loop flushes at MaxBatch), so the time the call
// returns is the commit time of every SA in it.
func (f *feedRun) commit(ctx context.Context, pending map[string]item) error {
	changes := make(map[string]sa.Change, len(pending))
	for id, it := range pending {
		changes[id] = it.c
	}
	n, _, err := f.committer.Commit(ctx, changes)
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	now := time.Now()
	f.last = now
	f.res.Entries++
	f.res.Upserts += n
	for id, it := range pending {
		f.seen[id] = it.at
		f.res.Commit = append(f.res.Commit, now.Sub(it.at))
	}
	return nil
}

// waitApplied waits until fsm holds every SA in ids.
func waitApplied(ctx context.Context, fsm *raftstore.FSM, ids map[string]time.Time) error {
	for {
		changed := fsm.Changed()
		missing := 0
		fsm.View(func(st *raftstore.State) {
			for id := range ids {
				if _, ok := st.SAs[id]; !ok {
					missing++
				}
			}
		})
		if missing == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d SAs never applied: %w", missing, len(ids), ctx.Err())
		case <-changed:
		}
	}
}
