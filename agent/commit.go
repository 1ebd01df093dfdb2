package agent

import (
	"context"
	"crypto/sha256"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"time"

	"github.com/handoffvpn/handoff/internal/bulk"
	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/raftstore"
)

// SACommitter writes SA changes into the replicated log: it validates each
// upserted SA, skips those whose plaintext has not changed since it last
// committed them, seals the rest and commits them in entries of at most
// maxBatch upserts. The active's feed owns one; the performance driver
// (internal/perf) drives one directly, so the figures it prints are those
// of this code. Not safe for concurrent use.
type SACommitter struct {
	store    *raftstore.Store
	sealer   *raftstore.Sealer
	maxBatch int
	log      *slog.Logger
	// lane paces the sealing and hashing (nil: unpaced).
	lane *bulk.Lane
	// sent is the plaintext hash of every SA in the log.
	sent map[string][32]byte
}

// yieldToRaft pauses a storm between two of its entries for as long as
// the last one took to commit: replication then holds Raft's pipeline at
// most half the time, and the heartbeats, the followers' applies and the
// standbys' staging get the rest. A storm of 100,000 SAs committed back to
// back kept the followers' disks, decoders and the leader's transport busy
// for ten seconds, and the leader missed its lease in the middle of it.
// Committing is already one entry in flight at a time; this is the
// back-pressure that makes replication yield before the heartbeats do.
// Commits that take no time (a quiet node) pause for none.
func yieldToRaft(ctx context.Context, took time.Duration) error {
	pause := min(took, 100*time.Millisecond)
	if pause < time.Millisecond {
		return nil
	}
	t := time.NewTimer(pause)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// NewSACommitter returns a committer that believes the log holds the SAs
// in known (ID to plaintext hash); with known nil it reads them from the
// store's FSM (see Reload). Its CPU work (encoding, hashing, sealing) runs
// as a worker of lane (nil: unpaced), so that a resync of a large SA set
// does not starve Raft's heartbeats.
func NewSACommitter(store *raftstore.Store, sealer *raftstore.Sealer, maxBatch int, log *slog.Logger, known map[string][32]byte, lane *bulk.Lane) *SACommitter {
	if maxBatch <= 0 {
		maxBatch = DefaultMaxBatch
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &SACommitter{store: store, sealer: sealer, maxBatch: maxBatch, log: log, lane: lane}
	if known == nil {
		c.Reload()
	} else {
		c.sent = maps.Clone(known)
	}
	return c
}

// Reload makes the committer's idea of what the log holds equal to the
// FSM (after a snapshot restore replaced it).
func (c *SACommitter) Reload() {
	var entries []raftstore.SAEntry
	c.store.FSM().View(func(st *raftstore.State) {
		entries = make([]raftstore.SAEntry, 0, len(st.SAs))
		for _, e := range st.SAs {
			entries = append(entries, *e)
		}
	})
	c.sent = make(map[string][32]byte, len(entries))
	_ = c.lane.Run(context.Background(), len(entries), func(i int) error {
		if pt, err := c.sealer.Open(entries[i].ID, entries[i].Sealed); err == nil {
			c.sent[entries[i].ID] = sha256.Sum256(pt)
			clear(pt)
		}
		return nil
	})
}

// Has reports whether the committer has put the SA into the log.
func (c *SACommitter) Has(id string) bool {
	_, ok := c.sent[id]
	return ok
}

// IDs yields the IDs of the SAs the committer has put into the log.
func (c *SACommitter) IDs() iter.Seq[string] { return maps.Keys(c.sent) }

// Commit seals and commits changes (keyed by SA ID). It returns the number
// of upserts and deletes that went into the log; unchanged SAs and deletes
// of SAs the log does not hold are skipped, invalid SAs are logged and
// skipped. On error the committer forgets nothing it committed before.
func (c *SACommitter) Commit(ctx context.Context, changes map[string]sa.Change) (upserts, deletes int, err error) {
	cmd := &raftstore.SABatchCmd{}
	hashes := make(map[string][32]byte, len(changes))
	// The CPU part runs in the lane; the commits below wait on Raft and
	// hold no seat.
	w, err := c.lane.Enter(ctx)
	if err != nil {
		return 0, 0, err
	}
	for id, ch := range changes {
		if err := w.Step(ctx); err != nil {
			w.Leave()
			return 0, 0, err
		}
		switch ch.Op {
		case sa.Upsert:
			if ch.SA == nil || ch.SA.ID != id {
				c.log.Warn("dataplane reported an upsert without its SA", "id", id)
				continue
			}
			if err := ch.SA.Validate(); err != nil {
				c.log.Warn("dataplane reported an invalid SA; not replicated", "id", id, "err", err)
				continue
			}
			pt := sa.Marshal(ch.SA)
			h := sha256.Sum256(pt)
			if old, ok := c.sent[id]; ok && old == h {
				clear(pt)
				continue
			}
			sealed, err := c.sealer.Seal(id, pt)
			clear(pt)
			if err != nil {
				w.Leave()
				return 0, 0, fmt.Errorf("sealing SA %s: %w", id, err)
			}
			cmd.Upserts = append(cmd.Upserts, raftstore.SAUpsert{ID: id, Sealed: sealed})
			hashes[id] = h
		case sa.Delete:
			if _, ok := c.sent[id]; ok {
				cmd.Deletes = append(cmd.Deletes, id)
			}
		}
	}
	w.Leave()
	if len(cmd.Upserts) == 0 && len(cmd.Deletes) == 0 {
		return 0, 0, nil
	}
	// The deletes ride with the last part, so an SA replaced by a rekey
	// (new one upserted, old one deleted) never leaves the log empty-handed.
	for start := 0; ; start += c.maxBatch {
		end := min(start+c.maxBatch, len(cmd.Upserts))
		part := &raftstore.SABatchCmd{Upserts: cmd.Upserts[start:end]}
		last := end == len(cmd.Upserts)
		if last {
			part.Deletes = cmd.Deletes
		}
		applyStart := time.Now()
		if _, err := c.store.Apply(ctx, part); err != nil {
			return upserts, 0, fmt.Errorf("committing %d SA upserts and %d deletes: %w", len(part.Upserts), len(part.Deletes), err)
		}
		for _, u := range part.Upserts {
			c.sent[u.ID] = hashes[u.ID]
		}
		upserts += len(part.Upserts)
		if last {
			break
		}
		if err := yieldToRaft(ctx, time.Since(applyStart)); err != nil {
			return upserts, 0, err
		}
	}
	for _, id := range cmd.Deletes {
		delete(c.sent, id)
	}
	return upserts, len(cmd.Deletes), nil
}
