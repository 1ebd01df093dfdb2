package ikecarry

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/ipsec/hasync"
	"github.com/handoffvpn/handoff/raftstore"
)

// fakeCharon stands in for one node's charon and its ha plugin: reports
// pushed with report reach the carrier as from the plugin; what the
// carrier sends it is kept, and applied to a lineage that models what a
// passive charon holds (an IKE_ADD twice, a child under an IKE_SA it does
// not hold: errors a real charon would also hit).
type fakeCharon struct {
	in chan *hasync.Message
	// reported counts the reports the carrier has handled.
	reported atomic.Int64

	mu      sync.Mutex
	got     [][]byte
	ever    map[string]bool // every datagram ever received
	holds   *hasync.Lineage
	refused []error
}

func newFakeCharon() *fakeCharon {
	return &fakeCharon{in: make(chan *hasync.Message, 64), holds: hasync.NewLineage(), ever: map[string]bool{}}
}

func (f *fakeCharon) Receive(ctx context.Context, fn func(*hasync.Message), _ func([]byte, error)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m := <-f.in:
			fn(m)
			f.reported.Add(1)
		}
	}
}

func (f *fakeCharon) Send(ctx context.Context, datagrams [][]byte, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range datagrams {
		d = slices.Clone(d)
		f.got = append(f.got, d)
		f.ever[string(d)] = true
		m, err := hasync.Decode(d)
		if err != nil {
			f.refused = append(f.refused, err)
			continue
		}
		if _, err := f.holds.Apply(m); err != nil {
			if m.Type == hasync.IKEDelete && errors.Is(err, hasync.ErrUnknownIKE) {
				// charon ignores the deletion of an IKE_SA it does not hold.
				continue
			}
			f.refused = append(f.refused, fmt.Errorf("%s: %w", m.Type, err))
		}
	}
	return nil
}

// take returns and forgets what the carrier sent.
func (f *fakeCharon) take() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	got := f.got
	f.got = nil
	return got
}

func (f *fakeCharon) view() (ikes []hasync.IKEID, children []uint32, refused []error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ikes, children = f.holds.Live()
	return ikes, children, slices.Clone(f.refused)
}

// fsmLog stands in for the Raft log of a cluster: every entry is applied
// at once to one real FSM, which every carrier of the test reads, as if
// each node's state machine had applied it.
type fsmLog struct {
	fsm         *raftstore.FSM
	mu          sync.Mutex
	index, term uint64
}

func (l *fsmLog) Apply(_ context.Context, payload any) (raftstore.ApplyResult, error) {
	data, err := raftstore.Encode(payload)
	if err != nil {
		return raftstore.ApplyResult{}, err
	}
	l.mu.Lock()
	l.index++
	if _, claim := payload.(*raftstore.ClaimCmd); claim {
		l.term++ // each claim comes from a newly elected leader
	}
	res, _ := l.fsm.Apply(&raft.Log{Index: l.index, Term: l.term, Type: raft.LogCommand, Data: data}).(raftstore.ApplyResult)
	l.mu.Unlock()
	return res, res.Err
}

func loadCapture(t *testing.T) []*hasync.Message {
	t.Helper()
	f, err := os.Open("../../ipsec/hasync/testdata/charon-5.9.8-ha.hex")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var msgs []*hasync.Message
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		b, err := hex.DecodeString(fields[len(fields)-1])
		if err != nil {
			t.Fatal(err)
		}
		m, err := hasync.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

type node struct {
	charon  *fakeCharon
	carrier *Carrier
}

type cluster struct {
	t     *testing.T
	log   *fsmLog
	nodes map[string]*node
}

func newCluster(t *testing.T, sealer *raftstore.Sealer, ids ...string) *cluster {
	ctx, cancel := context.WithCancel(context.Background())
	c := &cluster{t: t, log: &fsmLog{fsm: raftstore.NewFSM(slog.New(slog.DiscardHandler))}, nodes: map[string]*node{}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	for _, id := range ids {
		c.apply(&raftstore.MemberCmd{ID: id, Address: id + ":7946", Role: raftstore.RoleGateway})
		n := &node{charon: newFakeCharon()}
		n.carrier = New(Config{Node: id}, n.charon, c.log, c.log.fsm, sealer, slog.New(slog.DiscardHandler))
		c.nodes[id] = n
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = n.carrier.Run(ctx)
		}()
	}
	return c
}

func (c *cluster) apply(p any) {
	c.t.Helper()
	if _, err := c.log.Apply(context.Background(), p); err != nil {
		c.t.Fatal(err)
	}
}

// claim makes id the holder of the active role in the log, and its
// carrier active.
func (c *cluster) claim(id string) Carried {
	c.t.Helper()
	c.apply(&raftstore.ClaimCmd{Node: id, At: time.Now()})
	carried, err := c.nodes[id].carrier.Activate(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	return carried
}

func testSealer(t *testing.T, b byte) *raftstore.Sealer {
	s, err := raftstore.NewSealer(bytes.Repeat([]byte{b}, raftstore.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// eventually waits (bounded) for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("waited 20s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// agree waits until the standby's charon holds what the active's lineage
// does (the same IKE_SAs and CHILD_SAs, and every datagram of the
// active's replay received), and checks it refused nothing.
func agree(t *testing.T, step string, active *Carrier, standby *fakeCharon) {
	t.Helper()
	eventually(t, step+": the standby's charon to hold the active's IKE_SAs", func() bool {
		active.mu.Lock()
		ikes, children := active.lineage.Live()
		replay := active.lineage.Replay()
		active.mu.Unlock()
		hi, hc, _ := standby.view()
		if fmt.Sprint(ikes, children) != fmt.Sprint(hi, hc) {
			return false
		}
		standby.mu.Lock()
		defer standby.mu.Unlock()
		for _, d := range replay {
			if !standby.ever[string(d)] {
				return false
			}
		}
		return true
	})
	if _, _, refused := standby.view(); len(refused) > 0 {
		t.Fatalf("%s: the standby's charon would refuse what it was fed: %v", step, refused)
	}
}

// The active's charon reports (a real capture: tunnel up, DPDs, a CHILD_SA
// rekey, an IKE_SA rekey) reach the standby's charon through the log,
// step by step, each datagram once: at every step the standby holds what
// the active does, and it never gets a datagram it already has. Then the
// standby takes over: it is fed what is left, activated last, and what
// its own charon reports goes to the old active, now a standby, which is
// sent only that.
func TestCarrierFeedsTheStandbyWhatTheActiveReports(t *testing.T) {
	c := newCluster(t, testSealer(t, 1), "gw1", "gw2")
	gw1, gw2 := c.nodes["gw1"], c.nodes["gw2"]
	c.claim("gw1")
	if got := gw1.charon.take(); len(got) != 1 || !bytes.Equal(got[0], hasync.SegmentMessage(hasync.SegmentDrop, 1)) {
		t.Fatalf("activation sent %x, want one SEGMENT_DROP", got)
	}

	capture := loadCapture(t)
	sentTotal := 0
	for i, m := range capture {
		gw1.charon.in <- m
		eventually(t, "the report to be handled", func() bool { return gw1.charon.reported.Load() == int64(i+1) })
		if m.Type == hasync.Resync || m.Type == hasync.SegmentTake {
			continue
		}
		agree(t, fmt.Sprintf("after report %d (%s)", i, m.Type), gw1.carrier, gw2.charon)
		sentTotal += len(gw2.charon.take())
	}
	// 16 state reports in the capture, each waited for: the standby got
	// the 16 less the IKE_DELETE (the rekey's IKE_ADD retires the old
	// IKE_SA on the receiver) and the late MID of the retired IKE_SA;
	// for the CHILD_DELETE it got the carrier's own.
	if sentTotal != 14 {
		t.Fatalf("the standby's charon got %d datagrams for 16 reports, want 14", sentTotal)
	}

	// Takeover: gw1 fences, gw2 claims.
	if err := gw1.carrier.Deactivate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := gw1.charon.take(); len(got) != 1 || !bytes.Equal(got[0], hasync.SegmentMessage(hasync.SegmentTake, 1)) {
		t.Fatalf("deactivation sent %x, want one SEGMENT_TAKE", got)
	}
	carried := c.claim("gw2")
	got := gw2.charon.take()
	if len(got) == 0 || !bytes.Equal(got[len(got)-1], hasync.SegmentMessage(hasync.SegmentDrop, 1)) {
		t.Fatalf("the new active's charon got %d datagrams, the last not SEGMENT_DROP", len(got))
	}
	ikes, children, _ := gw2.charon.view()
	if !slices.Equal(carried.IKEs, ikes) || len(carried.Children) != len(children) || !carried.Children[0xa610042c] {
		t.Fatalf("carried %v %v, the new active's charon holds %v %08x", carried.IKEs, carried.Children, ikes, children)
	}

	// The new active's charon answers the peer's next DPD: gw1's charon
	// (holding everything already) gets that MID only.
	mid := midResponder(carried.IKEs[0], 4)
	gw2.charon.in <- decode(t, mid)
	eventually(t, "the old active to be fed the new MID", func() bool {
		gw1.charon.mu.Lock()
		defer gw1.charon.mu.Unlock()
		return len(gw1.charon.got) > 0
	})
	time.Sleep(3 * minFeedInterval)
	if got := gw1.charon.take(); len(got) != 1 || !bytes.Equal(got[0], mid) {
		t.Fatalf("the old active's charon got %d datagrams, want only the new MID", len(got))
	}
}

// A standby that starts (or restarts) with chains in the log first retires
// whatever copies its charon may hold from an earlier life, then feeds
// each chain whole; so does one whose charon restarts (its RESYNC comes a
// second after the start, when charon may hold what it got in between). A chain that does not open (sealed with another
// key) is named and skipped; the others are fed.
func TestCarrierStartsClean(t *testing.T) {
	sealer := testSealer(t, 1)
	c := newCluster(t, sealer, "gw1", "gw2")
	gw1 := c.nodes["gw1"]
	c.claim("gw1")
	for _, m := range loadCapture(t)[:5] {
		gw1.charon.in <- m
	}
	eventually(t, "a chain in the log", func() bool {
		n := 0
		c.log.fsm.View(func(st *raftstore.State) { n = len(st.IKEChains) })
		return n == 1
	})
	gw2 := c.nodes["gw2"]
	agree(t, "first feed", gw1.carrier, gw2.charon)
	first := gw2.charon.take()

	// A third node starting now: deletions first, then the chain.
	late := newFakeCharon()
	lc := New(Config{Node: "gw3"}, late, c.log, c.log.fsm, sealer, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = lc.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	var got [][]byte
	eventually(t, "the late standby's first feed", func() bool {
		late.mu.Lock()
		defer late.mu.Unlock()
		got = slices.Clone(late.got)
		return len(got) >= len(first)+1
	})
	if m := decode(t, got[0]); m.Type != hasync.IKEDelete || !slices.EqualFunc(got[1:], first, bytes.Equal) {
		t.Fatalf("late standby got %d datagrams, first %s; want IKE_DELETE then the %d of the chain", len(got), m.Type, len(first))
	}

	// gw2's charon restarts.
	gw2.charon.mu.Lock()
	gw2.charon.holds = hasync.NewLineage()
	gw2.charon.mu.Unlock()
	gw2.charon.in <- decode(t, hasync.SegmentMessage(hasync.Resync, 1))
	eventually(t, "the restarted charon to be fed again", func() bool {
		gw2.charon.mu.Lock()
		defer gw2.charon.mu.Unlock()
		return len(gw2.charon.got) >= len(first)+1
	})
	if again := gw2.charon.take(); decode(t, again[0]).Type != hasync.IKEDelete || !slices.EqualFunc(again[1:], first, bytes.Equal) {
		t.Fatalf("after charon's restart it got %d datagrams, want IKE_DELETE then the %d of the chain", len(again), len(first))
	}

	// A chain sealed with another cluster's key is skipped, and named.
	other := testSealer(t, 2)
	bogus, err := other.Seal(chainAD("v2-0000000000000001-0000000000000002-r"), encodeChain([][]byte{hasync.IKEDeleteMessage(hasync.IKEID{Version: 2, SPIi: [8]byte{1}})}))
	if err != nil {
		t.Fatal(err)
	}
	c.apply(&raftstore.IKEChainsCmd{Node: "gw1", Upserts: []raftstore.SAUpsert{{ID: "v2-0000000000000001-0000000000000002-r", Sealed: bogus}}})
	gw2.carrier.feedMu.Lock()
	_, err = gw2.carrier.feedLocked(context.Background())
	gw2.carrier.feedMu.Unlock()
	if !errors.Is(err, raftstore.ErrSealKey) || !strings.Contains(err.Error(), "v2-0000000000000001-0000000000000002-r") {
		t.Fatalf("feeding a chain sealed with another key: %v", err)
	}
	agree(t, "after a bad chain", gw1.carrier, gw2.charon)
}

// A chain's encoding refuses what is not a list of ha datagrams.
func TestDecodeChainRefuses(t *testing.T) {
	good := encodeChain([][]byte{hasync.IKEDeleteMessage(hasync.IKEID{Version: 2, SPIi: [8]byte{1}})})
	if _, err := decodeChain(good); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"empty":           nil,
		"no datagrams":    {0},
		"lying length":    {1, 200, 3, 6},
		"trailing":        append(slices.Clone(good), 0),
		"not ha datagram": {1, 2, 9, 9},
	} {
		if _, err := decodeChain(b); !errors.Is(err, errChain) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func decode(t *testing.T, b []byte) *hasync.Message {
	t.Helper()
	m, err := hasync.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// midResponder encodes an IKE_MID_RESPONDER as the plugin does.
func midResponder(id hasync.IKEID, mid uint32) []byte {
	// The IKE_DELETE encoding is version, type, IKE_ID attribute: swap
	// the type and append the MID attribute.
	b := hasync.IKEDeleteMessage(id)
	b[1] = byte(hasync.IKEMIDResponder)
	return append(b, byte(hasync.AttrMID), byte(mid>>24), byte(mid>>16), byte(mid>>8), byte(mid))
}

// A planned hand-over: Quiesce makes the active's charon passive first,
// and when it returns the report charon sent as it went passive is in the
// log; Resume makes charon active again.
func TestQuiesceCommitsTheLastReports(t *testing.T) {
	c := newCluster(t, testSealer(t, 1), "gw1", "gw2")
	gw1 := c.nodes["gw1"]
	// A settle long enough for a machine twice as busy: the test hands
	// the report over at once, and waits until it is handled.
	gw1.carrier.cfg.QuiesceSettle = 5 * time.Second
	c.claim("gw1")
	capture := loadCapture(t)
	for _, m := range capture[1:5] {
		gw1.charon.in <- m
	}
	eventually(t, "the first reports to be handled", func() bool { return gw1.charon.reported.Load() == 4 })
	gw1.charon.take()
	done := make(chan error, 1)
	go func() { done <- gw1.carrier.Quiesce(context.Background()) }()
	eventually(t, "charon to be told to go passive", func() bool {
		gw1.charon.mu.Lock()
		defer gw1.charon.mu.Unlock()
		return len(gw1.charon.got) == 1
	})
	gw1.charon.in <- capture[6] // IKE_MID_RESPONDER 3, reported as charon went passive
	eventually(t, "the last report to be handled", func() bool { return gw1.charon.reported.Load() == 5 })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := gw1.charon.take(); !bytes.Equal(got[0], hasync.SegmentMessage(hasync.SegmentTake, 1)) {
		t.Fatalf("quiesce sent %x first, want SEGMENT_TAKE", got[0])
	}
	var chain [][]byte
	c.log.fsm.View(func(st *raftstore.State) {
		for _, e := range st.IKEChains {
			chain, _ = gw1.carrier.open(*e)
		}
	})
	if len(chain) == 0 || !bytes.Equal(chain[len(chain)-1], capture[6].Raw) {
		t.Fatalf("the log's chain ends %x, want the last MID %x", chain[len(chain)-1], capture[6].Raw)
	}
	if err := gw1.carrier.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := gw1.charon.take(); len(got) != 1 || !bytes.Equal(got[0], hasync.SegmentMessage(hasync.SegmentDrop, 1)) {
		t.Fatalf("resume sent %x, want SEGMENT_DROP", got)
	}
}

// After a round that fed CHILD_SAs a standby runs ChildrenFed at each of
// sweepAfter (charon installs their states after the feed returns), and
// not after rounds that fed none.
func TestStandbySweepsAfterFeedingChildren(t *testing.T) {
	sealer := testSealer(t, 1)
	c := newCluster(t, sealer, "gw1")
	gw1 := c.nodes["gw1"]
	c.claim("gw1")
	var sweeps atomic.Int64
	standby := newFakeCharon()
	sc := New(Config{Node: "gw2", ChildrenFed: func(context.Context) { sweeps.Add(1) }}, standby, c.log, c.log.fsm, sealer, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = sc.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	capture := loadCapture(t)
	for _, m := range capture[1:4] { // IKE_ADD, MID, UPDATE: no child
		gw1.charon.in <- m
	}
	eventually(t, "the IKE_SA fed", func() bool { _, _, _ = standby.view(); return len(sc.Fed()) == 1 })
	time.Sleep(sweepAfter[len(sweepAfter)-1] + 200*time.Millisecond)
	if n := sweeps.Load(); n != 0 {
		t.Fatalf("%d sweeps after feeding no CHILD_SA", n)
	}
	gw1.charon.in <- capture[4] // CHILD_ADD
	eventually(t, "three sweeps after the child was fed", func() bool { return sweeps.Load() == int64(len(sweepAfter)) })
	time.Sleep(500 * time.Millisecond)
	if n := sweeps.Load(); n != int64(len(sweepAfter)) {
		t.Fatalf("%d sweeps, want %d", n, len(sweepAfter))
	}
}

// A takeover's Prepare and Activate unseal the log's chains once: Activate
// takes the lineage Prepare restored when no chain changed in between,
// and restores again when one did.
func TestActivateReusesWhatPrepareRestored(t *testing.T) {
	c := newCluster(t, testSealer(t, 1), "gw1", "gw2")
	gw1, gw2 := c.nodes["gw1"], c.nodes["gw2"]
	c.claim("gw1")
	for _, m := range loadCapture(t)[1:5] {
		gw1.charon.in <- m
	}
	eventually(t, "the reports to be handled", func() bool { return gw1.charon.reported.Load() == 4 })
	agree(t, "fed", gw1.carrier, gw2.charon)
	ctx := context.Background()
	chainIndex := func() (idx uint64) {
		c.log.fsm.View(func(st *raftstore.State) {
			for _, e := range st.IKEChains {
				idx = e.Index
			}
		})
		return idx
	}
	for _, changed := range []bool{false, true} {
		held, err := gw2.carrier.Prepare(ctx)
		if err != nil || len(held) != 1 {
			t.Fatalf("prepare: held %v, %v", held, err)
		}
		prepared := gw2.carrier.prepared.lineage
		if changed {
			before := chainIndex()
			gw1.charon.in <- loadCapture(t)[6] // a MID: the chain's version moves
			eventually(t, "the chain to change", func() bool { return chainIndex() > before })
		}
		c.apply(&raftstore.ClaimCmd{Node: "gw2", At: time.Now()})
		if _, err := gw2.carrier.Activate(ctx); err != nil {
			t.Fatal(err)
		}
		gw2.carrier.mu.Lock()
		reused := gw2.carrier.lineage == prepared
		gw2.carrier.mu.Unlock()
		if reused == changed {
			t.Fatalf("chain changed %v: Activate reused Prepare's lineage %v", changed, reused)
		}
		if err := gw2.carrier.Deactivate(ctx); err != nil {
			t.Fatal(err)
		}
		c.apply(&raftstore.ClaimCmd{Node: "gw1", At: time.Now()})
	}
}
