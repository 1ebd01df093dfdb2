package agent_test

import (
	"testing"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/ipsec/memdp"
	"github.com/handoffvpn/handoff/raftstore"
)

// An SA whose counters stand still gets no new replay record, yet the
// standbys must know its counters are current: the active confirms them
// every ReplayCheckpoint, the standbys' clock of the SA restarts, and a
// takeover after a long quiet jumps its sequence numbers by the
// checkpoint's staleness, not the quiet's (which after an hour overran
// the 32-bit sequence number space).
func TestClusterStandingCountersStayCurrent(t *testing.T) {
	const (
		checkpoint = 200 * time.Millisecond
		quiet      = 5 * time.Second
	)
	e := start(t, cluster.Options{Nodes: specs("gw1", "gw2", "gw3"),
		Agent: agent.Config{ReplayInterval: 50 * time.Millisecond, ReplayCheckpoint: checkpoint}})
	active, act := e.waitActive(0)
	s := memdp.Synthetic(1, e.c.VIP)[0]
	active.DP.Add(s) // no traffic: its counters stand at zero
	e.waitReplicated(1)
	var standby *cluster.Node
	for _, n := range e.c.Nodes() {
		if n != active {
			standby = n
			break
		}
	}
	fsm := standby.Store.FSM()
	first := fsm.AppliedAt(s.ID)
	recorded := time.Now()
	waitFor(t, "the standby's clock of the idle SA restarts", func() bool { return fsm.AppliedAt(s.ID).After(first.Add(checkpoint)) })
	var rec raftstore.ReplayRecord
	fsm.View(func(st *raftstore.State) { rec = st.Replay[s.ID] })
	if rec.OSeq != 0 {
		t.Fatalf("the idle SA's record moved to oseq %d: it was not idle", rec.OSeq)
	}
	time.Sleep(time.Until(recorded.Add(quiet)))

	if err := e.c.Kill(active.Spec.ID); err != nil {
		t.Fatal(err)
	}
	next, _ := e.waitActive(act.Term, active.Spec.ID)
	oseq, ok := next.DP.OSeq(s.ID)
	if !ok {
		t.Fatalf("%s does not carry the idle SA", next.Spec.ID)
	}
	var cfg agent.Config
	cfg.Defaults()
	// Staleness counted from the last confirmation (≤ checkpoint, plus the
	// takeover's own detection and install) against the quiet's: the
	// bound sits between the two.
	if limit := uint64(cfg.MaxPacketRate * (quiet - 1500*time.Millisecond).Seconds()); oseq >= limit {
		t.Fatalf("takeover started the idle SA at oseq %d, ≥ %d: the jump counted the %v of quiet", oseq, limit, quiet)
	}
	if oseq < cfg.MinSeqJump {
		t.Fatalf("takeover started the idle SA at oseq %d, below the minimum jump %d", oseq, cfg.MinSeqJump)
	}
}
