package agent

import (
	"time"

	"github.com/handoffvpn/handoff/raftstore"
)

// A cluster flaps when the active role keeps moving without anyone asking:
// FlapTakeovers unplanned takeovers within FlapWindow. A healthy fleet
// sees one when a gateway dies; a drill of promotes and drains is
// planned, and a cluster's first election is no churn: neither counts.
const (
	FlapWindow    = 5 * time.Minute
	FlapTakeovers = 3
)

// Flap is what the replicated history says about recent takeovers.
type Flap struct {
	// Flapping is true when Unplanned reached FlapTakeovers.
	Flapping bool `json:"flapping"`
	// Takeovers and Unplanned count the takeovers claimed within the
	// window; Unplanned leaves out those an operator asked for and the
	// cluster's first.
	Takeovers int `json:"takeovers"`
	Unplanned int `json:"unplanned"`
	// WindowMs is the window, in milliseconds like every duration the API
	// reports.
	WindowMs float64 `json:"window_ms"`
	// Since is the first takeover in the window.
	Since time.Time `json:"since,omitzero"`
	// Reasons counts the window's takeovers by reason.
	Reasons map[raftstore.Reason]int `json:"reasons,omitempty"`
}

// planned reports whether a takeover of this reason is no churn: an
// operator asked for it, or no node was active before.
func planned(r raftstore.Reason) bool {
	switch r {
	case raftstore.ReasonPromote, raftstore.ReasonDrain, raftstore.ReasonTransfer, raftstore.ReasonRestore, raftstore.ReasonFirstElection:
		return true
	}
	return false
}

// flapOf reads the history (oldest first) as of now.
func flapOf(history []raftstore.HistoryEntry, now time.Time) Flap {
	f := Flap{WindowMs: ms(FlapWindow)}
	for _, h := range history {
		if now.Sub(h.ClaimedAt) > FlapWindow {
			continue
		}
		if f.Reasons == nil {
			f.Reasons = map[raftstore.Reason]int{}
			f.Since = h.ClaimedAt
		}
		f.Takeovers++
		f.Reasons[h.Reason]++
		if !planned(h.Reason) {
			f.Unplanned++
		}
	}
	f.Flapping = f.Unplanned >= FlapTakeovers
	return f
}
