package agent

import (
	"context"
	"time"

	"github.com/handoffvpn/handoff/healthcheck"
	"github.com/handoffvpn/handoff/healthcheck/quorum"
	"github.com/handoffvpn/handoff/raftstore"
)

// ActiveObserver reports what this node sees of the active gateway the way
// a VPN client would (IKE probes to its address, reachability through the
// tunnel). known is false until the checks have an opinion.
type ActiveObserver interface {
	ObserveActive(active string) (healthy, known bool, detail string)
}

// WithActiveObserver makes the node report its view of the active gateway
// into the cluster.
func WithActiveObserver(o ActiveObserver) Option { return func(a *Agent) { a.observer = o } }

// reportHealth runs on every node: while another node is active, it sends
// this node's verdict about it to the leader, at once when it changes and
// every ReportInterval otherwise, so the leader's view stays fresh.
func (a *Agent) reportHealth(ctx context.Context) {
	if a.observer == nil {
		return
	}
	t := time.NewTicker(a.cfg.ReportInterval / 4)
	defer t.Stop()
	type sent struct {
		subject string
		healthy bool
		at      time.Time
	}
	var last sent
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var act raftstore.Active
		a.store.FSM().View(func(st *raftstore.State) { act = st.Active })
		if act.Node == "" || act.Node == a.cfg.NodeID {
			continue
		}
		healthy, known, detail := a.observer.ObserveActive(act.Node)
		if !known {
			continue
		}
		now := time.Now()
		if last.subject == act.Node && last.healthy == healthy && now.Sub(last.at) < a.cfg.ReportInterval {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, a.cfg.ReportInterval)
		err := a.store.CallLeader(rctx, &raftstore.RPCRequest{Op: "health", Health: &raftstore.HealthCmd{
			Observer: a.cfg.NodeID, Subject: act.Node, Healthy: healthy, Detail: detail, At: now}})
		cancel()
		if err != nil {
			a.log.Debug("reporting health of the active", "active", act.Node, "err", err)
			continue
		}
		if last.subject != act.Node || last.healthy != healthy {
			a.log.Info("reported the active's health", "active", act.Node, "healthy", healthy, "detail", detail)
		}
		last = sent{subject: act.Node, healthy: healthy, at: now}
	}
}

// guardActive runs on the active node: it hands leadership (and so the
// active role) to the best other gateway when its own checks fail, or when
// a quorum of observers reports it unreachable. A single flaky observer
// never moves it: see quorum.Policy.Decide.
func (a *Agent) guardActive(ctx context.Context) {
	t := time.NewTicker(a.cfg.ReportInterval / 4)
	defer t.Stop()
	policy := quorum.Policy{MaxAge: 3 * a.cfg.ReportInterval}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if a.health != nil {
			if ok, detail := a.health.Healthy(); !ok {
				a.emit(Event{Kind: "node.unhealthy", Reason: raftstore.ReasonUnhealthy, Detail: "own checks: " + detail})
				a.handOver(ctx, raftstore.ReasonUnhealthy, "own checks failed on "+a.cfg.NodeID+": "+detail)
				return
			}
		}
		d := a.quorumDecision(policy)
		if d.Failover {
			a.emit(Event{Kind: "node.unhealthy", Reason: raftstore.ReasonUnhealthy, Detail: d.String()})
			a.handOver(ctx, raftstore.ReasonUnhealthy, "observers: "+d.Reason)
			return
		}
	}
}

// quorumDecision evaluates the committed observations about this node.
func (a *Agent) quorumDecision(p quorum.Policy) quorum.Decision {
	var eligible []string
	var obs []quorum.Observation
	servers, err := a.store.Servers()
	if err != nil {
		return quorum.Decision{Reason: err.Error()}
	}
	a.store.FSM().View(func(st *raftstore.State) {
		for _, o := range st.Health[a.cfg.NodeID] {
			v := healthcheck.StateHealthy
			if !o.Healthy {
				v = healthcheck.StateUnhealthy
			}
			obs = append(obs, quorum.Observation{Observer: o.Observer, Target: o.Subject, Verdict: v, At: o.At})
		}
	})
	for _, s := range servers {
		if id := string(s.ID); id != a.cfg.NodeID {
			eligible = append(eligible, id)
		}
	}
	return p.Decide(time.Now(), a.cfg.NodeID, eligible, obs)
}
