package perf

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/raftstore"
)

// CPUCost is the single-core CPU time per SA of the replication path's
// own work, without Raft: what the active spends to put an upsert in an
// entry, and what every node spends to apply it.
type CPUCost struct {
	// Feed is sa.Marshal + SHA-256 + Seal per upsert (the active).
	Feed time.Duration
	// Encode is the sa-batch entry encoding per upsert (the active).
	Encode time.Duration
	// Apply is decoding the entry and applying it to the FSM per upsert
	// (every node).
	Apply time.Duration
	// Takeover is unsealing and decoding per SA at takeover.
	Takeover time.Duration
	// SealedBytes is the average sealed SA's size.
	SealedBytes int
}

// MeasureCPU measures CPUCost over n SAs in entries of maxBatch.
func MeasureCPU(n, maxBatch int) (*CPUCost, error) {
	sas, err := SAs(n, 0)
	if err != nil {
		return nil, err
	}
	sealer, err := newSealer()
	if err != nil {
		return nil, err
	}
	c := &CPUCost{}
	ups := make([]raftstore.SAUpsert, 0, n)
	t0 := time.Now()
	var sink [32]byte
	for _, s := range sas {
		pt := sa.Marshal(s)
		h := sha256.Sum256(pt)
		sink[0] ^= h[0]
		sealed, err := sealer.Seal(s.ID, pt)
		if err != nil {
			return nil, err
		}
		ups = append(ups, raftstore.SAUpsert{ID: s.ID, Sealed: sealed})
		c.SealedBytes += len(sealed)
	}
	c.Feed = time.Since(t0) / time.Duration(n)
	c.SealedBytes /= n
	var entries [][]byte
	t0 = time.Now()
	for start := 0; start < n; start += maxBatch {
		data, err := raftstore.Encode(&raftstore.SABatchCmd{Upserts: ups[start:min(start+maxBatch, n)]})
		if err != nil {
			return nil, err
		}
		entries = append(entries, data)
	}
	c.Encode = time.Since(t0) / time.Duration(n)
	fsm := raftstore.NewFSM(slog.New(slog.DiscardHandler))
	t0 = time.Now()
	if err := ApplyEntries(fsm, entries); err != nil {
		return nil, err
	}
	c.Apply = time.Since(t0) / time.Duration(n)
	t0 = time.Now()
	for _, u := range ups {
		pt, err := sealer.Open(u.ID, u.Sealed)
		if err != nil {
			return nil, err
		}
		if _, err := sa.Unmarshal(pt); err != nil {
			return nil, fmt.Errorf("decoding SA %s: %w", u.ID, err)
		}
	}
	c.Takeover = time.Since(t0) / time.Duration(n)
	return c, nil
}
