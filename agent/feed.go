package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/raftstore"
)

// feeder is the active node's SA feed: it keeps the replicated SA set equal
// to what the dataplane carries. Changes seen within BatchWindow (or while
// the previous entry is being committed) go into one log entry: a rekey
// storm of thousands of SAs costs a handful of entries.
type feeder struct {
	a         *Agent
	committer *SACommitter
	// synced is the replay state last committed per SA.
	synced map[string]sa.Replay
	// round counts replay syncs; with more moved counters than the budget,
	// round picks which share of them this sync commits.
	round uint64
	// current is when the log's counters were last confirmed current.
	current time.Time
}

// feed runs while this node is active. known seeds the hashes of the SAs
// the takeover just installed from the log (nil: read them from the log).
func (a *Agent) feed(ctx context.Context, known map[string][32]byte) {
	f := &feeder{a: a, committer: NewSACommitter(a.store, a.sealer, a.cfg.MaxBatch, a.log, known, a.lane), synced: make(map[string]sa.Replay)}
	changes := make(chan sa.Change, 16384)
	watchErr := make(chan error, 1)
	go func() { watchErr <- a.dp.Watch(ctx, changes) }()
	if err := f.resync(ctx); err != nil && ctx.Err() == nil {
		a.log.Error("initial SA resync", "err", err)
	}
	replayTick := time.NewTicker(a.cfg.ReplayInterval)
	defer replayTick.Stop()
	pending := make(map[string]sa.Change)
	var window <-chan time.Time
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if err := f.commit(ctx, pending); err != nil && ctx.Err() == nil {
			a.log.Error("committing SA changes", "count", len(pending), "err", err)
		}
		clear(pending)
		window = nil
	}
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-watchErr:
			if ctx.Err() != nil {
				return
			}
			// The event stream broke (charon restarted): resync fully,
			// then watch again.
			a.log.Warn("SA watch ended; resyncing", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			go func() { watchErr <- a.dp.Watch(ctx, changes) }()
			if err := f.resync(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("SA resync", "err", err)
			}
		case c := <-changes:
			pending[c.ID] = c
			if window == nil {
				window = time.After(a.cfg.BatchWindow)
			}
			// Drain what is already queued without waiting.
			for len(pending) < a.cfg.MaxBatch {
				select {
				case c := <-changes:
					pending[c.ID] = c
					continue
				default:
				}
				break
			}
			if len(pending) >= a.cfg.MaxBatch {
				flush()
			}
		case <-window:
			flush()
		case <-a.resync:
			flush()
			f.reload()
			if err := f.resync(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("SA resync after snapshot restore", "err", err)
			}
		case <-replayTick.C:
			flush()
			if err := f.syncReplay(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("syncing replay state", "err", err)
			}
		}
	}
}

// commit seals and commits one batch of changes.
func (f *feeder) commit(ctx context.Context, changes map[string]sa.Change) error {
	_, deletes, err := f.committer.Commit(ctx, changes)
	if deletes > 0 {
		for id, c := range changes {
			if c.Op == sa.Delete && !f.committer.Has(id) {
				delete(f.synced, id)
			}
		}
	}
	return err
}

// resync makes the log's SA set equal to the dataplane's: the full resync
// done when the node becomes active and after the event stream breaks.
func (f *feeder) resync(ctx context.Context) error {
	list, err := f.a.dp.Export(ctx)
	if err != nil {
		return fmt.Errorf("exporting SAs: %w", err)
	}
	changes := make(map[string]sa.Change, len(list))
	for _, c := range list {
		changes[c.ID] = sa.Change{Op: sa.Upsert, ID: c.ID, SA: c}
	}
	for id := range f.committer.IDs() {
		if _, ok := changes[id]; !ok {
			changes[id] = sa.Change{Op: sa.Delete, ID: id}
		}
	}
	return f.commit(ctx, changes)
}

// syncReplay commits the counters of the SAs whose counters moved, at
// most cfg.ReplayBudget of them. With more moved than that, the SAs are
// split into ⌈moved/budget⌉ shares by a hash of their ID and each sync
// takes the next share in turn, so every moving SA is synced at least
// once every that many intervals: the counters' staleness stays bounded,
// and the takeover's jump (SeqStart) counts each SA's own staleness.
//
// Every ReplayCheckpoint, a sync that committed every moved counter ends
// with a ReplayCurrentCmd: then the standbys' clocks of the SAs whose
// counters stand still restart too, and the jump a takeover adds for
// them stays bounded by the checkpoint instead of growing with the quiet.
func (f *feeder) syncReplay(ctx context.Context) error {
	readAt := time.Now()
	states, err := f.a.dp.Replay(ctx)
	if err != nil {
		return fmt.Errorf("reading replay state: %w", err)
	}
	moved := states[:0]
	err = f.a.lane.Run(ctx, len(states), func(i int) error {
		r := states[i]
		if !f.committer.Has(r.ID) {
			return nil
		}
		if old, ok := f.synced[r.ID]; ok && old.OSeq == r.OSeq && old.Seq == r.Seq && slices.Equal(old.Bitmap, r.Bitmap) {
			return nil
		}
		moved = append(moved, r)
		return nil
	})
	if err != nil {
		return err
	}
	f.round++
	records := make([]raftstore.ReplayRecord, 0, min(len(moved), f.a.cfg.ReplayBudget))
	shares := uint64((len(moved) + f.a.cfg.ReplayBudget - 1) / f.a.cfg.ReplayBudget)
	for _, r := range moved {
		if shares > 1 && shareOf(r.ID, shares) != f.round%shares {
			continue
		}
		records = append(records, raftstore.ReplayRecord{ID: r.ID, OSeq: r.OSeq, Seq: r.Seq, Bitmap: r.Bitmap, ReadAt: r.ReadAt})
	}
	for start := 0; start < len(records); start += f.a.cfg.MaxBatch * 4 {
		end := min(start+f.a.cfg.MaxBatch*4, len(records))
		applyStart := time.Now()
		if _, err := f.a.store.Apply(ctx, &raftstore.ReplayBatchCmd{Records: records[start:end]}); err != nil {
			return err
		}
		for _, r := range records[start:end] {
			f.synced[r.ID] = sa.Replay{ID: r.ID, OSeq: r.OSeq, Seq: r.Seq, Bitmap: r.Bitmap, ReadAt: r.ReadAt}
		}
		if end < len(records) {
			if err := yieldToRaft(ctx, time.Since(applyStart)); err != nil {
				return err
			}
		}
	}
	if shares <= 1 && readAt.Sub(f.current) >= f.a.cfg.ReplayCheckpoint {
		if _, err := f.a.store.Apply(ctx, &raftstore.ReplayCurrentCmd{ReadAt: readAt}); err != nil {
			return fmt.Errorf("confirming the replay records current: %w", err)
		}
		f.current = readAt
	}
	return nil
}

// shareOf puts an SA into one of shares buckets (FNV-1a of its ID).
func shareOf(id string, shares uint64) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	return h % shares
}

// handleRPC serves the agent's cluster RPCs: health reports from observers.
func (a *Agent) handleRPC(ctx context.Context, peer string, req *raftstore.RPCRequest) *raftstore.RPCResponse {
	_, leader := a.store.Leader()
	switch req.Op {
	case "health":
		if req.Health == nil || req.Health.Observer != peer {
			return &raftstore.RPCResponse{Error: fmt.Sprintf("health report refused: observer must be the caller %q", peer), Leader: leader}
		}
		if _, err := a.store.Apply(ctx, req.Health); err != nil {
			return &raftstore.RPCResponse{Error: err.Error(), Leader: leader}
		}
		return &raftstore.RPCResponse{Leader: leader}
	}
	if isOperatorOp(req.Op) {
		return a.handleOperatorRPC(ctx, peer, req)
	}
	return &raftstore.RPCResponse{Error: fmt.Sprintf("unknown cluster RPC %q", req.Op), Leader: leader}
}
