package agent

import (
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/raftstore"
)

// declareGone tells the provider, when it can use it
// (providers.GoneAware), which holders are known gone for this node's
// claims at term, so that it does not wait on a dead one: in the kernel
// lab the linux provider's owner query to the killed active, unanswered
// until its probe timeout, was a third of every outage. prev is the active
// assignment the log held before this takeover.
func (a *Agent) declareGone(term uint64, prev raftstore.Active) {
	g := goneAware(a.prov)
	if g == nil {
		return
	}
	t := a.electionTimings()
	lost := electedAfterLease(t.Detect, a.cfg.SuspectAfter, a.store.HeartbeatTimeout())
	servers, err := a.store.Servers()
	if err != nil {
		// Without the configuration nobody is known to have left;
		// the lease rule still stands.
		a.log.Warn("reading the Raft configuration for the holders known gone", "err", err)
		servers = nil
	}
	known := []string{prev.Node}
	a.store.FSM().View(func(st *raftstore.State) {
		for id := range st.Members {
			known = append(known, id)
		}
		for _, h := range st.History {
			known = append(known, h.From, h.To)
		}
	})
	gone := goneHolders(a.cfg.NodeID, prev.Node, lost, servers, known)
	g.KnownGone(term, prev.Node, gone)
	a.log.Info("holders known gone", "term", term, "previous", prev.Node,
		"previous_lost_lease", lost, "detect", t.Detect, "gone", gone)
}

// goneAware finds the providers.GoneAware under decorators that hide it
// (operator/metrics' instrumented provider keeps only Releaser and
// PermissionChecker, and unwraps with Unwrap). Telling the provider is no
// provider call worth timing, so going around the decorator loses nothing.
func goneAware(p providers.Provider) providers.GoneAware {
	for p != nil {
		if g, ok := p.(providers.GoneAware); ok {
			return g
		}
		u, ok := p.(interface{ Unwrap() providers.Provider })
		if !ok {
			return nil
		}
		p = u.Unwrap()
	}
	return nil
}

// electedAfterLease reports whether this node became a candidate only
// after hearing nothing from the old leader for detect ≥ the shorter of
// SuspectAfter (the detector; 0 = off) and Raft's heartbeat timeout: the
// silence after which a follower clears its leader and can vote for
// another. Validation keeps both at least twice the leader lease, so a
// majority that went that long without the old leader means the old
// leader could not renew its lease: it stepped down and fenced (or died)
// before this node could win. A leadership transfer (promote, drain, a
// hand-over for health) instead makes its target a candidate a heartbeat
// after the leader last spoke to it, and the old active may still carry
// the VIPs for the hand-over grace: not gone. An unknown detect (0: no
// candidacy seen, or no contact with a leader before it) is not evidence.
func electedAfterLease(detect, suspectAfter, heartbeat time.Duration) bool {
	bound := heartbeat
	if suspectAfter > 0 && (bound <= 0 || suspectAfter < bound) {
		bound = suspectAfter
	}
	return bound > 0 && detect >= bound
}

// goneHolders returns, sorted, the nodes other than self known to hold
// none of the floating resources, and to answer for none, during this
// node's claims:
//   - prev, the previous active, when prevLostLease (see
//     electedAfterLease);
//   - every node in known that is not in the Raft configuration config
//     (removed, or left): it can no longer lead, so it claims nothing, and
//     it fenced when it last lost leadership. An empty config (unread)
//     names nobody this way.
//
// Live followers are not listed, though they hold nothing either: "gone"
// is a promise about a node, and these rules are the ones the agent can
// keep.
func goneHolders(self, prev string, prevLostLease bool, config []raft.Server, known []string) []string {
	var gone []string
	add := func(id string) {
		if id != "" && id != self && !slices.Contains(gone, id) {
			gone = append(gone, id)
		}
	}
	if prevLostLease {
		add(prev)
	}
	if len(config) > 0 {
		for _, id := range slices.Concat(known, []string{prev}) {
			if !slices.ContainsFunc(config, func(s raft.Server) bool { return string(s.ID) == id }) {
				add(id)
			}
		}
	}
	slices.Sort(gone)
	return gone
}
