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
	// The detector sleeps until the moment this node's election would be
	// due if the leader stayed silent, not on a fixed poll: a follower
	// whose leader heartbeats wakes once per suspect_after instead of
	// every few milliseconds. Wake-ups are what an idle agent spends its
	// CPU on where reading the clock is a system call (the UML lab guest:
	// 57 % of an idle agent's CPU was the clock and the scheduler).
	d := &silenceDetector{a: a, after: after, stagger: stagger, poll: max(stagger/2, 5*time.Millisecond)}
	d.idle = max(after/2, d.poll) // not a follower of a known leader: nothing to time
	timer := time.NewTimer(d.poll)
	defer timer.Stop()
	defer func() {
		if d.lowered {
			d.restore()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		timer.Reset(d.check())
	}
}

// silenceDetector is detectLeaderLoss's state between two looks.
type silenceDetector struct {
	a                          *Agent
	after, stagger, poll, idle time.Duration
	// lowered: this node asked Raft for an early election and has not
	// restored its heartbeat timeout yet.
	lowered bool
}

func (d *silenceDetector) restore() {
	if err := d.a.store.RestoreHeartbeat(); err != nil {
		d.a.log.Error("restoring the Raft heartbeat timeout", "err", err)
	}
	d.lowered = false
}

// check is one look; it returns how long to sleep before the next.
func (d *silenceDetector) check() time.Duration {
	a := d.a
	state := a.store.State()
	silent := time.Since(a.store.LastContact())
	if d.lowered {
		// Candidate or leader now (or the leader spoke again): Raft's
		// own timing takes over.
		if state != raft.Follower || silent < d.after {
			d.restore()
		}
		return d.poll
	}
	leader, _ := a.store.Leader()
	if state != raft.Follower || leader == "" {
		return d.idle
	}
	order, voters := a.fireOrder(leader)
	hb := a.store.HeartbeatTimeout()
	wait := d.after + time.Duration(order)*staggerWithin(d.stagger, d.after, hb, voters)
	if wait >= hb {
		return d.idle
	}
	if silent < wait {
		return max(wait-silent, time.Millisecond)
	}
	if err := a.store.ExpediteElection(wait); err != nil {
		a.log.Error("starting an election after the leader went silent", "leader", leader, "silent", silent, "err", err)
		return d.poll
	}
	d.lowered = true
	a.noteSuspicion(leader, silent)
	a.log.Warn("leader silent; starting an election", "leader", leader, "silent", silent.Round(time.Millisecond))
	return d.poll
}

// staggerWithin shrinks the stagger so that the last of voters elections
// still starts before Raft's own heartbeat timeout hb: lowering the
// timeout to a value above it would do nothing (the lab's 280 ms + 35 ms
// against a 300 ms timeout did exactly that, and the best gateway waited
// for Raft's randomised timeout).
func staggerWithin(stagger, after, hb time.Duration, voters int) time.Duration {
	if voters < 2 {
		return stagger
	}
	if room := hb - after - time.Millisecond; time.Duration(voters-1)*stagger > room {
		return max(room/time.Duration(voters-1), 0)
	}
	return stagger
}

// fireOrder is how many staggers after SuspectAfter this node starts its
// election when leader goes silent (0 for the voter ranked last, up to
// n−1 for the best-ranked gateway), and n, the number of voters other
// than leader.
func (a *Agent) fireOrder(leader string) (order, voters int) {
	servers, err := a.store.Servers()
	if err != nil {
		return 0, 0
	}
	ranked := make([]string, 0, len(servers))
	for _, m := range a.rankGatewaysOf(servers, leader) {
		ranked = append(ranked, m.ID)
	}
	var others []string
	for _, s := range servers {
		id := string(s.ID)
		if s.Suffrage == raft.Voter && id != leader && !slices.Contains(ranked, id) {
			others = append(others, id)
		}
	}
	slices.Sort(others)
	ranked = append(ranked, others...)
	i := slices.Index(ranked, a.cfg.NodeID)
	if i < 0 {
		return 0, len(ranked)
	}
	return len(ranked) - 1 - i, len(ranked)
}
