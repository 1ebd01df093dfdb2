package agent

import (
	"time"

	"github.com/handoffvpn/handoff/raftstore"
)

// The API reports durations in milliseconds, as numbers, in fields whose
// names end in _ms, as the webhooks do (docs/operator.md). raftstore's
// records keep time.Duration (nanoseconds in JSON): they are the log's
// and the snapshots' format, so the API's types add the _ms fields beside
// the nanosecond ones, which stay for the scripts that read them.

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// PhasesMs are a takeover's timings in milliseconds, in the order the
// phases run.
type PhasesMs struct {
	Detect  float64 `json:"detect"`
	Elect   float64 `json:"elect"`
	Claim   float64 `json:"claim"`
	Install float64 `json:"install"`
	Move    float64 `json:"move"`
	Total   float64 `json:"total"`
}

// PhasesOf converts raftstore's timings.
func PhasesOf(t raftstore.Timings) PhasesMs {
	return PhasesMs{Detect: ms(t.Detect), Elect: ms(t.Elect), Claim: ms(t.Claim), Install: ms(t.Install), Move: ms(t.Move), Total: ms(t.Total)}
}

// Assignment is the active assignment as the API reports it.
type Assignment struct {
	raftstore.Active
	TimingsMs PhasesMs `json:"timings_ms"`
}

// HistoryEntry is one takeover as the API reports it.
type HistoryEntry struct {
	raftstore.HistoryEntry
	TimingsMs PhasesMs `json:"timings_ms"`
}
