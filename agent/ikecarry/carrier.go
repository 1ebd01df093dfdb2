// Package ikecarry carries a gateway's IKE_SAs across a takeover. It
// stands in, on every node, as the peer of the local charon's ha plugin
// (ipsec/hasync): on the active node it records what charon reports about
// its IKE_SAs and CHILD_SAs and replicates it through the Raft log as
// sealed lineage chains; on a standby it feeds the committed chains to the
// local charon, which then holds every IKE_SA passive; at a takeover it
// activates them, so that the peers keep their IKE_SAs (same SPIs, keys
// and message IDs) and nobody re-initiates. The design and its safety
// argument are docs/design/ike-continuity.md and docs/ipsec.md.
package ikecarry

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/ipsec/hasync"
	"github.com/handoffvpn/handoff/raftstore"
)

// Channel is the ha channel to the local charon (hasync.Conn).
type Channel interface {
	Receive(ctx context.Context, fn func(*hasync.Message), bad func([]byte, error)) error
	Send(ctx context.Context, datagrams [][]byte, gap time.Duration) error
}

// Log is what the carrier needs of the replicated log: committing entries
// (the active) and reading the committed chains (everyone).
type Log interface {
	Apply(ctx context.Context, payload any) (raftstore.ApplyResult, error)
}

// State is the local state machine (raftstore.FSM).
type State interface {
	View(fn func(st *raftstore.State))
	Changed() <-chan struct{}
}

// Config of a carrier.
type Config struct {
	// Node is this node's ID, the proposer of its chains.
	Node string
	// Window is how long the active gathers charon's reports into one
	// entry after the first one arrives (default 2ms).
	Window time.Duration
	// Gap paces the datagrams fed to charon (default 200µs): its ha
	// dispatcher is one thread, reading one datagram at a time with no
	// acknowledgement, and a burst larger than its socket buffer is lost.
	Gap time.Duration
	// MaxEntry bounds the sealed bytes of one log entry (default 192 KiB,
	// under the size at which the Raft transport's decoder starts copying;
	// see agent.DefaultMaxBatch).
	MaxEntry int
	// QuiesceSettle is how long Quiesce lets charon's last reports arrive
	// after it made the IKE_SAs passive (default 100ms): a request charon
	// was processing then is reported by a worker thread, asynchronously.
	QuiesceSettle time.Duration
	// ChildrenFed, if set, runs on a standby after a feed that gave
	// charon CHILD_SAs: charon installed their outbound states at
	// sequence number 0, and the agent deletes them (a standby keeps no
	// outbound state; the ESP egress fence is the other guard).
	ChildrenFed func(ctx context.Context)
}

func (c *Config) defaults() {
	if c.Window <= 0 {
		c.Window = 2 * time.Millisecond
	}
	if c.Gap <= 0 {
		c.Gap = 200 * time.Microsecond
	}
	if c.MaxEntry <= 0 {
		c.MaxEntry = 192 << 10
	}
	if c.QuiesceSettle <= 0 {
		c.QuiesceSettle = 100 * time.Millisecond
	}
}

// Carrier is one node's end of the ha channel. Its role follows the
// agent's: Run starts it as a standby; Activate makes it the active at a
// takeover, Deactivate a standby again when the node fences. Safe for
// concurrent use.
type Carrier struct {
	cfg    Config
	ch     Channel
	log    Log
	state  State
	sealer *raftstore.Sealer
	slog   *slog.Logger

	// feedMu serialises everything sent to charon: the feeder's rounds,
	// activation and deactivation. Taken before mu. It guards prepared,
	// the lineage the last restore built (see restore).
	feedMu   sync.Mutex
	prepared *restored
	// commitMu serialises commits: two versions of one chain must reach
	// the log in the order they were taken.
	commitMu sync.Mutex
	mu       sync.Mutex // guards the following fields
	active   bool
	// lineage is the active's view of its charon's IKE state, restored
	// from the log at activation and followed from charon's reports.
	lineage *hasync.Lineage
	// pending are chain keys changed and not yet committed.
	pending map[hasync.IKEID]struct{}
	// fed is what the standby's charon was given, by chain key; nil
	// means unknown (before the first round, after charon restarted).
	fed map[string]*fedChain
	// purge: before the next feed, delete from charon every IKE_SA the
	// log names, since it may hold copies from an earlier life.
	purge bool

	kick chan struct{} // the recorder has pending chains
	feed chan struct{} // the feeder must run a round
}

// New returns a carrier. It does nothing until Run.
func New(cfg Config, ch Channel, log Log, state State, sealer *raftstore.Sealer, logger *slog.Logger) *Carrier {
	cfg.defaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Carrier{
		cfg: cfg, ch: ch, log: log, state: state, sealer: sealer, slog: logger,
		pending: make(map[hasync.IKEID]struct{}),
		purge:   true,
		kick:    make(chan struct{}, 1),
		feed:    make(chan struct{}, 1),
	}
}

// Run reads the channel, commits the active's chains and feeds a
// standby's charon until ctx ends.
func (c *Carrier) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		c.record(ctx)
	}()
	go func() {
		defer wg.Done()
		c.feedLoop(ctx)
	}()
	err := c.ch.Receive(ctx, c.receive, func(b []byte, err error) {
		// The datagram may hold key material: only its size is logged.
		c.slog.Warn("ha channel: a datagram from charon does not decode; skipped", "bytes", len(b), "err", err)
	})
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// receive handles one report of the local charon.
func (c *Carrier) receive(m *hasync.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.Type == hasync.Resync {
		// Sent once, a second after charon starts (the plugin's resync
		// setting): it restarted. It may hold IKE_SAs made or fed in
		// that second, so a standby's charon is purged and fed again.
		// On the active its reports go on: the IKE_SAs a crash took away
		// are not told apart here (a reconciliation with VICI's list-sas
		// is the way, docs/design/ike-continuity.md §2.2).
		if c.active {
			c.slog.Warn("ha channel: the active's charon restarted; IKE_SAs it lost stay in the log until their peers' deletions")
			return
		}
		c.slog.Info("ha channel: charon restarted; feeding it the whole lineage again")
		c.fed, c.purge = nil, true
		signal(c.feed)
		return
	}
	if !c.active {
		// A standby's charon reports nothing of passive IKE_SAs; what it
		// may report (its own status) is not the cluster's state.
		return
	}
	changed, err := c.lineage.Apply(m)
	if err != nil {
		id, _ := m.IKEID()
		c.slog.Warn("ha channel: a report of charon does not fit the lineage; skipped", "type", m.Type, "ike_sa", id, "err", err)
		return
	}
	if !changed {
		return
	}
	for _, k := range c.lineage.TakeChanged() {
		c.pending[k] = struct{}{}
	}
	signal(c.kick)
}

// record commits pending chains, gathered for Window after the first.
func (c *Carrier) record(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
		t := time.NewTimer(c.cfg.Window)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := c.commitPending(ctx); err != nil && ctx.Err() == nil {
			c.slog.Warn("ha channel: committing IKE chains", "err", err)
		}
	}
}

// chainAD is the additional data a chain is sealed with: a sealed chain
// cannot be replayed under another chain's key, nor as an SA.
func chainAD(key string) string { return "ike-chain/" + key }

// commitPending seals the pending chains and commits them, in entries of
// at most MaxEntry bytes. Chains whose commit failed stay pending while
// the node is active.
func (c *Carrier) commitPending(ctx context.Context) error {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.mu.Lock()
	if !c.active {
		clear(c.pending)
		c.mu.Unlock()
		return nil
	}
	cmd := &raftstore.IKEChainsCmd{Node: c.cfg.Node}
	keys := make([]hasync.IKEID, 0, len(c.pending))
	for k := range c.pending {
		keys = append(keys, k)
	}
	clear(c.pending)
	var sealErr error
	for _, k := range keys {
		key := k.Key()
		chain := c.lineage.Chain(k)
		if chain == nil {
			cmd.Deletes = append(cmd.Deletes, key)
			continue
		}
		pt := encodeChain(chain)
		sealed, err := c.sealer.Seal(chainAD(key), pt)
		clear(pt)
		if err != nil {
			sealErr = fmt.Errorf("sealing IKE chain %s: %w", key, err)
			break
		}
		cmd.Upserts = append(cmd.Upserts, raftstore.SAUpsert{ID: key, Sealed: sealed})
	}
	c.mu.Unlock()
	if sealErr != nil {
		c.requeue(keys)
		return sealErr
	}
	for _, part := range split(cmd, c.cfg.MaxEntry) {
		if _, err := c.log.Apply(ctx, part); err != nil {
			c.requeue(keys)
			return fmt.Errorf("committing %d IKE chains and %d chain deletions: %w", len(part.Upserts), len(part.Deletes), err)
		}
	}
	return nil
}

func (c *Carrier) requeue(keys []hasync.IKEID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.active {
		return
	}
	for _, k := range keys {
		c.pending[k] = struct{}{}
	}
	signal(c.kick)
}

// split cuts a batch into entries of at most max sealed bytes; deletions
// ride with the last.
func split(cmd *raftstore.IKEChainsCmd, max int) []*raftstore.IKEChainsCmd {
	var out []*raftstore.IKEChainsCmd
	cur := &raftstore.IKEChainsCmd{Node: cmd.Node}
	size := 0
	for _, u := range cmd.Upserts {
		if size > 0 && size+len(u.Sealed) > max {
			out = append(out, cur)
			cur, size = &raftstore.IKEChainsCmd{Node: cmd.Node}, 0
		}
		cur.Upserts = append(cur.Upserts, u)
		size += len(u.Sealed) + len(u.ID)
	}
	cur.Deletes = cmd.Deletes
	if len(cur.Upserts) > 0 || len(cur.Deletes) > 0 {
		out = append(out, cur)
	}
	return out
}

// encodeChain lays a chain's datagrams out as count, then length and
// bytes of each (uvarints).
func encodeChain(datagrams [][]byte) []byte {
	n := binary.MaxVarintLen64
	for _, d := range datagrams {
		n += len(d) + binary.MaxVarintLen32
	}
	b := binary.AppendUvarint(make([]byte, 0, n), uint64(len(datagrams)))
	for _, d := range datagrams {
		b = binary.AppendUvarint(b, uint64(len(d)))
		b = append(b, d...)
	}
	return b
}

// maxChainDatagrams bounds the datagrams of one chain a decoder accepts.
const maxChainDatagrams = 1 << 16

var errChain = errors.New("malformed IKE chain")

// decodeChain reads what encodeChain wrote; every datagram must decode
// as an ha message.
func decodeChain(b []byte) ([][]byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 || n > maxChainDatagrams {
		return nil, fmt.Errorf("%w: datagram count", errChain)
	}
	b = b[k:]
	out := make([][]byte, 0, min(n, uint64(len(b)/2)))
	for i := uint64(0); i < n; i++ {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, fmt.Errorf("%w: datagram %d of %d: bad length", errChain, i+1, n)
		}
		d := slices.Clone(b[k : k+int(l)])
		if _, err := hasync.Decode(d); err != nil {
			return nil, fmt.Errorf("%w: datagram %d of %d: %w", errChain, i+1, n, err)
		}
		out = append(out, d)
		b = b[k+int(l):]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errChain, len(b))
	}
	return out, nil
}
