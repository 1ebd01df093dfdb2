// Package metrics is one agent's Prometheus metrics: a registry of its own
// (never the process-wide default, so several in-process nodes and tests do
// not collide), the collectors the operator surface keeps up to date from
// status snapshots and agent events, and a decorator that times every
// provider call. Every name starts with handoff_.
package metrics

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/raftstore"
)

// Raft states exported as handoff_raft_state{state}.
var raftStates = []string{"Follower", "Candidate", "Leader", "Shutdown"}

// Metrics is one node's collectors and their registry.
type Metrics struct {
	reg *prometheus.Registry

	build *prometheus.GaugeVec
	// buildMu guards built, the labels build carries: replaced only when
	// the agent's build changes, so that no scrape finds the series gone.
	buildMu       sync.Mutex
	built         [3]string
	raftState     *prometheus.GaugeVec
	raftTerm      prometheus.Gauge
	raftIndex     *prometheus.GaugeVec
	commitLatency prometheus.Histogram
	commitErrors  prometheus.Counter
	carrying      prometheus.Gauge
	sas           prometheus.Gauge
	replayStates  prometheus.Gauge
	lag           prometheus.Gauge
	members       *prometheus.GaugeVec
	health        *prometheus.GaugeVec
	observations  *prometheus.GaugeVec
	providerCalls *prometheus.HistogramVec
	providerErrs  *prometheus.CounterVec
	phases        *prometheus.HistogramVec
	failovers     *prometheus.CounterVec
	elections     *prometheus.CounterVec
	fences        *prometheus.CounterVec
	events        *prometheus.CounterVec
}

// New builds the collectors of node and registers them, with the Go
// runtime and process collectors, on a fresh registry.
func New(node string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "handoff_node_info", Help: "Always 1; the node label names this agent.",
		ConstLabels: prometheus.Labels{"node": node}})
	info.Set(1)
	f(info)
	m.build = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "handoff_build_info",
		Help: "Always 1; the labels name the build this agent runs (as handoff version and /v1/status do)."},
		[]string{"version", "revision", "goversion"})
	m.raftState = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "handoff_raft_state",
		Help: "1 for the Raft state this node is in, 0 for the others."}, []string{"state"})
	m.raftTerm = prometheus.NewGauge(prometheus.GaugeOpts{Name: "handoff_raft_term", Help: "Current Raft term."})
	m.raftIndex = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "handoff_raft_index",
		Help: "Raft log positions: last (in the log), commit, applied (to the state machine)."}, []string{"kind"})
	m.commitLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "handoff_raft_commit_seconds",
		Help:    "Time from proposing a log entry on this node to its being committed and applied here.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}})
	m.commitErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "handoff_raft_commit_errors_total",
		Help: "Log entries proposed on this node that did not commit (not leader, timeout)."})
	m.carrying = prometheus.NewGauge(prometheus.GaugeOpts{Name: "handoff_active",
		Help: "1 while this node carries the tunnels (holds the active role)."})
	m.sas = prometheus.NewGauge(prometheus.GaugeOpts{Name: "handoff_sas", Help: "Replicated CHILD_SAs in this node's copy of the state."})
	m.replayStates = prometheus.NewGauge(prometheus.GaugeOpts{Name: "handoff_replay_states",
		Help: "CHILD_SAs with synced replay counters in this node's copy of the state."})
	m.lag = prometheus.NewGauge(prometheus.GaugeOpts{Name: "handoff_replication_lag_seconds",
		Help: "Time since this follower last heard from the leader (0 on the leader)."})
	m.members = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "handoff_members", Help: "Members by role."}, []string{"role"})
	m.health = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "handoff_member_healthy",
		Help: "1 unless a majority of a member's observers report it unhealthy."}, []string{"member"})
	m.observations = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "handoff_health_observation",
		Help: "Last health result one observer reported about one member (1 healthy, 0 not)."}, []string{"member", "observer"})
	m.providerCalls = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "handoff_provider_call_seconds",
		Help:    "Latency of provider calls (Owner, Claim, Release, CheckPermissions).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"op"})
	m.providerErrs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "handoff_provider_errors_total",
		Help: "Failed provider calls by operation and kind of error."}, []string{"op", "kind"})
	m.phases = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "handoff_failover_phase_seconds",
		Help:    "Duration of each phase of the takeovers this node completed.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"phase"})
	m.failovers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "handoff_failovers_total",
		Help: "Takeovers this node started, completed or failed."}, []string{"result"})
	m.elections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "handoff_elections_total",
		Help: "Takeovers this node started after winning an election, by why the active role moved."}, []string{"reason"})
	m.fences = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "handoff_fences_total",
		Help: "Times this node fenced itself while it carried the tunnels, by why it gave the role up."}, []string{"reason"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "handoff_events_total",
		Help: "Operator events this node emitted, by kind."}, []string{"kind"})
	for _, c := range []prometheus.Collector{m.build, m.raftState, m.raftTerm, m.raftIndex, m.commitLatency, m.commitErrors, m.carrying,
		m.sas, m.replayStates, m.lag, m.members, m.health, m.observations, m.providerCalls, m.providerErrs, m.phases,
		m.failovers, m.elections, m.fences, m.events, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	for _, r := range []string{"started", "completed", "failed"} {
		m.failovers.WithLabelValues(r)
	}
	// Every reason's series exists from the start, so that rate() and
	// increase() see the first election of a kind.
	for _, r := range raftstore.Reasons() {
		m.elections.WithLabelValues(string(r))
		m.fences.WithLabelValues(string(r))
	}
	return m
}

// Registry is the node's registry (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// ObserveStatus updates the gauges from a status snapshot.
func (m *Metrics) ObserveStatus(st agent.Status) {
	m.observeBuild(st)
	for _, s := range raftStates {
		v := 0.0
		if s == st.RaftState {
			v = 1
		}
		m.raftState.WithLabelValues(s).Set(v)
	}
	m.raftTerm.Set(float64(st.Term))
	m.raftIndex.WithLabelValues("last").Set(float64(st.LastIndex))
	m.raftIndex.WithLabelValues("commit").Set(float64(st.CommitIndex))
	m.raftIndex.WithLabelValues("applied").Set(float64(st.AppliedIndex))
	m.carrying.Set(b2f(st.Carrying))
	m.sas.Set(float64(st.SAs))
	m.replayStates.Set(float64(st.ReplayStates))
	m.lag.Set(st.LeaderContact.Seconds())
	roles := map[string]float64{"gateway": 0, "witness": 0}
	m.health.Reset()
	m.observations.Reset()
	for _, mem := range st.Members {
		if mem.Role != "" {
			roles[string(mem.Role)]++
		}
		m.health.WithLabelValues(mem.ID).Set(b2f(mem.Healthy))
		for _, o := range mem.Observations {
			m.observations.WithLabelValues(mem.ID, o.Observer).Set(b2f(o.Healthy))
		}
	}
	for r, n := range roles {
		m.members.WithLabelValues(r).Set(n)
	}
}

func (m *Metrics) observeBuild(st agent.Status) {
	labels := [3]string{st.Build.Version, st.Build.Revision, st.Build.GoVersion}
	m.buildMu.Lock()
	defer m.buildMu.Unlock()
	if labels[0] == "" || labels == m.built {
		return
	}
	m.build.Reset()
	m.build.WithLabelValues(labels[:]...).Set(1)
	m.built = labels
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ObserveEvent counts an agent event; a completed takeover also records
// its phase timings.
func (m *Metrics) ObserveEvent(e agent.Event) {
	m.events.WithLabelValues(e.Kind).Inc()
	switch e.Kind {
	case "failover.started":
		m.failovers.WithLabelValues("started").Inc()
		m.elections.WithLabelValues(reasonLabel(e.Reason)).Inc()
	case "node.fenced":
		m.fences.WithLabelValues(reasonLabel(e.Reason)).Inc()
	case "failover.failed":
		m.failovers.WithLabelValues("failed").Inc()
	case "failover.completed":
		m.failovers.WithLabelValues("completed").Inc()
		t := e.Timings
		for phase, d := range map[string]time.Duration{"detect": t.Detect, "elect": t.Elect, "claim": t.Claim,
			"install": t.Install, "move": t.Move, "total": t.Total} {
			m.phases.WithLabelValues(phase).Observe(d.Seconds())
		}
	}
}

// reasonLabel keeps the reason label to the known vocabulary: anything
// else (an older node's free text) counts as unknown.
func reasonLabel(r raftstore.Reason) string {
	if slices.Contains(raftstore.Reasons(), r) {
		return string(r)
	}
	return string(raftstore.ReasonUnknown)
}

// ObserveCommit records one Apply's commit latency (see
// raftstore.Store.SetApplyObserver).
func (m *Metrics) ObserveCommit(took time.Duration, err error) {
	if err != nil {
		m.commitErrors.Inc()
		return
	}
	m.commitLatency.Observe(took.Seconds())
}

// WebhookStats is what the webhook notifier reports.
type WebhookStats interface {
	Counts() (delivered, retried, deadLetters, dropped uint64)
}

// RegisterWebhook exports a notifier's counters.
func (m *Metrics) RegisterWebhook(w WebhookStats) {
	counter := func(name, help string, pick func(d, r, dl, dr uint64) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
			return float64(pick(w.Counts()))
		})
	}
	m.reg.MustRegister(
		counter("handoff_webhook_delivered_total", "Webhook deliveries the receiver accepted (2xx).",
			func(d, _, _, _ uint64) uint64 { return d }),
		counter("handoff_webhook_retries_total", "Webhook delivery attempts retried after a failure.",
			func(_, r, _, _ uint64) uint64 { return r }),
		counter("handoff_webhook_dead_letters_total", "Webhook events given up on after the last attempt or a permanent refusal.",
			func(_, _, dl, _ uint64) uint64 { return dl }),
		counter("handoff_webhook_dropped_total", "Webhook events dropped because the delivery queue was full.",
			func(_, _, _, dr uint64) uint64 { return dr }),
	)
	if h, ok := w.(interface{ Held() uint64 }); ok {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "handoff_webhook_held_total",
			Help: "Webhook events held back while the cluster flapped, summarised in cluster.flapping events instead."},
			func() float64 { return float64(h.Held()) }))
	}
}

// errorKind names a provider error for the errors counter.
func errorKind(err error) string {
	var ce *providers.ClaimError
	switch {
	case errors.Is(err, providers.ErrStaleTerm):
		return "stale_term"
	case errors.Is(err, providers.ErrPermission):
		return "permission"
	case errors.Is(err, providers.ErrThrottled):
		return "throttled"
	case errors.Is(err, providers.ErrNotFound):
		return "not_found"
	case errors.Is(err, providers.ErrConflict):
		return "conflict"
	case errors.Is(err, providers.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &ce):
		return "partial"
	}
	return "other"
}
