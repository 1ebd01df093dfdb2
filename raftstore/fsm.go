package raftstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/internal/boundread"
	"github.com/handoffvpn/handoff/internal/bulk"
)

// FSM is the thin raft.FSM over the State. Reads go through View, which
// holds a read lock for the duration of the callback.
type FSM struct {
	log *slog.Logger
	// lane paces Apply's decoding (nil: unpaced); see SetLane.
	lane *bulk.Lane

	mu    sync.RWMutex // guards the following fields
	st    *State
	local map[string]time.Time // SA id → local time its replay state (or the SA) was last applied
	watch chan struct{}        // closed and replaced on every applied change
}

var _ raft.FSM = (*FSM)(nil)

// NewFSM returns an FSM over an empty state.
func NewFSM(log *slog.Logger) *FSM {
	return &FSM{log: log, st: NewState(), local: make(map[string]time.Time), watch: make(chan struct{})}
}

// SetLane makes Apply decode and apply each entry as a worker of lane,
// so that a follower applying a replication storm leaves a P free for
// Raft's heartbeats. It must be called before the FSM is in use.
func (f *FSM) SetLane(l *bulk.Lane) { f.lane = l }

// ApplyResult is what Apply returns to the proposer through the future.
type ApplyResult struct {
	Index uint64
	Term  uint64
	Err   error
}

// Apply implements raft.FSM. A command that does not decode or that the
// state machine refuses changes nothing and is reported to the proposer.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	if w, err := f.lane.EnterPrompt(context.Background()); err == nil {
		defer w.Leave()
	}
	c, err := Decode(l.Data)
	if err != nil {
		f.log.Warn("skipping a log entry that does not decode", "index", l.Index, "term", l.Term, "err", err)
		return ApplyResult{Index: l.Index, Term: l.Term, Err: err}
	}
	now := time.Now()
	f.mu.Lock()
	err = f.st.apply(l.Index, l.Term, c)
	if err == nil {
		switch p := c.Payload.(type) {
		case *SABatchCmd:
			// Only a new SA starts its clock here. An upsert of one the
			// log holds (new lifetimes, a new active's own export of it)
			// leaves its replay record as old as it was: restarting the
			// clock would shrink the takeover's sequence number jump
			// (agent.SeqStart) below what the old active can have sent
			// since that record was read.
			for _, u := range p.Upserts {
				if _, ok := f.local[u.ID]; !ok {
					f.local[u.ID] = now
				}
			}
			for _, id := range p.Deletes {
				delete(f.local, id)
			}
		case *ReplayBatchCmd:
			for _, r := range p.Records {
				if _, ok := f.st.SAs[r.ID]; ok {
					f.local[r.ID] = now
				}
			}
		case *ReplayCurrentCmd:
			for id := range f.st.SAs {
				f.local[id] = now
			}
		}
		close(f.watch)
		f.watch = make(chan struct{})
	}
	f.mu.Unlock()
	if err != nil {
		f.log.Warn("state machine refused a command", "index", l.Index, "term", l.Term, "type", c.Type.String(), "err", err)
	}
	return ApplyResult{Index: l.Index, Term: l.Term, Err: err}
}

// View calls fn with the state under a read lock. fn must not keep
// references to maps past its return, nor change anything.
func (f *FSM) View(fn func(st *State)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.st)
}

// Changed returns a channel closed at the next applied change.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.watch
}

// AppliedAt is the local time the SA's replay state was last applied or
// confirmed current (ReplayCurrentCmd) here or, before either, the SA
// itself was first applied. It is local knowledge, never replicated: a standby uses
// it to bound how stale its copy of the counters can be.
func (f *FSM) AppliedAt(id string) time.Time {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.local[id]
}

// Snapshot implements raft.FSM: an immutable copy, written later by Persist.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{st: f.st.Clone()}, nil
}

// Restore implements raft.FSM.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := ReadSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restoring snapshot: %w", err)
	}
	now := time.Now()
	local := make(map[string]time.Time, len(st.SAs))
	for id := range st.SAs {
		local[id] = now
	}
	f.mu.Lock()
	f.st, f.local = st, local
	close(f.watch)
	f.watch = make(chan struct{})
	f.mu.Unlock()
	return nil
}

type fsmSnapshot struct{ st *State }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := WriteSnapshot(sink, s.st); err != nil {
		sink.Cancel()
		return fmt.Errorf("persisting snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

// Snapshot stream layout:
//
//	"HOSNAP" version(1)
//	meta: len(uvarint) JSON{members, active, health, history, last_index}
//	sas:  n(uvarint) {id(str) term index(uvarint) sealed(bytes)}*n
//	replay: len(uvarint) replay-batch body (see command.go)
//	ike:  n(uvarint) {key(str) term index(uvarint) sealed(bytes)}*n  (optional)
//
// The IKE chain block came after version 1 was in use: it is optional at
// the end, where an older reader stops before it (and holds no IKE state,
// as when it skips CmdIKEChains), and a snapshot without it restores none.
//
// Every length is bounded twice: by what the block can legitimately hold
// (the constants below, maxIDLen, maxSealedLen) and by the bytes that
// actually arrive (boundread), because the same reader restores a snapshot
// an operator posts and one a peer sends over Raft.
const (
	snapMagic   = "HOSNAP"
	snapVersion = 1
	maxSnapMeta = 64 << 20
	// maxSnapSAs bounds the SA count and maxSnapReplay the replay block:
	// sanity bounds on what a snapshot may hold. Memory follows the bytes
	// that arrive, never these.
	maxSnapSAs    = maxBatch * 16
	maxSnapReplay = 1 << 31
)

type snapMeta struct {
	Members   []Member      `json:"members"`
	Active    Active        `json:"active"`
	Health    []Observation `json:"health"`
	History   []HistoryEntry
	Handover  Handover `json:"handover,omitzero"`
	LastIndex uint64   `json:"last_index"`
}

// WriteSnapshot writes st in the snapshot format. SA payloads stay sealed.
func WriteSnapshot(w io.Writer, st *State) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	meta := snapMeta{Members: st.SortedMembers(), Active: st.Active, History: st.History, Handover: st.Handover, LastIndex: st.LastIndex}
	for _, obs := range st.Health {
		for _, o := range obs {
			meta.Health = append(meta.Health, o)
		}
	}
	sort.Slice(meta.Health, func(i, j int) bool {
		a, b := meta.Health[i], meta.Health[j]
		return a.Subject < b.Subject || (a.Subject == b.Subject && a.Observer < b.Observer)
	})
	mj, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("encoding snapshot metadata: %w", err)
	}
	var buf []byte
	buf = append(buf, snapMagic...)
	buf = append(buf, snapVersion)
	buf = binary.AppendUvarint(buf, uint64(len(mj)))
	buf = append(buf, mj...)
	buf = binary.AppendUvarint(buf, uint64(len(st.SAs)))
	if _, err := bw.Write(buf); err != nil {
		return err
	}
	ids := make([]string, 0, len(st.SAs))
	for id := range st.SAs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if buf, err = writeEntries(bw, buf, st.SAs, ids); err != nil {
		return err
	}
	rb := &ReplayBatchCmd{Records: make([]ReplayRecord, 0, len(st.Replay))}
	for _, id := range ids {
		if r, ok := st.Replay[id]; ok {
			rb.Records = append(rb.Records, r)
		}
	}
	body := encodeReplayBatch(rb)[2:]
	buf = binary.AppendUvarint(buf[:0], uint64(len(body)))
	if _, err := bw.Write(buf); err != nil {
		return err
	}
	if _, err := bw.Write(body); err != nil {
		return err
	}
	keys := slices.Sorted(maps.Keys(st.IKEChains))
	buf = binary.AppendUvarint(buf[:0], uint64(len(keys)))
	if _, err := bw.Write(buf); err != nil {
		return err
	}
	if _, err := writeEntries(bw, buf, st.IKEChains, keys); err != nil {
		return err
	}
	return bw.Flush()
}

// writeEntries writes the sealed entries of ids, in that order, reusing
// buf; it returns buf for further use.
func writeEntries(w io.Writer, buf []byte, entries map[string]*SAEntry, ids []string) ([]byte, error) {
	for _, id := range ids {
		e := entries[id]
		buf = appendStr(buf[:0], e.ID)
		buf = binary.AppendUvarint(buf, e.Term)
		buf = binary.AppendUvarint(buf, e.Index)
		buf = binary.AppendUvarint(buf, uint64(len(e.Sealed)))
		buf = append(buf, e.Sealed...)
		if _, err := w.Write(buf); err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// ErrSnapshot is wrapped by every snapshot decoding error.
var ErrSnapshot = errors.New("malformed snapshot")

// ReadSnapshot reads a snapshot written by WriteSnapshot.
func ReadSnapshot(r io.Reader) (*State, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	head := make([]byte, len(snapMagic)+1)
	if _, err := io.ReadFull(br, head); err != nil {
		return nil, fmt.Errorf("%w: reading header: %w", ErrSnapshot, err)
	}
	if string(head[:len(snapMagic)]) != snapMagic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrSnapshot, head[:len(snapMagic)])
	}
	if v := head[len(snapMagic)]; v != snapVersion {
		return nil, fmt.Errorf("%w: version %d, this node reads %d", ErrSnapshot, v, snapVersion)
	}
	readBlock := func(what string, max uint64) ([]byte, error) {
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, fmt.Errorf("%w: %s length: %w", ErrSnapshot, what, err)
		}
		if n > max {
			return nil, fmt.Errorf("%w: %s of %d bytes exceeds %d", ErrSnapshot, what, n, max)
		}
		// n is what the input claims, not what it holds: the block grows
		// as its bytes arrive.
		b, err := boundread.Exactly(br, int64(n))
		if err != nil {
			return nil, fmt.Errorf("%w: reading %s of %d bytes: %w", ErrSnapshot, what, n, err)
		}
		return b, nil
	}
	mj, err := readBlock("metadata", maxSnapMeta)
	if err != nil {
		return nil, err
	}
	var meta snapMeta
	if err := json.Unmarshal(mj, &meta); err != nil {
		return nil, fmt.Errorf("%w: metadata: %w", ErrSnapshot, err)
	}
	st := NewState()
	for _, m := range meta.Members {
		// A map keeps the last of two entries: a snapshot that lists a
		// member twice is refused, not silently merged.
		if _, dup := st.Members[m.ID]; dup {
			return nil, fmt.Errorf("%w: member %q listed twice", ErrSnapshot, m.ID)
		}
		st.Members[m.ID] = m
	}
	st.Active, st.History, st.Handover, st.LastIndex = meta.Active, meta.History, meta.Handover, meta.LastIndex
	for _, o := range meta.Health {
		if st.Health[o.Subject] == nil {
			st.Health[o.Subject] = make(map[string]Observation)
		}
		st.Health[o.Subject][o.Observer] = o
	}
	// readEntries reads a block of sealed entries into into.
	readEntries := func(what string, n uint64, maxSealed uint64, into map[string]*SAEntry) error {
		for i := uint64(0); i < n; i++ {
			id, err := readBlock(what+" id", maxIDLen)
			if err != nil {
				return err
			}
			term, err1 := binary.ReadUvarint(br)
			index, err2 := binary.ReadUvarint(br)
			if err := errors.Join(err1, err2); err != nil {
				return fmt.Errorf("%w: %s %s position: %w", ErrSnapshot, what, id, err)
			}
			sealed, err := readBlock("sealed "+what, maxSealed)
			if err != nil {
				return err
			}
			if len(id) == 0 || len(sealed) == 0 {
				return fmt.Errorf("%w: %s entry %d without id or payload", ErrSnapshot, what, i)
			}
			if _, dup := into[string(id)]; dup {
				return fmt.Errorf("%w: %s %s twice", ErrSnapshot, what, id)
			}
			into[string(id)] = &SAEntry{ID: string(id), Sealed: sealed, Term: term, Index: index}
		}
		return nil
	}
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, fmt.Errorf("%w: SA count: %w", ErrSnapshot, err)
	}
	if n > maxSnapSAs {
		return nil, fmt.Errorf("%w: SA count %d exceeds %d", ErrSnapshot, n, maxSnapSAs)
	}
	if err := readEntries("SA", n, maxSealedLen, st.SAs); err != nil {
		return nil, err
	}
	body, err := readBlock("replay states", maxSnapReplay)
	if err != nil {
		return nil, err
	}
	rb, err := decodeReplayBatch(body)
	if err != nil {
		return nil, fmt.Errorf("%w: replay states: %w", ErrSnapshot, err)
	}
	for _, r := range rb.Records {
		st.Replay[r.ID] = r
	}
	n, err = binary.ReadUvarint(br)
	switch {
	case errors.Is(err, io.EOF):
		// Written before IKE chains were replicated.
		return st, nil
	case err != nil:
		return nil, fmt.Errorf("%w: IKE chain count: %w", ErrSnapshot, err)
	case n > maxSnapSAs:
		return nil, fmt.Errorf("%w: IKE chain count %d exceeds %d", ErrSnapshot, n, maxSnapSAs)
	}
	if err := readEntries("IKE chain", n, maxChainLen, st.IKEChains); err != nil {
		return nil, err
	}
	return st, nil
}
