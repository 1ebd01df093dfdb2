// Package operator assembles one agent's operator surface: the HTTP API
// (operator/api) with the status page (operator/statuspage) and /metrics
// (operator/metrics), the webhook notifier (operator/webhook), and a
// monitor that turns what the agent's status shows over time (a member's
// health flipping, this follower losing touch with the leader) into events
// for the webhook and the metrics.
//
// Build a Surface before the agent, so that its Event method can be the
// agent's event sink (agent.WithEvents) and its metrics can decorate the
// provider; then Serve it with the agent.
package operator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/operator/api"
	"github.com/handoffvpn/handoff/operator/metrics"
	"github.com/handoffvpn/handoff/operator/statuspage"
	"github.com/handoffvpn/handoff/operator/webhook"
)

// Options configure a Surface.
type Options struct {
	Node string
	// Webhook, if set, sends events to a receiver.
	Webhook *webhook.Config
	// LagThreshold is how long a follower may go without hearing from the
	// leader before a replication.lag event (default 5s).
	LagThreshold time.Duration
	// Interval is how often the monitor reads the status (default 1s).
	Interval time.Duration
	Logger   *slog.Logger
}

// Surface is one node's operator surface.
type Surface struct {
	opts    Options
	log     *slog.Logger
	Metrics *metrics.Metrics
	// Webhook is nil without a webhook configuration.
	Webhook *webhook.Notifier

	mu      sync.Mutex // guards the following fields
	api     *api.Server
	cancel  context.CancelFunc
	done    chan struct{}
	closed  bool
	healthy map[string]bool // member → majority-healthy at the last look
	lagging bool
}

// New builds the metrics and the webhook notifier of a node.
func New(o Options) (*Surface, error) {
	if o.Node == "" {
		return nil, errors.New("operator: node ID is required")
	}
	if o.LagThreshold <= 0 {
		o.LagThreshold = 5 * time.Second
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Surface{opts: o, log: o.Logger.With("node", o.Node), Metrics: metrics.New(o.Node), healthy: map[string]bool{}}
	if o.Webhook != nil {
		cfg := *o.Webhook
		if cfg.Logger == nil {
			cfg.Logger = s.log
		}
		n, err := webhook.New(cfg)
		if err != nil {
			return nil, err
		}
		s.Webhook = n
		s.Metrics.RegisterWebhook(n)
	}
	return s, nil
}

// Event takes one agent event: metrics, then the webhook. It never blocks
// (the agent calls it synchronously).
func (s *Surface) Event(e agent.Event) {
	s.Metrics.ObserveEvent(e)
	if s.Webhook == nil {
		return
	}
	we := webhook.Event{Kind: e.Kind, Node: e.Node, Term: e.Term, At: e.At.UTC(), Source: s.opts.Node, Reason: string(e.Reason),
		SAs: e.SAs, Detail: e.Detail}
	if e.Err != nil {
		we.Error = e.Err.Error()
	}
	if e.Kind == "failover.completed" {
		p := agent.PhasesOf(e.Timings)
		we.TimingsMs = &webhook.Timings{Detect: p.Detect, Elect: p.Elect, Claim: p.Claim, Install: p.Install, Move: p.Move, Total: p.Total}
	}
	s.Webhook.Notify(we)
}

// Backend is what the surface needs from the agent: the API's backend.
type Backend = api.Backend

// CommitObserved is the store's hook for commit latencies.
type CommitObserved interface {
	SetApplyObserver(fn func(took time.Duration, err error))
}

// Serve starts the API (with the page and /metrics) and the monitor. store
// may be nil (no commit latency metric).
func (s *Surface) Serve(b Backend, store CommitObserved, cfg api.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("operator: surface closed")
	}
	if s.api != nil {
		return errors.New("operator: already serving")
	}
	if store != nil {
		store.SetApplyObserver(s.Metrics.ObserveCommit)
	}
	if cfg.Logger == nil {
		cfg.Logger = s.log
	}
	cfg.Metrics, cfg.Page = s.Metrics.Handler(), statuspage.Handler()
	srv, err := api.New(cfg, b)
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.api, s.cancel, s.done = srv, cancel, make(chan struct{})
	go s.monitor(ctx, b)
	return nil
}

// URL is the API's base URL, "" before Serve.
func (s *Surface) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.api == nil {
		return ""
	}
	return s.api.URL()
}

// Close stops the monitor, the API and the webhook. Safe twice.
func (s *Surface) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	srv, cancel, done := s.api, s.cancel, s.done
	s.mu.Unlock()
	var errs []error
	if cancel != nil {
		cancel()
		<-done
	}
	if srv != nil {
		errs = append(errs, srv.Close())
	}
	if s.Webhook != nil {
		errs = append(errs, s.Webhook.Close())
	}
	return errors.Join(errs...)
}

func (s *Surface) monitor(ctx context.Context, b Backend) {
	defer close(s.done)
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		s.Observe(b.OperatorStatus())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Observe takes one status snapshot: it updates the gauges and raises the
// events that the change since the last snapshot calls for. Health events
// are raised by the leader only, so one flip alerts once, not once per
// node; lag events by the follower that lags.
func (s *Surface) Observe(st agent.Status) {
	s.Metrics.ObserveStatus(st)
	var events []webhook.Event
	now := time.Now().UTC()
	s.mu.Lock()
	leader := st.RaftState == "Leader"
	for _, m := range st.Members {
		was, seen := s.healthy[m.ID]
		if !seen {
			was = true
		}
		s.healthy[m.ID] = m.Healthy
		if was == m.Healthy || !leader {
			continue
		}
		e := webhook.Event{Kind: "node.recovered", Node: m.ID, Term: st.Term, At: now, Source: st.Node, Detail: observers(m)}
		if !m.Healthy {
			e.Kind = "node.unhealthy"
		}
		events = append(events, e)
	}
	lagging := !leader && st.LeaderContact > s.opts.LagThreshold
	if lagging != s.lagging {
		s.lagging = lagging
		e := webhook.Event{Kind: "replication.recovered", Node: st.Node, Term: st.Term, At: now, Source: st.Node,
			Detail: fmt.Sprintf("leader %s heard from %s ago", st.Leader, st.LeaderContact.Round(time.Millisecond))}
		if lagging {
			e.Kind = "replication.lag"
			e.Detail = fmt.Sprintf("no contact with the leader for %s (threshold %s)", st.LeaderContact.Round(time.Millisecond), s.opts.LagThreshold)
		}
		events = append(events, e)
	}
	s.mu.Unlock()
	for _, e := range events {
		s.log.Warn("operator event", "kind", e.Kind, "subject", e.Node, "detail", e.Detail)
		s.Metrics.ObserveEvent(agent.Event{Kind: e.Kind, Node: e.Node, Term: e.Term, At: e.At, Detail: e.Detail})
		if s.Webhook != nil {
			s.Webhook.Notify(e)
		}
	}
}

func observers(m agent.MemberStatus) string {
	down, total := 0, len(m.Observations)
	var detail string
	for _, o := range m.Observations {
		if !o.Healthy {
			down++
			if detail == "" && o.Detail != "" {
				detail = o.Observer + ": " + o.Detail
			}
		}
	}
	out := fmt.Sprintf("%d of %d observers report it down", down, total)
	if detail != "" {
		out += "; " + detail
	}
	return out
}
