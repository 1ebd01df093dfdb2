package agent_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/raftstore"
)

// views is the test's switchboard of what each observer sees: it stands in
// for the IKE probes and tunnel checks a standby runs against the active.
type views struct {
	mu   sync.Mutex
	down map[[2]string]bool // observer, subject → reports it down
	sick map[string]string  // node → reason its own checks fail
}

func (v *views) set(observer, subject string, down bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.down[[2]string{observer, subject}] = down
}

type viewOf struct {
	v    *views
	node string
}

func (o viewOf) ObserveActive(active string) (bool, bool, string) {
	o.v.mu.Lock()
	defer o.v.mu.Unlock()
	if o.v.down[[2]string{o.node, active}] {
		return false, true, "IKE_SA_INIT on 500 and 4500 timed out"
	}
	return true, true, "IKE answers"
}

func (o viewOf) Healthy() (bool, string) {
	o.v.mu.Lock()
	defer o.v.mu.Unlock()
	if r, bad := o.v.sick[o.node]; bad {
		return false, r
	}
	return true, ""
}

func startObserved(t *testing.T, ids ...string) (*env, *views) {
	v := &views{down: map[[2]string]bool{}, sick: map[string]string{}}
	e := start(t, cluster.Options{Nodes: specs(ids...),
		Agent:    agent.Config{ReportInterval: 200 * time.Millisecond},
		Observer: func(node string) agent.ActiveObserver { return viewOf{v, node} },
		Health:   func(node string) agent.Health { return viewOf{v, node} }})
	return e, v
}

func TestQuorumOneObserverNeverFailsOverAMajorityDoes(t *testing.T) {
	e, v := startObserved(t, "gw1", "gw2", "gw3")
	first, act := e.waitActive(0)
	ids := e.loadSAs(first, 50)
	var observers []string
	for _, n := range e.c.Nodes() {
		if n != first {
			observers = append(observers, n.Spec.ID)
		}
	}
	// One flaky observer: reports land, nothing moves.
	v.set(observers[0], first.Spec.ID, true)
	waitReported(t, e, first, observers[0], false)
	time.Sleep(1200 * time.Millisecond) // six report intervals
	if got := e.c.Active(first.Spec.ID); got.Node != first.Spec.ID || got.Term != act.Term {
		t.Fatalf("one observer moved the active role: now %s at term %d", got.Node, got.Term)
	}
	// A majority of observers: the active hands over.
	v.set(observers[1], first.Spec.ID, true)
	next, act2 := e.waitActive(act.Term, first.Spec.ID)
	e.carries(next, ids, act2.Term)
	if first.Agent.IsActive() || len(first.DP.Outbound()) != 0 {
		t.Error("the old active still carries traffic")
	}
	e.saysWhy(first, next, act2, raftstore.ReasonUnhealthy, "observers: ")
}

func TestOwnChecksFailingHandsOver(t *testing.T) {
	e, v := startObserved(t, "gw1", "gw2", "gw3")
	first, act := e.waitActive(0)
	ids := e.loadSAs(first, 50)
	v.mu.Lock()
	v.sick[first.Spec.ID] = "charon does not answer VICI"
	v.mu.Unlock()
	next, act2 := e.waitActive(act.Term, first.Spec.ID)
	e.carries(next, ids, act2.Term)
	e.saysWhy(first, next, act2, raftstore.ReasonUnhealthy, "own checks failed on "+first.Spec.ID+": charon does not answer VICI")
}

// saysWhy checks that the takeover from old by next at act carries reason
// (in the assignment, the history with detail, and next's events) and
// that old fenced for the same reason: the successor learnt it from the
// hand-over old announced.
func (e *env) saysWhy(old, next *cluster.Node, act raftstore.Active, reason raftstore.Reason, detail string) {
	e.t.Helper()
	var h raftstore.HistoryEntry
	next.Store.FSM().View(func(st *raftstore.State) {
		for _, x := range st.History {
			if x.Term == act.Term && x.To == next.Spec.ID {
				h = x
			}
		}
	})
	if act.Reason != reason || h.Reason != reason || !strings.Contains(h.Detail, detail) {
		e.t.Errorf("takeover at term %d: assignment reason %q, history %q (%s); want %s with %q", act.Term, act.Reason, h.Reason, h.Detail, reason, detail)
	}
	waitFor(e.t, "the events of the takeover and the fence", func() bool {
		e.audit.mu.Lock()
		defer e.audit.mu.Unlock()
		var started, fenced bool
		for _, ev := range e.audit.events {
			started = started || ev.Kind == "failover.started" && ev.Node == next.Spec.ID && ev.Term == act.Term && ev.Reason == reason
			fenced = fenced || ev.Kind == "node.fenced" && ev.Node == old.Spec.ID && ev.Reason == reason
		}
		return started && fenced
	})
}

// waitReported waits until the leader's state holds observer's report
// about subject with the given verdict.
func waitReported(t *testing.T, e *env, subject *cluster.Node, observer string, healthy bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if reported(subject, observer, healthy) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s's report about %s never committed", observer, subject.Spec.ID)
}

func reported(subject *cluster.Node, observer string, healthy bool) bool {
	var ok bool
	subject.Store.FSM().View(func(st *raftstore.State) {
		o, found := st.Health[subject.Spec.ID][observer]
		ok = found && o.Healthy == healthy
	})
	return ok
}
