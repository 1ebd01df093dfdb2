package perf

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/raftstore"
)

// LogEntries returns the log entries that replicate sas as the feed writes
// them: sealed sa-batch entries of at most maxBatch SAs, then replay-batch
// entries with one record each (a one-word window bitmap, as a 32-packet
// window has).
func LogEntries(sas []*sa.ChildSA, sealer *raftstore.Sealer, maxBatch int) ([][]byte, error) {
	var out [][]byte
	now := time.Now()
	for start := 0; start < len(sas); start += maxBatch {
		part := sas[start:min(start+maxBatch, len(sas))]
		cmd := &raftstore.SABatchCmd{Upserts: make([]raftstore.SAUpsert, 0, len(part))}
		rb := &raftstore.ReplayBatchCmd{Records: make([]raftstore.ReplayRecord, 0, len(part))}
		for _, c := range part {
			pt := sa.Marshal(c)
			sealed, err := sealer.Seal(c.ID, pt)
			clear(pt)
			if err != nil {
				return nil, fmt.Errorf("sealing SA %s: %w", c.ID, err)
			}
			cmd.Upserts = append(cmd.Upserts, raftstore.SAUpsert{ID: c.ID, Sealed: sealed})
			rb.Records = append(rb.Records, raftstore.ReplayRecord{ID: c.ID, OSeq: 1 << 20, Seq: 1<<20 + 17,
				Bitmap: []uint32{0xfffeffff}, ReadAt: now})
		}
		for _, p := range []any{cmd, rb} {
			data, err := raftstore.Encode(p)
			if err != nil {
				return nil, err
			}
			out = append(out, data)
		}
	}
	return out, nil
}

// ApplyEntries applies entries to fsm at consecutive indexes from 1, as a
// follower's Raft would, and fails on the first refusal.
func ApplyEntries(fsm *raftstore.FSM, entries [][]byte) error {
	for i, data := range entries {
		res, _ := fsm.Apply(&raft.Log{Type: raft.LogCommand, Index: uint64(i + 1), Term: 1, Data: data}).(raftstore.ApplyResult)
		if res.Err != nil {
			return fmt.Errorf("applying entry %d: %w", i+1, res.Err)
		}
	}
	return nil
}

// HeapPerSA returns the live heap bytes an FSM spends per replicated SA:
// the sealed entry, its replay state, the maps and the local apply times.
// It measures runtime.MemStats.HeapAlloc after full collections before
// and after n SAs are applied, with the encoded log entries alive across
// both readings so that only the FSM's own allocations count.
func HeapPerSA(n int) (float64, error) {
	sas, err := SAs(n, 0)
	if err != nil {
		return 0, err
	}
	sealer, err := newSealer()
	if err != nil {
		return 0, err
	}
	entries, err := LogEntries(sas, sealer, 4096)
	if err != nil {
		return 0, err
	}
	sas = nil
	before := liveHeap()
	fsm := raftstore.NewFSM(slog.New(slog.DiscardHandler))
	if err := ApplyEntries(fsm, entries); err != nil {
		return 0, err
	}
	after := liveHeap()
	held := 0
	fsm.View(func(st *raftstore.State) { held = min(len(st.SAs), len(st.Replay)) })
	if held != n {
		return 0, fmt.Errorf("FSM holds %d SAs with replay state, want %d", held, n)
	}
	runtime.KeepAlive(entries)
	runtime.KeepAlive(fsm)
	return float64(int64(after)-int64(before)) / float64(n), nil
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// SnapshotResult is what Snapshot measured.
type SnapshotResult struct {
	SAs int
	// Bytes is the size of the persisted snapshot.
	Bytes int
	// Take is FSM.Snapshot (the copy under the read lock), Persist the
	// write of the copy, Restore FSM.Restore from the bytes.
	Take, Persist, Restore time.Duration
}

// Snapshot takes, persists and restores the snapshot of an FSM holding n
// SAs with replay state, through the FSM's raft.FSM methods, and checks
// that the restored FSM holds the same SAs.
func Snapshot(n int) (*SnapshotResult, error) {
	sas, err := SAs(n, 0)
	if err != nil {
		return nil, err
	}
	sealer, err := newSealer()
	if err != nil {
		return nil, err
	}
	entries, err := LogEntries(sas, sealer, 4096)
	if err != nil {
		return nil, err
	}
	fsm := raftstore.NewFSM(slog.New(slog.DiscardHandler))
	if err := ApplyEntries(fsm, entries); err != nil {
		return nil, err
	}
	entries = nil
	runtime.GC()
	r := &SnapshotResult{SAs: n}
	t0 := time.Now()
	snap, err := fsm.Snapshot()
	if err != nil {
		return nil, err
	}
	r.Take = time.Since(t0)
	sink := &memSink{}
	t0 = time.Now()
	if err := snap.Persist(sink); err != nil {
		return nil, err
	}
	r.Persist = time.Since(t0)
	snap.Release()
	r.Bytes = sink.Len()
	restored := raftstore.NewFSM(slog.New(slog.DiscardHandler))
	t0 = time.Now()
	if err := restored.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		return nil, err
	}
	r.Restore = time.Since(t0)
	var mismatch error
	fsm.View(func(want *raftstore.State) {
		restored.View(func(got *raftstore.State) {
			if len(got.SAs) != len(want.SAs) || len(got.Replay) != len(want.Replay) {
				mismatch = fmt.Errorf("restored %d SAs and %d replay states, want %d and %d", len(got.SAs), len(got.Replay), len(want.SAs), len(want.Replay))
				return
			}
			for id, e := range want.SAs {
				if g := got.SAs[id]; g == nil || !bytes.Equal(g.Sealed, e.Sealed) {
					mismatch = fmt.Errorf("SA %s differs after restore", id)
					return
				}
			}
		})
	})
	return r, mismatch
}

// memSink is a raft.SnapshotSink into memory.
type memSink struct {
	bytes.Buffer
	closed bool
}

func (s *memSink) ID() string    { return "bench" }
func (s *memSink) Cancel() error { s.closed = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

func newSealer() (*raftstore.Sealer, error) {
	key := make([]byte, raftstore.KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating a cluster key: %w", err)
	}
	return raftstore.NewSealer(key)
}
