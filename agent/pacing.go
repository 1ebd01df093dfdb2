package agent

import "github.com/handoffvpn/handoff/internal/bulk"

// DefaultReplayBudget is the default cap on the replay records one sync
// commits. With every counter moving, 100,000 SAs synced every 100 ms were
// 1,000,000 records a second through Raft: a storm that cost the leader
// its lease. Capped, each SA is synced at least every ⌈SAs/budget⌉
// intervals, and a takeover's sequence number jump already counts each
// SA's own staleness (SeqStart), so a slower sync is safe, only a larger
// jump.
const DefaultReplayBudget = 8192

// WithBulkLane sets the lane that paces the node's bulk work (sealing,
// decoding, staging, replay scans). Nodes that share a process should
// share a lane: they share its Ps. Default: a lane of its own.
func WithBulkLane(l *bulk.Lane) Option { return func(a *Agent) { a.lane = l } }
