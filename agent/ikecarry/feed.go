package ikecarry

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"syscall"
	"time"

	"github.com/handoffvpn/handoff/ipsec/hasync"
	"github.com/handoffvpn/handoff/raftstore"
)

// fedChain is what a standby's charon was given of one chain.
type fedChain struct {
	index uint64 // log index of the entry fed
	// sent are the hashes of the chain's datagrams as last fed: a
	// datagram of a later version of the chain not among them is new.
	sent map[[32]byte]struct{}
	// ikes are the chain's IKE_SAs, oldest first; children its CHILD_SAs
	// by inbound SPI.
	ikes     []hasync.IKEID
	children map[uint32]struct{}
}

func newFed(index uint64, chain [][]byte) *fedChain {
	f := &fedChain{index: index, sent: make(map[[32]byte]struct{}, len(chain)), children: make(map[uint32]struct{})}
	for _, d := range chain {
		f.sent[sha256.Sum256(d)] = struct{}{}
		m, err := hasync.Decode(d)
		if err != nil {
			continue // decodeChain checked every datagram
		}
		switch m.Type {
		case hasync.IKEAdd:
			if id, ok := m.IKEID(); ok {
				f.ikes = append(f.ikes, id)
			}
		case hasync.ChildAdd:
			if a, ok := m.Find(hasync.AttrInboundSPI); ok {
				f.children[a.SPI()] = struct{}{}
			}
		}
	}
	return f
}

// live is the chain's newest IKE_SA, which holds its children on the
// receiving charon (an IKE rekey hands them over).
func (f *fedChain) live() hasync.IKEID {
	if len(f.ikes) == 0 {
		return hasync.IKEID{}
	}
	return f.ikes[len(f.ikes)-1]
}

// deletes are the datagrams that retire the whole chain, newest IKE_SA
// first (an IKE_SA charon does not hold is ignored by it).
func (f *fedChain) deletes(out [][]byte) [][]byte {
	for _, id := range slices.Backward(f.ikes) {
		out = append(out, hasync.IKEDeleteMessage(id))
	}
	return out
}

// minFeedInterval spaces the feeder's rounds: the state machine changes
// with every replicated SA, and a round reads every chain's position.
const minFeedInterval = 50 * time.Millisecond

// sweepAfter are the delays, after a round that fed CHILD_SAs, at which
// ChildrenFed runs: charon installs their states asynchronously (its ha
// dispatcher is one thread deriving keys and calling the kernel for one
// datagram after the other), so a sweep right after the send can come
// before them.
var sweepAfter = []time.Duration{50 * time.Millisecond, 300 * time.Millisecond, 1500 * time.Millisecond}

// feedLoop keeps a standby's charon fed with the committed chains.
func (c *Carrier) feedLoop(ctx context.Context) {
	retry := time.NewTicker(5 * time.Second)
	defer retry.Stop()
	sweep := time.NewTimer(time.Hour)
	sweep.Stop()
	defer sweep.Stop()
	var sweeps []time.Time // pending ChildrenFed runs, in order
	next := time.Now()
	for {
		var wait <-chan time.Time
		if d := time.Until(next); d > 0 {
			t := time.NewTimer(d)
			wait = t.C
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-wait:
			case <-sweep.C:
				t.Stop()
				sweeps = c.sweep(ctx, sweeps, sweep)
				continue
			}
		}
		changed := c.state.Changed()
		children, err := c.feedRound(ctx)
		if err != nil && ctx.Err() == nil {
			c.slog.Warn("ha channel: feeding the local charon", "err", err)
		}
		if children > 0 && c.cfg.ChildrenFed != nil {
			now := time.Now()
			sweeps = sweeps[:0]
			for _, d := range sweepAfter {
				sweeps = append(sweeps, now.Add(d))
			}
			sweep.Reset(sweepAfter[0])
		}
		for waiting := true; waiting; {
			select {
			case <-ctx.Done():
				return
			case <-changed:
				waiting = false
			case <-c.feed:
				waiting = false
			case <-retry.C:
				waiting = false
			case <-sweep.C:
				sweeps = c.sweep(ctx, sweeps, sweep)
			}
		}
		next = time.Now().Add(minFeedInterval)
	}
}

// sweep runs ChildrenFed for the due entries of sweeps and arms timer
// for the next one; it returns the entries left.
func (c *Carrier) sweep(ctx context.Context, sweeps []time.Time, timer *time.Timer) []time.Time {
	now := time.Now()
	due := 0
	for due < len(sweeps) && !sweeps[due].After(now) {
		due++
	}
	if due > 0 {
		c.cfg.ChildrenFed(ctx)
	}
	sweeps = sweeps[due:]
	if len(sweeps) > 0 {
		timer.Reset(time.Until(sweeps[0]))
	}
	return sweeps
}

// feedRound feeds a standby's charon (see feedLocked); it returns how
// many CHILD_SAs it fed.
func (c *Carrier) feedRound(ctx context.Context) (int, error) {
	c.feedMu.Lock()
	defer c.feedMu.Unlock()
	if c.isActive() {
		return 0, nil
	}
	return c.feedLocked(ctx)
}

// Prepare feeds a standby's charon what the log holds and it was not
// given, at once: a takeover calls it before installing the replicated
// CHILD_SAs, so that these replace every outbound state charon installed
// (at sequence number 0) with the jumped counters. It returns the inbound
// SPIs of the CHILD_SAs the log's IKE state holds (charon's set): for a
// carried peer, a replicated CHILD_SA outside it was retired by the peer
// (its deletion reached the IKE state before the SA set) and must not be
// installed. nil when the carrier is already active.
func (c *Carrier) Prepare(ctx context.Context) (map[uint32]bool, error) {
	c.feedMu.Lock()
	defer c.feedMu.Unlock()
	if c.isActive() {
		return nil, nil
	}
	_, err := c.feedLocked(ctx)
	c.prepared = c.restore()
	_, children := c.prepared.lineage.Live()
	held := make(map[uint32]bool, len(children))
	for _, spi := range children {
		held[spi] = true
	}
	return held, err
}

// feedLocked sends the local charon what the log holds and it was not
// given: new chains whole, changed chains' new datagrams, and deletions
// for the chains and children the log no longer holds. It returns how
// many CHILD_ADDs it sent. c.feedMu is held.
func (c *Carrier) feedLocked(ctx context.Context) (children int, err error) {
	c.mu.Lock()
	fed, purge := c.fed, c.purge
	c.mu.Unlock()

	entries := c.committedChains()

	var out [][]byte
	next := make(map[string]*fedChain, len(entries))
	var bad []error
	for _, e := range entries {
		if f := fed[e.ID]; f != nil && f.index == e.Index {
			next[e.ID] = f
			continue
		}
		chain, err := c.open(e)
		if err != nil {
			bad = append(bad, err)
			if f := fed[e.ID]; f != nil {
				next[e.ID] = f
			}
			continue
		}
		nf := newFed(e.Index, chain)
		next[e.ID] = nf
		switch f := fed[e.ID]; {
		case purge:
			// It may hold copies from before this process: retire them,
			// then feed the chain whole.
			out = nf.deletes(out)
			out = append(out, chain...)
		case f == nil:
			out = append(out, chain...)
		default:
			for _, d := range chain {
				if _, ok := f.sent[sha256.Sum256(d)]; !ok {
					out = append(out, d)
				}
			}
			live := nf.live()
			for spi := range f.children {
				if _, ok := nf.children[spi]; !ok && live != (hasync.IKEID{}) {
					out = append(out, hasync.ChildDeleteMessage(live, spi))
				}
			}
		}
	}
	for key, f := range fed {
		if _, ok := next[key]; !ok {
			out = f.deletes(out)
		}
	}
	for _, d := range out {
		if hasync.MsgType(d[1]) == hasync.ChildAdd {
			children++
		}
	}
	if len(out) > 0 {
		err := c.ch.Send(ctx, out, c.cfg.Gap)
		clear(out)
		if err != nil {
			// What charon got of this round is unknown: start over clean.
			c.mu.Lock()
			c.fed, c.purge = nil, true
			c.mu.Unlock()
			return children, fmt.Errorf("feeding %d datagrams: %w", len(out), err)
		}
	}
	c.mu.Lock()
	c.fed, c.purge = next, false
	c.mu.Unlock()
	if len(bad) > 0 {
		return children, fmt.Errorf("%d of %d IKE chains could not be opened; the first: %w", len(bad), len(entries), bad[0])
	}
	return children, nil
}

func (c *Carrier) isActive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active
}

// committedChains copies the log's chains, oldest write first: the order
// the active's charon reported them in.
func (c *Carrier) committedChains() []raftstore.SAEntry {
	var entries []raftstore.SAEntry
	c.state.View(func(st *raftstore.State) {
		entries = make([]raftstore.SAEntry, 0, len(st.IKEChains))
		for _, e := range st.IKEChains {
			entries = append(entries, *e)
		}
	})
	slices.SortFunc(entries, func(a, b raftstore.SAEntry) int { return cmp.Compare(a.Index, b.Index) })
	return entries
}

// open unseals and decodes one chain.
func (c *Carrier) open(e raftstore.SAEntry) ([][]byte, error) {
	pt, err := c.sealer.Open(chainAD(e.ID), e.Sealed)
	if err != nil {
		return nil, fmt.Errorf("IKE chain %s: %w", e.ID, err)
	}
	chain, err := decodeChain(pt)
	clear(pt)
	if err != nil {
		return nil, fmt.Errorf("IKE chain %s: %w", e.ID, err)
	}
	return chain, nil
}

// Carried is what a takeover carried: the IKE_SAs the new active's
// charon holds, one per chain, and the inbound SPIs of their CHILD_SAs.
type Carried struct {
	IKEs     []hasync.IKEID
	Children map[uint32]bool
}

// Activate makes this node's charon take over the IKE_SAs it holds
// passive: it feeds whatever the log holds and charon was not given
// (the caller has applied every committed entry: the barrier of a new
// leader), then activates the segment, and from then on records charon's
// reports. A chain that does not open or restore is left out (its peers
// fall back to re-establishment). Already active, it only activates the
// segment again.
func (c *Carrier) Activate(ctx context.Context) (Carried, error) {
	c.feedMu.Lock()
	defer c.feedMu.Unlock()
	already := c.isActive()
	var lineage *hasync.Lineage
	if !already {
		if _, err := c.feedLocked(ctx); err != nil {
			return Carried{}, fmt.Errorf("feeding charon before activating: %w", err)
		}
		lineage = c.restore().lineage
	}
	if err := c.ch.Send(ctx, [][]byte{hasync.SegmentMessage(hasync.SegmentDrop, 1)}, 0); err != nil {
		return Carried{}, fmt.Errorf("activating charon's passive IKE_SAs: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !already {
		c.active, c.lineage, c.fed = true, lineage, nil
		clear(c.pending)
	}
	ikes, children := c.lineage.Live()
	carried := Carried{IKEs: ikes, Children: make(map[uint32]bool, len(children))}
	for _, spi := range children {
		carried.Children[spi] = true
	}
	return carried, nil
}

// restore builds the lineage the log holds, with the chain versions it
// was built from. A lineage Prepare built from the same versions is taken
// as it is (and only once: Activate then follows charon's reports in
// it): a takeover calls Prepare and then Activate, and unsealing every
// chain twice in its critical path bought nothing. c.feedMu is held.
func (c *Carrier) restore() *restored {
	entries := c.committedChains()
	at := make(map[string]uint64, len(entries))
	for _, e := range entries {
		at[e.ID] = e.Index
	}
	if p := c.prepared; p != nil {
		c.prepared = nil
		if maps.Equal(p.at, at) {
			return p
		}
	}
	l := hasync.NewLineage()
	for _, e := range entries {
		key, err := hasync.ParseKey(e.ID)
		if err != nil {
			c.slog.Warn("ha channel: an IKE chain's key does not parse; its peers are not carried", "chain", e.ID, "err", err)
			continue
		}
		chain, err := c.open(e)
		if err == nil {
			err = l.RestoreChain(key, chain)
		}
		if err != nil {
			c.slog.Warn("ha channel: an IKE chain does not restore; its peers are not carried", "chain", e.ID, "err", err)
		}
	}
	return &restored{lineage: l, at: at}
}

// restored is a lineage restore built, with the log index of each chain
// it was built from.
type restored struct {
	lineage *hasync.Lineage
	at      map[string]uint64
}

// Deactivate makes this node's charon hold its IKE_SAs passive (it stops
// answering and initiating on them) and the carrier a standby: called
// when the node fences, and at start. For a node that was active, what
// its charon reported is what it holds: the feeder sends it only what the
// log holds beyond that, and deletes what the log never got.
func (c *Carrier) Deactivate(ctx context.Context) error {
	c.feedMu.Lock()
	defer c.feedMu.Unlock()
	err := c.ch.Send(ctx, [][]byte{hasync.SegmentMessage(hasync.SegmentTake, 1)}, 0)
	c.mu.Lock()
	if c.active {
		// Index 0: the next round compares every chain of the log with it.
		fed := make(map[string]*fedChain)
		for _, k := range c.lineage.Chains() {
			fed[k.Key()] = newFed(0, c.lineage.Chain(k))
		}
		c.active, c.lineage = false, nil
		clear(c.pending)
		c.fed, c.purge = fed, false
	}
	c.mu.Unlock()
	signal(c.feed)
	if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
		// Refused: no charon listens, and none answers a peer either.
		return fmt.Errorf("deactivating charon's IKE_SAs: %w", err)
	}
	return nil
}

// Quiesce prepares a planned hand-over on the active: charon's IKE_SAs go
// passive (a peer's request is dropped before any message ID moves, and
// its retransmission finds the successor), then, once charon's last
// reports had time to arrive, every one of them is committed. The
// successor then holds exactly the message IDs the peers expect. Resume
// undoes it when the hand-over does not happen.
func (c *Carrier) Quiesce(ctx context.Context) error {
	if sent, err := c.segmentIfActive(ctx, hasync.SegmentTake, "making charon's IKE_SAs passive for the hand-over"); !sent || err != nil {
		return err
	}
	t := time.NewTimer(c.cfg.QuiesceSettle)
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-t.C:
	}
	if err := c.commitPending(ctx); err != nil {
		return fmt.Errorf("committing charon's last reports before the hand-over: %w", err)
	}
	return nil
}

// Resume makes charon's IKE_SAs active again after a Quiesce whose
// hand-over did not happen.
func (c *Carrier) Resume(ctx context.Context) error {
	_, err := c.segmentIfActive(ctx, hasync.SegmentDrop, "making charon's IKE_SAs active again")
	return err
}

// segmentIfActive sends charon a segment message if this carrier is the
// active's; it reports whether it did.
func (c *Carrier) segmentIfActive(ctx context.Context, t hasync.MsgType, what string) (bool, error) {
	if !c.isActive() {
		return false, nil
	}
	if err := c.ch.Send(ctx, [][]byte{hasync.SegmentMessage(t, 1)}, 0); err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	return true, nil
}

// Fed reports the chain keys the standby's charon was given (for tests
// and status).
func (c *Carrier) Fed() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.fed))
}
