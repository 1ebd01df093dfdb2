package agent

import (
	"cmp"
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/internal/bulk"
	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/raftstore"
)

// Stager is optionally implemented by dataplanes that can pre-install the
// inbound half of the replicated SAs on a standby (ipsec.Dataplane does;
// see its Stage). No traffic reaches a standby, so inbound states there
// are inert until a takeover adds the outbound states and policies.
type Stager interface {
	Stage(ctx context.Context, sas []*sa.ChildSA) error
}

// stagedSA is one replicated SA opened ahead of a takeover: its
// plaintext encoding, checked to decode. The plaintext, not the decoded
// SA, is kept: one pointer-free allocation per SA instead of dozens of
// small objects, which at 100,000 SAs made every garbage collection mark
// hundreds of megabytes more and starved Raft's heartbeats while it ran.
// Decoding it again at a takeover is the cheap part of opening an SA.
type stagedSA struct {
	index uint64 // log index of the entry that wrote the sealed copy
	pt    []byte
	hash  [32]byte
}

// stage keeps a standby's copy of the replicated SA set opened (unsealed,
// hashed, checked to decode), so that a takeover does not open the whole
// set in its critical path: at 100,000 SAs that work took longer than the
// lease, and the new leader fenced itself in the middle of its own
// takeover. Staged plaintexts are SA keys: they never leave the process,
// are never logged, and are cleared when dropped.
type stage struct {
	mu  sync.Mutex // guards the following fields
	sas map[string]stagedSA
	// index is the FSM's last index at the last round: entries written
	// after it are the ones to look at.
	index uint64
}

func newStage() *stage { return &stage{sas: make(map[string]stagedSA)} }

// decoded decodes the staged SA id if it was staged from the entry at
// index. It decodes under the lock: the stager clears a plaintext it
// replaces.
func (s *stage) decoded(id string, index uint64) (*sa.ChildSA, [32]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.sas[id]
	if !ok || v.index != index {
		return nil, [32]byte{}, false
	}
	c, err := sa.Unmarshal(v.pt)
	if err != nil {
		return nil, [32]byte{}, false
	}
	return c, v.hash, true
}

// dropLocked forgets (and clears) the staged SAs drop says to, and
// returns how many. s.mu must be held.
func (s *stage) dropLocked(drop func(id string) bool) int {
	n := 0
	for id, v := range s.sas {
		if drop(id) {
			clear(v.pt)
			delete(s.sas, id)
			n++
		}
	}
	return n
}

func (s *stage) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sas)
}

// stageStandby follows the replicated SA set while this node is a standby:
// at most every StageInterval it opens and decodes the SAs written since
// the last round (in the bulk lane), forgets the deleted ones, and, when
// the dataplane is a Stager, pre-installs the inbound states. It runs
// until ctx ends; while this node is active it only waits.
func (a *Agent) stageStandby(ctx context.Context) {
	fsm := a.store.FSM()
	var last time.Time
	for {
		changed := fsm.Changed()
		if !a.IsActive() {
			if n, err := a.stageRound(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("staging the replicated SAs", "err", err)
			} else if n > 0 {
				a.log.Debug("staged replicated SAs", "changed", n, "staged", a.staged.len())
			}
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		if wait := a.cfg.StageInterval - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}
}

// stageRound brings the stage up to the FSM and returns how many SAs it
// decoded or forgot.
func (a *Agent) stageRound(ctx context.Context) (int, error) {
	var todo []raftstore.SAEntry
	gone := 0
	a.staged.mu.Lock()
	a.store.FSM().View(func(st *raftstore.State) {
		if a.staged.index > st.LastIndex {
			// A snapshot restore went back: stage everything again.
			a.staged.dropLocked(func(string) bool { return true })
			a.staged.index = 0
		}
		// Only entries written after the last round can be new or changed:
		// an integer comparison per SA, no map lookups.
		for _, e := range st.SAs {
			if e.Index > a.staged.index {
				todo = append(todo, *e)
			}
		}
		if len(a.staged.sas)+len(todo) > len(st.SAs) {
			// Some staged SAs were deleted: find them.
			gone = a.staged.dropLocked(func(id string) bool { _, ok := st.SAs[id]; return !ok })
		}
		a.staged.index = st.LastIndex
	})
	a.staged.mu.Unlock()
	if len(todo) == 0 && gone == 0 {
		return 0, nil
	}
	var errs int
	var firstErr error
	err := a.lane.Run(ctx, len(todo), func(i int) error {
		e := &todo[i]
		pt, err := a.sealer.Open(e.ID, e.Sealed)
		if err != nil {
			errs++
			firstErr = cmp.Or(firstErr, err)
			return nil
		}
		if _, err := sa.Unmarshal(pt); err != nil {
			clear(pt)
			errs++
			firstErr = cmp.Or(firstErr, fmt.Errorf("decoding SA %s: %w", e.ID, err))
			return nil
		}
		s := stagedSA{index: e.Index, pt: pt, hash: sha256.Sum256(pt)}
		a.staged.mu.Lock()
		if old, ok := a.staged.sas[e.ID]; ok {
			clear(old.pt)
		}
		a.staged.sas[e.ID] = s
		a.staged.mu.Unlock()
		return nil
	})
	if err != nil {
		// Not everything written since the last round was staged: look at
		// everything next time.
		a.staged.mu.Lock()
		a.staged.index = 0
		a.staged.mu.Unlock()
		return 0, err
	}
	if st, ok := a.dp.(Stager); ok && a.cfg.StageInbound {
		all, err := a.staged.decodeAll(ctx, a.lane)
		if err != nil {
			return len(todo) + gone, err
		}
		if err := st.Stage(ctx, all); err != nil {
			return len(todo) + gone, fmt.Errorf("pre-installing inbound states: %w", err)
		}
	}
	if errs > 0 {
		return len(todo) + gone, fmt.Errorf("%d replicated SAs could not be opened (first: %w)", errs, firstErr)
	}
	return len(todo) + gone, nil
}

// decodeAll decodes every staged SA (for the dataplane's Stage).
func (s *stage) decodeAll(ctx context.Context, lane *bulk.Lane) ([]*sa.ChildSA, error) {
	s.mu.Lock()
	type ref struct {
		id    string
		index uint64
	}
	refs := make([]ref, 0, len(s.sas))
	for id, v := range s.sas {
		refs = append(refs, ref{id, v.index})
	}
	s.mu.Unlock()
	out := make([]*sa.ChildSA, 0, len(refs))
	err := lane.Run(ctx, len(refs), func(i int) error {
		if c, _, ok := s.decoded(refs[i].id, refs[i].index); ok {
			out = append(out, c)
		}
		return nil
	})
	return out, err
}
