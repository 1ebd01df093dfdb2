package quorum

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/healthcheck"
)

var now = time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)

const (
	up   = healthcheck.StateHealthy
	down = healthcheck.StateUnhealthy
	unk  = healthcheck.StateUnknown
)

func ob(observer string, v healthcheck.State, ago time.Duration) Observation {
	return Observation{Observer: observer, Target: "gw1", Verdict: v, At: now.Add(-ago)}
}

func TestDecide(t *testing.T) {
	p := Policy{MaxAge: 3 * time.Second}
	for _, tc := range []struct {
		name     string
		eligible []string
		obs      []Observation
		failover bool
		needed   int
		down     []string
		silent   []string
	}{
		{"majority of three", []string{"gw2", "gw3", "w1"},
			[]Observation{ob("gw2", down, 0), ob("gw3", down, time.Second), ob("w1", up, 0)}, true, 2, []string{"gw2", "gw3"}, nil},
		{"one of three", []string{"gw2", "gw3", "w1"},
			[]Observation{ob("gw2", down, 0), ob("gw3", up, 0), ob("w1", up, 0)}, false, 2, []string{"gw2"}, nil},
		{"two of four is not a strict majority", []string{"gw2", "gw3", "gw4", "w1"},
			[]Observation{ob("gw2", down, 0), ob("gw3", down, 0)}, false, 3, []string{"gw2", "gw3"}, []string{"gw4", "w1"}},
		{"three of four", []string{"gw2", "gw3", "gw4", "w1"},
			[]Observation{ob("gw2", down, 0), ob("gw3", down, 0), ob("w1", down, 0)}, true, 3, []string{"gw2", "gw3", "w1"}, []string{"gw4"}},
		{"majority of all eligible, not of those reporting", []string{"gw2", "gw3", "gw4", "w1", "w2"},
			[]Observation{ob("gw2", down, 0), ob("gw3", down, 0)}, false, 3, []string{"gw2", "gw3"}, []string{"gw4", "w1", "w2"}},
		{"a single eligible observer never suffices", []string{"gw2"},
			[]Observation{ob("gw2", down, 0)}, false, 2, []string{"gw2"}, nil},
		{"two of two", []string{"gw2", "w1"},
			[]Observation{ob("gw2", down, 0), ob("w1", down, 0)}, true, 2, []string{"gw2", "w1"}, nil},
		{"stale report ignored", []string{"gw2", "w1"},
			[]Observation{ob("gw2", down, 0), ob("w1", down, 3*time.Second+time.Millisecond)}, false, 2, []string{"gw2"}, []string{"w1"}},
		{"report exactly MaxAge old counts", []string{"gw2", "w1"},
			[]Observation{ob("gw2", down, 0), ob("w1", down, 3*time.Second)}, true, 2, []string{"gw2", "w1"}, nil},
		{"future-dated report ignored", []string{"gw2", "w1"},
			[]Observation{ob("gw2", down, 0), ob("w1", down, -2*time.Second)}, false, 2, []string{"gw2"}, []string{"w1"}},
		{"small skew tolerated", []string{"gw2", "w1"},
			[]Observation{ob("gw2", down, 0), ob("w1", down, -500*time.Millisecond)}, true, 2, []string{"gw2", "w1"}, nil},
		{"latest report per observer wins", []string{"gw2", "w1"},
			[]Observation{ob("gw2", down, 0), ob("w1", up, 0), ob("w1", down, time.Second)}, false, 2, []string{"gw2"}, nil},
		{"latest wins in any order", []string{"gw2", "w1"},
			[]Observation{ob("w1", down, 0), ob("gw2", down, 0), ob("w1", up, time.Second)}, true, 2, []string{"gw2", "w1"}, nil},
		{"target's own report does not count", []string{"gw1", "gw2", "w1"},
			[]Observation{{Observer: "gw1", Target: "gw1", Verdict: down, At: now}, ob("gw2", down, 0)}, false, 2, []string{"gw2"}, []string{"w1"}},
		{"reports about another target ignored", []string{"gw2", "w1"},
			[]Observation{ob("gw2", down, 0), {Observer: "w1", Target: "gw3", Verdict: down, At: now}}, false, 2, []string{"gw2"}, []string{"w1"}},
		{"non-eligible observer ignored", []string{"gw2", "w1"},
			[]Observation{ob("gw2", down, 0), ob("gw9", down, 0)}, false, 2, []string{"gw2"}, []string{"w1"}},
		{"unknown verdicts are not down", []string{"gw2", "gw3", "w1"},
			[]Observation{ob("gw2", down, 0), ob("gw3", unk, 0), ob("w1", unk, 0)}, false, 2, []string{"gw2"}, nil},
		{"duplicate eligible IDs count once", []string{"gw2", "gw2", "gw2", "w1"},
			[]Observation{ob("gw2", down, 0)}, false, 2, []string{"gw2"}, []string{"w1"}},
		{"no eligible observers", nil, nil, false, 2, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := p.Decide(now, "gw1", tc.eligible, tc.obs)
			if d.Failover != tc.failover || d.Needed != tc.needed || !slices.Equal(d.Down, tc.down) || !slices.Equal(d.Silent, tc.silent) {
				t.Fatalf("got %v (needed %d)", d, d.Needed)
			}
			if d.Reason == "" {
				t.Fatal("no reason")
			}
		})
	}
}

func TestMinAgree(t *testing.T) {
	eligible := []string{"a", "b", "c"}
	obs := []Observation{ob("a", down, 0), ob("b", down, 0)}
	if d := (Policy{MinAgree: 3}).Decide(now, "gw1", eligible, obs); d.Failover || d.Needed != 3 {
		t.Fatalf("MinAgree 3: %v", d)
	}
	// MinAgree below the floor cannot make a single observer enough.
	if d := (Policy{MinAgree: 1}).Decide(now, "gw1", []string{"a"}, obs[:1]); d.Failover {
		t.Fatalf("MinAgree 1: %v", d)
	}
}

// A flaky observer toggling its verdict every report, with every other
// observer healthy, never triggers a failover; and whatever the reports,
// a failover always rests on a strict majority of at least two fresh
// "down" reports.
func TestProperties(t *testing.T) {
	p := Policy{MaxAge: 2 * time.Second}
	rng := rand.New(rand.NewPCG(1, 2))
	ids := []string{"gw1", "gw2", "gw3", "gw4", "w1", "w2"}
	verdicts := []healthcheck.State{up, down, unk}
	for round := range 5000 {
		n := 1 + rng.IntN(len(ids)-1)
		eligible := slices.Clone(ids[1 : 1+n])
		var obs []Observation
		flaky := eligible[rng.IntN(len(eligible))]
		for range rng.IntN(20) {
			o := Observation{
				Observer: ids[rng.IntN(len(ids))],
				Target:   []string{"gw1", "gw2"}[rng.IntN(2)],
				Verdict:  verdicts[rng.IntN(3)],
				At:       now.Add(time.Duration(rng.IntN(6000)-4000) * time.Millisecond),
			}
			obs = append(obs, o)
		}
		d := p.Decide(now, "gw1", eligible, obs)
		if d.Failover {
			if len(d.Down) <= len(eligible)/2 || len(d.Down) < 2 {
				t.Fatalf("round %d: failover without a strict majority: %v", round, d)
			}
			for _, id := range d.Down {
				if !slices.Contains(eligible, id) {
					t.Fatalf("round %d: ineligible %s counted", round, id)
				}
			}
		}
		// Flaky scenario: only `flaky` ever says down.
		var flakyObs []Observation
		for i := range 10 {
			v := up
			if i%2 == 0 {
				v = down
			}
			flakyObs = append(flakyObs, Observation{Observer: flaky, Target: "gw1", Verdict: v, At: now.Add(-time.Duration(i) * 100 * time.Millisecond)})
		}
		for _, id := range eligible {
			if id != flaky {
				flakyObs = append(flakyObs, Observation{Observer: id, Target: "gw1", Verdict: up, At: now})
			}
		}
		if d := p.Decide(now, "gw1", eligible, flakyObs); d.Failover {
			t.Fatalf("round %d: single flaky observer %s triggered %v", round, flaky, d)
		}
	}
}

func TestBoard(t *testing.T) {
	b := NewBoard(Policy{MaxAge: 2 * time.Second})
	eligible := []string{"gw2", "w1", "gw3"}
	b.Record(ob("gw2", down, 0))
	b.Record(ob("w1", down, 100*time.Millisecond))
	if d := b.Decide(now, "gw1", eligible); !d.Failover {
		t.Fatalf("two of three down: %v", d)
	}
	// An older report arriving late does not overwrite a newer one.
	b.Record(ob("w1", up, time.Second))
	if d := b.Decide(now, "gw1", eligible); !d.Failover {
		t.Fatalf("late old report overwrote: %v", d)
	}
	b.Record(ob("w1", up, 0))
	if d := b.Decide(now, "gw1", eligible); d.Failover {
		t.Fatalf("w1 recovered: %v", d)
	}
	b.Record(ob("w1", down, 0))
	// Time passes: the reports go stale.
	later := now.Add(2*time.Second + time.Millisecond)
	if d := b.Decide(later, "gw1", eligible); d.Failover || len(d.Silent) != 3 {
		t.Fatalf("stale: %v", d)
	}
	b.Prune(later)
	if len(b.obs) != 0 {
		t.Fatalf("prune kept %d", len(b.obs))
	}
	b.Record(ob("gw2", down, 0))
	b.Record(ob("w1", down, 0))
	b.Forget("w1")
	if d := b.Decide(now, "gw1", eligible); d.Failover {
		t.Fatalf("forgotten observer still counted: %v", d)
	}

	// Concurrent use (run with -race).
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 100 {
				b.Record(ob(fmt.Sprintf("o%d", i), down, time.Duration(j)*time.Millisecond))
				_ = b.Decide(now, "gw1", eligible)
			}
		}()
	}
	wg.Wait()
}

func TestRankAndSuccessor(t *testing.T) {
	p := Policy{MaxAge: 5 * time.Second}
	c := func(id string, h healthcheck.State, prio int) Candidate {
		return Candidate{ID: id, Health: h, HealthAt: now, Priority: prio}
	}
	cands := []Candidate{
		c("gw-c", up, 10),
		c("gw-a", up, 10),
		c("gw-b", up, 20),
		c("gw-d", unk, 100),
		c("gw-e", down, 200),
		{ID: "w1", Witness: true, Health: up, HealthAt: now, Priority: 1000},
		{ID: "gw-f", Health: up, HealthAt: now.Add(-6 * time.Second), Priority: 500}, // stale: unknown
		{ID: "gw-g", Health: up, HealthAt: now, Priority: 10, HealthyChecks: 4},
	}
	var order []string
	for _, r := range p.Rank(now, cands) {
		order = append(order, r.ID)
	}
	want := []string{"gw-b", "gw-g", "gw-a", "gw-c", "gw-f", "gw-d", "gw-e"}
	if !slices.Equal(order, want) {
		t.Fatalf("rank %v, want %v", order, want)
	}
	// The ranking is the same whatever the input order.
	rev := slices.Clone(cands)
	slices.Reverse(rev)
	var order2 []string
	for _, r := range p.Rank(now, rev) {
		order2 = append(order2, r.ID)
	}
	if !slices.Equal(order2, want) {
		t.Fatalf("rank depends on input order: %v", order2)
	}

	if id, ok := p.Successor(now, "gw-b", cands); !ok || id != "gw-g" {
		t.Fatalf("successor of gw-b: %s %t", id, ok)
	}
	if id, ok := p.Successor(now, "gw-e", cands); !ok || id != "gw-b" {
		t.Fatalf("successor of unhealthy gw-e: %s %t", id, ok)
	}
	// Only unhealthy, unknown or stale others: stay.
	none := []Candidate{c("gw1", down, 1), c("gw2", unk, 1), c("gw3", down, 5), {ID: "gw4", Health: up, HealthAt: now.Add(-time.Minute)}, {ID: "w1", Witness: true, Health: up, HealthAt: now}}
	if id, ok := p.Successor(now, "gw1", none); ok {
		t.Fatalf("stepped down to %s", id)
	}
}
