package raftstore

import (
	"fmt"
	"strings"
	"time"
)

// Reason says why the active role moved (a takeover) or why a node gave
// it up (a fence). It is a closed vocabulary, so that it can label metrics
// and route alerts; the particulars go in a free-text detail beside it.
// Entries written before reasons existed hold free text ("leader
// elected"): shown as they are.
type Reason string

// Reasons. Never rename one: they are in logs, snapshots and alert rules.
const (
	// ReasonFirstElection: no node had been active yet.
	ReasonFirstElection Reason = "first_election"
	// ReasonLeaderSilent: the followers stopped hearing the leader (its
	// node or its link died) and elected another.
	ReasonLeaderSilent Reason = "leader_silent"
	// ReasonLeaseLost: a leader lost its lease without a planned hand-over.
	// For a takeover: the node was re-elected after losing it; for a
	// fence: the node lost leadership unplanned.
	ReasonLeaseLost Reason = "lease_lost"
	// ReasonUnhealthy: the active handed the role on because its own
	// checks failed or a quorum of observers saw it down.
	ReasonUnhealthy Reason = "unhealthy"
	// ReasonPromote, ReasonDrain, ReasonTransfer: an operator's promote,
	// drain, or operator raft transfer-leadership.
	ReasonPromote  Reason = "promote"
	ReasonDrain    Reason = "drain"
	ReasonTransfer Reason = "transfer"
	// ReasonRestore: the active re-asserted its claim after an operator's
	// snapshot restore.
	ReasonRestore Reason = "restore"
	// ReasonTakeoverFailed: the previous leader's takeover failed (claim
	// refused, install or move failed) and it handed leadership on.
	ReasonTakeoverFailed Reason = "takeover_failed"
	// ReasonUnknown: an election nothing explains (a transfer by a node
	// that records no hand-over, during a rolling upgrade).
	ReasonUnknown Reason = "unknown"
)

// Reasons lists every reason, for metrics that create their series ahead.
func Reasons() []Reason {
	return []Reason{ReasonFirstElection, ReasonLeaderSilent, ReasonLeaseLost, ReasonUnhealthy, ReasonPromote,
		ReasonDrain, ReasonTransfer, ReasonRestore, ReasonTakeoverFailed, ReasonUnknown}
}

// Text is the reason in words ("leader silent").
func (r Reason) Text() string { return strings.ReplaceAll(string(r), "_", " ") }

// HandoverCmd records why a leader is about to hand leadership on, before
// it transfers it: the successor, which cannot otherwise know that its
// election was planned, takes its takeover's reason from it. An entry with
// no reason withdraws the previous one (the transfer did not happen). The
// term is the log entry's.
type HandoverCmd struct {
	From string `json:"from"`
	// To is the node leadership goes to; "" for any voter.
	To     string    `json:"to,omitempty"`
	Reason Reason    `json:"reason,omitempty"`
	Detail string    `json:"detail,omitempty"`
	At     time.Time `json:"at"`
}

// Handover is the hand-over last announced and not yet followed by a
// claim.
type Handover struct {
	Term   uint64    `json:"term"`
	From   string    `json:"from"`
	To     string    `json:"to,omitempty"`
	Reason Reason    `json:"reason"`
	Detail string    `json:"detail,omitempty"`
	At     time.Time `json:"at"`
}

// maxHandoverTerms is how many terms after its announcement a hand-over
// still explains an election: a transfer's target wins the next term,
// or the one after when its first election split.
const maxHandoverTerms = 2

// Explains reports whether h is the reason node won the election of term:
// h names node (or any node), no claim came since (active is the claim in
// force), and term follows h's closely.
func (h Handover) Explains(node string, term uint64, active Active) bool {
	return h.Reason != "" && (h.To == "" || h.To == node) && h.Term >= active.Term &&
		term > h.Term && term-h.Term <= maxHandoverTerms
}

func (s *State) applyHandover(term uint64, p *HandoverCmd) error {
	if _, ok := s.Members[p.From]; !ok {
		return fmt.Errorf("hand-over announced by %q: %w", p.From, ErrNotMember)
	}
	if p.Reason == "" {
		s.Handover = Handover{}
		return nil
	}
	s.Handover = Handover{Term: term, From: p.From, To: p.To, Reason: p.Reason, Detail: p.Detail, At: p.At}
	return nil
}
