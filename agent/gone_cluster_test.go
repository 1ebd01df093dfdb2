package agent_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/providers"
)

// goneDecl is one providers.GoneAware declaration a node's provider got.
type goneDecl struct {
	previous string
	gone     []string
}

// goneRecorder gives a node's provider the GoneAware capability and
// records the declarations by node and term.
type goneRecorder struct {
	providers.Provider
	node string
	mu   *sync.Mutex
	got  map[string]map[uint64]goneDecl
}

func (g goneRecorder) KnownGone(term uint64, previous string, gone []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.got[g.node] == nil {
		g.got[g.node] = map[uint64]goneDecl{}
	}
	g.got[g.node][term] = goneDecl{previous: previous, gone: slices.Clone(gone)}
}

// The takeover tells the provider which holders are gone: after a planned
// hand-over (promote) the old active, which keeps the VIPs for the grace,
// is not; after it was killed (its lease ran out before anyone could be
// elected), it is. A heartbeat timeout of 1 s keeps a transfer's detect
// (a heartbeat gap) far from SuspectAfter (≈ 667 ms) on a loaded machine.
func TestClusterDeadActiveDeclaredGone(t *testing.T) {
	var mu sync.Mutex
	got := map[string]map[uint64]goneDecl{}
	e := start(t, cluster.Options{Nodes: specs("gw1", "gw2", "gw3"), HeartbeatTimeout: time.Second,
		WrapProvider: func(node string, p providers.Provider) providers.Provider {
			return goneRecorder{Provider: p, node: node, mu: &mu, got: got}
		}})
	// after returns the declarations at terms above term that name
	// previous as the previous holder.
	after := func(term uint64, previous string) map[uint64]goneDecl {
		mu.Lock()
		defer mu.Unlock()
		out := map[uint64]goneDecl{}
		for _, byTerm := range got {
			for tm, d := range byTerm {
				if tm > term && d.previous == previous {
					out[tm] = d
				}
			}
		}
		return out
	}

	first, act := e.waitActive(0)
	target := "gw2"
	if first.Spec.ID == target {
		target = "gw1"
	}
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	if _, err := first.Agent.Promote(ctx, target); err != nil {
		t.Fatalf("promote %s: %v", target, err)
	}
	next, act2 := e.waitActive(act.Term, first.Spec.ID)
	planned := after(act.Term, first.Spec.ID)
	if d, ok := planned[act2.Term]; !ok || slices.Contains(d.gone, first.Spec.ID) {
		t.Fatalf("after promoting %s: declarations naming %s previous %+v; want one at term %d, %s not gone",
			next.Spec.ID, first.Spec.ID, planned, act2.Term, first.Spec.ID)
	}

	if err := e.c.Kill(next.Spec.ID); err != nil {
		t.Fatal(err)
	}
	_, act3 := e.waitActive(act2.Term, next.Spec.ID)
	killed := after(act2.Term, next.Spec.ID)
	if len(killed) == 0 {
		t.Fatalf("after killing %s no takeover up to term %d declared it previous", next.Spec.ID, act3.Term)
	}
	for tm, d := range killed {
		if !slices.Contains(d.gone, next.Spec.ID) {
			t.Errorf("after killing %s: the declaration at term %d is %+v; want %s gone", next.Spec.ID, tm, d, next.Spec.ID)
		}
	}
}
