// Package quorum turns health verdicts into failover decisions, as pure
// logic with no I/O and no clock of its own (callers pass now):
//
//   - Decide: the standbys and witnesses (observers) report what their
//     checks say about the active gateway; fail over only when a strict
//     majority of the eligible observers, and at least two of them, report
//     it unhealthy recently. Stale, future-dated and foreign reports do not
//     count, so a single flaky or partitioned observer never triggers a
//     failover.
//   - Rank and Successor: when the active's own checks fail it steps down
//     to the healthiest gateway (health, then priority, then ID), and a
//     witness or unhealthy node that wins a Raft election hands leadership
//     to the same choice.
package quorum

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/healthcheck"
)

// Defaults for a zero Policy.
const (
	DefaultMaxAge  = 5 * time.Second
	DefaultMaxSkew = time.Second
	// MinAgreeFloor is the fewest agreeing observers that can ever cause a
	// failover: one observer alone never does, whatever the cluster size.
	MinAgreeFloor = 2
)

// Observation is one observer's verdict about a target at a time.
type Observation struct {
	Observer string
	Target   string
	Verdict  healthcheck.State
	At       time.Time
}

// Policy holds the decision parameters; the zero value uses the defaults.
type Policy struct {
	// MaxAge: a report older than this is stale and ignored. Set it to a
	// few report intervals.
	MaxAge time.Duration
	// MaxSkew: a report dated further than this in the future is ignored
	// (a clock gone wrong must not make a verdict immortal).
	MaxSkew time.Duration
	// MinAgree raises the number of agreeing observers needed above a
	// strict majority; values below MinAgreeFloor are raised to it.
	MinAgree int
}

func (p Policy) maxAge() time.Duration {
	if p.MaxAge <= 0 {
		return DefaultMaxAge
	}
	return p.MaxAge
}

func (p Policy) maxSkew() time.Duration {
	if p.MaxSkew <= 0 {
		return DefaultMaxSkew
	}
	return p.MaxSkew
}

// fresh reports whether a report at `at` counts at now.
func (p Policy) fresh(now, at time.Time) bool {
	return !at.Before(now.Add(-p.maxAge())) && !at.After(now.Add(p.maxSkew()))
}

// Decision explains a failover decision. The ID lists are sorted.
type Decision struct {
	Target   string
	Failover bool
	// Needed is how many fresh "unhealthy" reports a failover needs.
	Needed int
	// Down, Up and Unknown are the eligible observers by fresh verdict.
	Down, Up, Unknown []string
	// Silent are eligible observers without a fresh report (stale,
	// future-dated or none).
	Silent []string
	Reason string
}

func (d Decision) String() string {
	return fmt.Sprintf("target %s failover=%t: %s (down %v, up %v, unknown %v, silent %v)", d.Target, d.Failover, d.Reason, d.Down, d.Up, d.Unknown, d.Silent)
}

// Decide decides whether to fail over away from target given the
// observations (any order, any number per observer: the latest counts) and
// the eligible observers (the voters other than target). Reports from
// non-eligible observers, about other targets, stale or future-dated ones
// are ignored.
func (p Policy) Decide(now time.Time, target string, eligible []string, obs []Observation) Decision {
	voters := map[string]bool{}
	for _, id := range eligible {
		if id != "" && id != target {
			voters[id] = true
		}
	}
	latest := map[string]Observation{}
	for _, o := range obs {
		if o.Target != target || !voters[o.Observer] || !p.fresh(now, o.At) {
			continue
		}
		if cur, ok := latest[o.Observer]; !ok || !o.At.Before(cur.At) {
			latest[o.Observer] = o
		}
	}
	d := Decision{Target: target}
	for id := range voters {
		o, ok := latest[id]
		switch {
		case !ok:
			d.Silent = append(d.Silent, id)
		case o.Verdict == healthcheck.StateUnhealthy:
			d.Down = append(d.Down, id)
		case o.Verdict == healthcheck.StateHealthy:
			d.Up = append(d.Up, id)
		default:
			d.Unknown = append(d.Unknown, id)
		}
	}
	for _, l := range [][]string{d.Down, d.Up, d.Unknown, d.Silent} {
		slices.Sort(l)
	}
	d.Needed = max(len(voters)/2+1, p.MinAgree, MinAgreeFloor)
	switch {
	case d.Needed > len(voters):
		d.Reason = fmt.Sprintf("only %d eligible observers, a failover needs %d agreeing", len(voters), d.Needed)
	case len(d.Down) >= d.Needed:
		d.Failover = true
		d.Reason = fmt.Sprintf("%d of %d eligible observers report %s unhealthy (needed %d)", len(d.Down), len(voters), target, d.Needed)
	default:
		d.Reason = fmt.Sprintf("%d of %d eligible observers report %s unhealthy, %d needed", len(d.Down), len(voters), target, d.Needed)
	}
	return d
}

// Board collects observations, keeping the latest per observer and
// target, and decides on them. It is safe for concurrent use.
type Board struct {
	policy Policy

	mu  sync.Mutex // guards the following fields
	obs map[[2]string]Observation
}

// NewBoard returns an empty board deciding with p.
func NewBoard(p Policy) *Board {
	return &Board{policy: p, obs: map[[2]string]Observation{}}
}

// Record stores o unless the board holds a later report from the same
// observer about the same target (reports may arrive out of order).
func (b *Board) Record(o Observation) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := [2]string{o.Observer, o.Target}
	if cur, ok := b.obs[k]; ok && o.At.Before(cur.At) {
		return
	}
	b.obs[k] = o
}

// Forget drops every report from or about node (it left the cluster).
func (b *Board) Forget(node string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k := range b.obs {
		if k[0] == node || k[1] == node {
			delete(b.obs, k)
		}
	}
}

// Prune drops reports that are stale at now, bounding the board's size.
func (b *Board) Prune(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, o := range b.obs {
		if o.At.Before(now.Add(-b.policy.maxAge())) {
			delete(b.obs, k)
		}
	}
}

// Decide is Policy.Decide over the board's reports.
func (b *Board) Decide(now time.Time, target string, eligible []string) Decision {
	b.mu.Lock()
	obs := make([]Observation, 0, len(b.obs))
	for _, o := range b.obs {
		obs = append(obs, o)
	}
	b.mu.Unlock()
	return b.policy.Decide(now, target, eligible, obs)
}

// Candidate is a node that could hold the active role.
type Candidate struct {
	ID string
	// Witness nodes vote but never become active.
	Witness bool
	// Health is the node's own overall verdict, reported at HealthAt; a
	// stale report counts as unknown.
	Health   healthcheck.State
	HealthAt time.Time
	// Priority: higher is preferred among equally healthy gateways.
	Priority int
	// HealthyChecks breaks ties between equally healthy nodes of equal
	// priority (healthcheck.Status.Healthy).
	HealthyChecks int
}

func healthRank(s healthcheck.State) int {
	switch s {
	case healthcheck.StateHealthy:
		return 0
	case healthcheck.StateUnknown:
		return 1
	}
	return 2
}

// effective is c's health at now: stale or future-dated reports are
// unknown.
func (p Policy) effective(now time.Time, c Candidate) healthcheck.State {
	if !p.fresh(now, c.HealthAt) {
		return healthcheck.StateUnknown
	}
	return c.Health
}

// Rank returns the gateways among cands (no witnesses, no empty IDs), best
// first: healthy before unknown before unhealthy, then higher priority,
// then more healthy checks, then lower ID (so every node computes the same
// order). Health is taken as unknown when its report is stale.
func (p Policy) Rank(now time.Time, cands []Candidate) []Candidate {
	var out []Candidate
	for _, c := range cands {
		if !c.Witness && c.ID != "" {
			c.Health = p.effective(now, c)
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b Candidate) int {
		return cmp.Or(
			cmp.Compare(healthRank(a.Health), healthRank(b.Health)),
			cmp.Compare(b.Priority, a.Priority),
			cmp.Compare(b.HealthyChecks, a.HealthyChecks),
			cmp.Compare(a.ID, b.ID),
		)
	})
	return out
}

// Successor returns the gateway that self should hand the active role (or
// Raft leadership) to: the best-ranked gateway other than self whose fresh
// health is healthy. ok is false when there is none; then self should not
// step down, since handing over to an unhealthy or unknown node can only
// make things worse.
func (p Policy) Successor(now time.Time, self string, cands []Candidate) (id string, ok bool) {
	for _, c := range p.Rank(now, cands) {
		if c.ID != self && c.Health == healthcheck.StateHealthy {
			return c.ID, true
		}
	}
	return "", false
}
