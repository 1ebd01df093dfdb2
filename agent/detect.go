package agent

import (
	"context"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// detectLeaderLoss starts this follower's election as soon as its leader
// has been silent for SuspectAfter (plus this node's stagger), instead of
// at Raft's randomised heartbeat timeout, 1–2 × the configured one. It runs
// until ctx ends.
//
// Safety is the same as Raft's own timeout gives: a follower clears its
// leader, and so can vote for another, only after SuspectAfter ≥ twice the
// leader lease without contact, and a leader cut off from the majority
// steps down and fences within about two leases. Raft re-checks the last
// contact before it starts the election, so a follower that just heard
// from its leader stays put.
//
// Raft's randomisation is what keeps two followers from splitting the
// vote; the stagger replaces it with an order. A follower with a leader
// refuses a pre-vote, so a candidate can only win once the other voters
// have timed out too: the node that fires last wins. The best-ranked
// gateway (healthy, then priority, then ID: the one a witness would hand
// over to) fires last, one stagger after the next best, and so on; a
// witness fires first and never wins that way.
func (a *Agent) detectLeaderLoss(ctx context.Context) {
	after, stagger := a.cfg.SuspectAfter, a.cfg.SuspectStagger
	if after <= 0 {
		return
	}
	poll := max(stagger/2, 5*time.Millisecond)
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	lowered := false
	restore := func() {
		if err := a.store.RestoreHeartbeat(); err != nil {
			a.log.Error("restoring the Raft heartbeat timeout", "err", err)
		}
		lowered = false
	}
	defer func() {
		if lowered {
			restore()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		state := a.store.State()
		silent := time.Since(a.store.LastContact())
		if lowered {
			// Candidate or leader now (or the leader spoke again): Raft's
			// own timing takes over.
			if state != raft.Follower || silent < after {
				restore()
			}
			continue
		}
		leader, _ := a.store.Leader()
		if state != raft.Follower || leader == "" || silent < after {
			continue
		}
		wait := after + time.Duration(a.fireOrder(leader))*stagger
		if silent < wait {
			continue
		}
		if err := a.store.ExpediteElection(wait); err != nil {
			a.log.Error("starting an election after the leader went silent", "leader", leader, "silent", silent, "err", err)
			continue
		}
		lowered = true
		a.log.Warn("leader silent; starting an election", "leader", leader, "silent", silent.Round(time.Millisecond))
	}
}

// fireOrder is how many staggers after SuspectAfter this node starts its
// election when leader goes silent: 0 for the voter ranked last, up to
// n−1 for the best-ranked gateway among the n voters other than leader.
func (a *Agent) fireOrder(leader string) int {
	order := make([]string, 0, 4)
	for _, m := range a.rankGateways(leader) {
		order = append(order, m.ID)
	}
	servers, err := a.store.Servers()
	if err != nil {
		return 0
	}
	var others []string
	for _, s := range servers {
		id := string(s.ID)
		if s.Suffrage == raft.Voter && id != leader && !slices.Contains(order, id) {
			others = append(others, id)
		}
	}
	slices.Sort(others)
	order = append(order, others...)
	i := slices.Index(order, a.cfg.NodeID)
	if i < 0 {
		return 0
	}
	return len(order) - 1 - i
}
