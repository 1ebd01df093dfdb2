package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/handoffvpn/handoff/raftstore"
)

// Why the active role moves. A new leader knows only part of it: that it
// won an election. A hand-over is the old leader's decision, so the old
// leader announces it in the log (raftstore.HandoverCmd) before it
// transfers leadership, and the successor reads it from there; an
// unplanned takeover is explained by what the successor saw itself (its
// detector, its last contact with the leader).

// announceTimeout bounds the commit of a hand-over announcement: a leader
// that cannot commit (the reason it hands over may be just that) still
// transfers leadership, and the takeover's reason is then unknown.
const announceTimeout = time.Second

// suspicion is what the detector saw when it started this node's election.
type suspicion struct {
	leader string
	silent time.Duration
	at     time.Time
}

func (a *Agent) noteSuspicion(leader string, silent time.Duration) {
	a.mu.Lock()
	a.suspected = suspicion{leader: leader, silent: silent, at: time.Now()}
	a.mu.Unlock()
}

// takeoverReason says why this node, elected at term, takes the active
// role over: the hand-over announced for it, else what it saw. It returns
// the assignment in force too (the one it takes over from).
func (a *Agent) takeoverReason(term uint64) (cur raftstore.Active, reason raftstore.Reason, detail string) {
	var ho raftstore.Handover
	a.store.FSM().View(func(st *raftstore.State) { cur, ho = st.Active, st.Handover })
	switch {
	case ho.Explains(a.cfg.NodeID, term, cur):
		return cur, ho.Reason, ho.Detail
	case cur.Node == "":
		return cur, raftstore.ReasonFirstElection, "no node was active"
	case cur.Node == a.cfg.NodeID:
		return cur, raftstore.ReasonLeaseLost, fmt.Sprintf("%s lost its leadership at term %d and was re-elected", a.cfg.NodeID, cur.Term)
	}
	a.mu.Lock()
	t, sus, candidateAt := a.electionTimingsLocked(), a.suspected, a.candidateAt
	a.mu.Unlock()
	// A transfer's target is a candidate too, right after hearing its
	// leader: only a silence of the order of the detector's wait (or of
	// Raft's timeout without it) says the leader went away.
	quiet := a.store.HeartbeatTimeout() / 2
	if a.cfg.SuspectAfter > 0 {
		quiet = a.cfg.SuspectAfter / 2
	}
	if t.Detect < quiet {
		return cur, raftstore.ReasonUnknown, fmt.Sprintf("elected %s after last hearing %s, and no hand-over was announced", fmtDur(t.Detect), cur.Node)
	}
	how := "Raft's heartbeat timeout"
	if !sus.at.IsZero() && !candidateAt.IsZero() && candidateAt.Sub(sus.at) < a.store.HeartbeatTimeout() && sus.at.Sub(candidateAt) < time.Second {
		how = "raft.suspect_after"
	}
	return cur, raftstore.ReasonLeaderSilent, fmt.Sprintf("%s silent for %s, noticed by %s", orLeader(cur.Node), fmtDur(t.Detect), how)
}

func orLeader(node string) string {
	if node == "" {
		return "the leader"
	}
	return node
}

func fmtDur(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }

// announceHandover records, before this leader transfers leadership to
// node ("" for any voter), why; its own fence then carries the reason
// too. A failed commit is logged and the transfer goes on.
func (a *Agent) announceHandover(ctx context.Context, node string, reason raftstore.Reason, detail string) {
	a.mu.Lock()
	a.leaving = reason
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, announceTimeout)
	defer cancel()
	if _, err := a.store.Apply(ctx, &raftstore.HandoverCmd{From: a.cfg.NodeID, To: node, Reason: reason, Detail: detail, At: time.Now()}); err != nil {
		a.log.Warn("announcing the hand-over", "to", node, "reason", reason, "err", err)
	}
}

// withdrawHandover takes back an announcement whose transfer did not
// happen while this node still leads: it must not explain a later,
// unrelated election.
func (a *Agent) withdrawHandover(ctx context.Context) {
	a.mu.Lock()
	a.leaving = ""
	a.mu.Unlock()
	if !a.store.IsLeader() {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), announceTimeout)
	defer cancel()
	if _, err := a.store.Apply(ctx, &raftstore.HandoverCmd{From: a.cfg.NodeID, At: time.Now()}); err != nil {
		a.log.Warn("withdrawing the hand-over announcement", "err", err)
	}
}

// fenceReason is why this node, which just lost leadership, fences: the
// hand-over it announced, or a lost lease.
func (a *Agent) fenceReason() raftstore.Reason {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.leaving
	a.leaving = ""
	if r == "" {
		r = raftstore.ReasonLeaseLost
	}
	return r
}
