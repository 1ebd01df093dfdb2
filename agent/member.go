package agent

import (
	"context"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/raftstore"
)

// ownRecord is the member entry this node wants the state to hold.
func (a *Agent) ownRecord() raftstore.Member {
	return raftstore.Member{ID: a.cfg.NodeID, Address: a.store.Addr(), Role: a.cfg.Role, Priority: a.cfg.Priority,
		Version: a.cfg.Build.Version}
}

// keepOwnRecord runs on every node until ctx ends: while this node is a
// voter whose member entry differs from ownRecord (restarted on a new
// build, or with a new priority), it asks the leader to update it. A
// leader updates its own (ensureMember), and a node started with `join`
// does so when joining; this covers the rest, such as the bootstrap node
// restarted on a new build as a follower, which would otherwise show its
// old version in `handoff members` until it next led. Learners are left to
// JoinCluster: asking for a vote before they caught up is what its two
// steps avoid.
func (a *Agent) keepOwnRecord(ctx context.Context) {
	const every = 2 * time.Second
	wait := every
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = every
		want, have, ok := a.ownRecord(), raftstore.Member{}, false
		a.store.FSM().View(func(st *raftstore.State) { have, ok = st.Members[a.cfg.NodeID] })
		// A changed address is a re-join's business (it replaces the Raft
		// entry); only metadata is refreshed here.
		if !ok || have == want || have.Address != want.Address || a.store.IsLeader() || !a.isVoter() {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := a.store.UpdateMember(rctx, raftstore.MemberCmd(want))
		cancel()
		if err != nil {
			a.log.Debug("updating own member entry", "version", want.Version, "err", err)
			wait = 4 * every
			continue
		}
		a.log.Info("member entry updated", "version", want.Version, "was", have.Version)
	}
}

func (a *Agent) isVoter() bool {
	servers, err := a.store.Servers()
	if err != nil {
		return false
	}
	for _, s := range servers {
		if string(s.ID) == a.cfg.NodeID {
			return s.Suffrage == raft.Voter
		}
	}
	return false
}
