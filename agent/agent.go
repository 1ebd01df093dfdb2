// Package agent is Handoff's orchestration on one node: it watches Raft
// leadership, and as leader takes the active role (claim in the log,
// install the replicated SAs, move the floating resources, commit active); as
// active it feeds the SA set and the replay counters into the log; and when
// it loses leadership it fences itself before anyone else can claim.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/agent/ikecarry"
	"github.com/handoffvpn/handoff/internal/buildinfo"
	"github.com/handoffvpn/handoff/internal/bulk"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/raftstore"
)

// Config holds the agent's settings.
type Config struct {
	NodeID    string
	Role      raftstore.Role
	Priority  int
	Resources []providers.Resource

	// BatchWindow is how long SA changes are gathered into one log entry
	// before its commit starts; zero (the default) starts at once, and
	// changes still gather while the previous entry commits.
	BatchWindow time.Duration
	// MaxBatch caps the SAs of one entry (default DefaultMaxBatch).
	MaxBatch int
	// ReplayInterval is how often replay counters are synced.
	ReplayInterval time.Duration
	// ReplayBudget caps the replay records one sync commits (default
	// DefaultReplayBudget); see feeder.syncReplay.
	ReplayBudget int
	// ReplayCheckpoint is how often the active confirms that the log's
	// counters are current, standing ones included (default 10s; see
	// raftstore.ReplayCurrentCmd).
	ReplayCheckpoint time.Duration
	// StageInterval is the least time between two staging rounds on a
	// standby (default 250ms); see stageStandby.
	StageInterval time.Duration
	// StageInbound pre-installs the inbound states of the replicated SAs
	// on a standby whose dataplane can (Stager).
	StageInbound bool
	// MinSeqJump is the smallest outbound sequence number jump at takeover.
	MinSeqJump uint64
	// MaxPacketRate is the most packets per second one SA can carry; with
	// the staleness of the synced counters it bounds how far the old active
	// may have got past them. See SeqStart.
	MaxPacketRate float64

	// ReportInterval is how often observers refresh their verdict about
	// the active; reports older than three intervals are ignored.
	ReportInterval time.Duration

	BarrierTimeout time.Duration
	ClaimTimeout   time.Duration
	InstallTimeout time.Duration
	FenceTimeout   time.Duration
	// SuspectAfter, if positive, is how long a follower waits after its
	// last contact with the leader before it starts an election, instead
	// of Raft's randomised 1–2 × heartbeat timeout (see detectLeaderLoss).
	// It must be at least twice the leader lease.
	SuspectAfter time.Duration
	// SuspectStagger orders the followers' elections: the best-ranked
	// gateway starts last, so that it wins (default SuspectAfter/8).
	SuspectStagger time.Duration
	// HandoverGrace bounds how long an active node that hands the role
	// over on purpose (promote, drain) keeps carrying the tunnels while
	// its successor takes over. The sequence number jump covers it, so it
	// must be the same on every node.
	HandoverGrace time.Duration

	// Build is this node's build, shown in its status and recorded in its
	// member entry (default: buildinfo.Read()).
	Build buildinfo.Info
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.ReplayInterval, 100*time.Millisecond)
	def(&c.ReplayCheckpoint, 10*time.Second)
	def(&c.StageInterval, 250*time.Millisecond)
	if c.ReplayBudget <= 0 {
		c.ReplayBudget = DefaultReplayBudget
	}
	def(&c.ReportInterval, time.Second)
	def(&c.BarrierTimeout, 5*time.Second)
	def(&c.ClaimTimeout, 20*time.Second)
	def(&c.InstallTimeout, 30*time.Second)
	def(&c.FenceTimeout, 2*time.Second)
	def(&c.HandoverGrace, time.Second)
	if c.SuspectAfter > 0 {
		def(&c.SuspectStagger, c.SuspectAfter/8)
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.MinSeqJump == 0 {
		c.MinSeqJump = 1 << 16
	}
	if c.MaxPacketRate <= 0 {
		c.MaxPacketRate = 1_000_000
	}
	if c.Role == "" {
		c.Role = raftstore.RoleGateway
	}
	if c.Build.Version == "" {
		c.Build = buildinfo.Read()
	}
}

// DefaultMaxBatch is the default cap on the SAs of one log entry. About
// 650 bytes each, 256 make an entry of ~170 KB: under the 256 KB beyond
// which the Raft transport's decoder grows a byte slice chunk by chunk
// (quadratic copying), small enough that a follower answers heartbeats
// promptly during a storm (with 4,096 a leader lost its lease in the
// benchmark), and large enough for ~30,000 upserts/s (docs/performance.md).
const DefaultMaxBatch = 256

// Event is something operators and alerting care about.
type Event struct {
	Kind string // failover.started, failover.completed, failover.failed, node.fenced, node.unhealthy, leadership.transferred
	Node string
	Term uint64
	At   time.Time
	// Reason is why the role moved (failover.*, leadership.transferred),
	// why the node fenced (node.fenced), or unhealthy (node.unhealthy).
	Reason  raftstore.Reason
	Timings raftstore.Timings
	SAs     int
	Detail  string
	Err     error
}

// Health reports the node's own health (charon answering, uplink up).
type Health interface {
	Healthy() (ok bool, detail string)
}

// Agent runs one node.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	store    *raftstore.Store
	dp       Dataplane
	prov     providers.Provider
	sealer   *raftstore.Sealer
	health   Health
	observer ActiveObserver
	events   func(Event)
	// resync asks the feed to reload the log's SA set and resync it from
	// the dataplane (after an operator's snapshot restore).
	resync chan struct{}
	// lane paces the node's bulk work (see package bulk); staged is the
	// standby's decoded copy of the SA set.
	lane   *bulk.Lane
	staged *stage
	// ike carries the IKE_SAs (nil without an ha channel; see ike.go).
	ikeCh      ikecarry.Channel
	ikeMID     ikecarry.MIDSource
	ike        *ikecarry.Carrier
	egress     EgressFence
	egressOnce sync.Once

	mu           sync.Mutex // guards the following fields
	lastFollower time.Time  // when this node last saw itself as follower
	candidateAt  time.Time  // first candidacy since last follower state
	contactAt    time.Time  // last contact with the old leader, read at candidacy
	leaderAt     time.Time
	fencedAt     time.Time
	active       bool // this node carries the tunnels
	// handover is the planned hand-over this active node started, if any.
	handover plannedHandover
	// leaving is the reason of the hand-over this leader announced, for
	// its fence (see fenceReason); suspected is what the detector saw
	// when it last started an election here.
	leaving   raftstore.Reason
	suspected suspicion
}

// plannedHandover is an operator's promote or drain in progress on the
// active node that started it.
type plannedHandover struct {
	term  uint64    // the term this node led in
	until time.Time // end of the grace; zero when none is under way
}

// Option configures an Agent.
type Option func(*Agent)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(a *Agent) { a.log = l } }

// WithHealth sets the node's own health source.
func WithHealth(h Health) Option { return func(a *Agent) { a.health = h } }

// WithEvents sets the event sink. It is called synchronously and must not
// block.
func WithEvents(fn func(Event)) Option { return func(a *Agent) { a.events = fn } }

// New builds an agent on an open store. It registers the state hook, so it
// must be called before the store can change state.
func New(cfg Config, store *raftstore.Store, dp Dataplane, prov providers.Provider, sealer *raftstore.Sealer, opts ...Option) (*Agent, error) {
	cfg.Defaults()
	if cfg.NodeID == "" || store == nil || dp == nil || prov == nil || sealer == nil {
		return nil, errors.New("agent: node ID, store, dataplane, provider and sealer are required")
	}
	if !cfg.Role.Valid() {
		return nil, fmt.Errorf("agent: role %q is not gateway or witness", cfg.Role)
	}
	a := &Agent{cfg: cfg, store: store, dp: dp, prov: prov, sealer: sealer, log: slog.New(slog.DiscardHandler),
		resync: make(chan struct{}, 1), staged: newStage()}
	for _, o := range opts {
		o(a)
	}
	if a.lane == nil {
		a.lane = bulk.NewLane(0, 0)
	}
	a.log = a.log.With("node", cfg.NodeID)
	a.newIKECarrier()
	store.OnStateChange(a.onRaftState)
	return a, nil
}

func (a *Agent) emit(e Event) {
	e.Node, e.At = a.cfg.NodeID, time.Now()
	if a.events != nil {
		a.events(e)
	}
}

func (a *Agent) onRaftState(st raft.RaftState, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch st {
	case raft.Follower:
		a.lastFollower, a.candidateAt, a.contactAt = at, time.Time{}, time.Time{}
	case raft.Candidate:
		if a.candidateAt.IsZero() {
			a.candidateAt = at
			a.contactAt = a.store.LastContact()
		}
	case raft.Leader:
		a.leaderAt = at
	}
}

// IsActive reports whether this node carries the tunnels now.
func (a *Agent) IsActive() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.active
}

// FencedAt is when this node last fenced itself.
func (a *Agent) FencedAt() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fencedAt
}

// Run runs the agent until ctx ends. A node starts as a standby: whatever
// its dataplane still carries from an earlier life is fenced first.
func (a *Agent) Run(ctx context.Context) error {
	a.store.SetRPCHandler(a.handleRPC)
	a.fence("", "starting as a standby")
	reportDone := make(chan struct{})
	go func() {
		defer close(reportDone)
		a.reportHealth(ctx)
	}()
	defer func() { <-reportDone }()
	recordDone := make(chan struct{})
	go func() {
		defer close(recordDone)
		a.keepOwnRecord(ctx)
	}()
	defer func() { <-recordDone }()
	detectDone := make(chan struct{})
	go func() {
		defer close(detectDone)
		a.detectLeaderLoss(ctx)
	}()
	defer func() { <-detectDone }()
	stageDone := make(chan struct{})
	go func() {
		defer close(stageDone)
		a.stageStandby(ctx)
	}()
	defer func() { <-stageDone }()
	ikeDone := make(chan struct{})
	go func() {
		defer close(ikeDone)
		a.runIKE(ctx)
	}()
	defer func() { <-ikeDone }()
	var (
		cancelLead context.CancelFunc
		leadDone   chan struct{}
	)
	stopLeading := func() {
		if cancelLead != nil {
			cancelLead()
			<-leadDone
			cancelLead = nil
		}
	}
	defer stopLeading()
	for {
		select {
		case <-ctx.Done():
			return nil
		case leader := <-a.store.LeaderCh():
			if cancelLead != nil {
				// Lost leadership, or lost and regained it (Raft merges
				// flaps into "true, true"): another node may have claimed
				// in between, so fence before anything else.
				//
				// What a flap costs, and why no less is safe: a leader
				// that lost its lease cannot know whether a follower is
				// already electing itself, and the followers install and
				// move without asking it; fencing at once is what keeps
				// two nodes from sending on one SA (invariant 8). What
				// it does not pay: a follower that alone missed
				// heartbeats deposes nobody (pre-vote: the others, still
				// hearing the leader, refuse), and a node re-elected with
				// no claim in between re-installs (from its staged copy
				// where it has one) and skips re-initiating IKE (see lead).
				cancelLead()
				why := a.fenceReason()
				if !leader {
					a.awaitSuccessor(ctx)
				}
				a.fence(why, "lost leadership")
				<-leadDone
				// The takeover may have been inside a provider call or an
				// install when its context ended, and added a VIP or SAs
				// after the fence (seen in the lab: a node that lost
				// leadership mid-move kept the VIP, since nobody asked it
				// to yield again). Now that it has stopped, fence again.
				a.fence(why, "lost leadership, takeover stopped")
				cancelLead = nil
			}
			if leader {
				lctx, cancel := context.WithCancel(ctx)
				done := make(chan struct{})
				cancelLead, leadDone = cancel, done
				go func() {
					defer close(done)
					a.lead(lctx)
				}()
			}
		}
	}
}

// fence stops this node from sending with any SA another node may now use,
// and drops floating resources that live on the node itself. reason is
// why the node gave the role up, detail what happened.
func (a *Agent) fence(reason raftstore.Reason, detail string) {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.FenceTimeout)
	defer cancel()
	a.mu.Lock()
	wasActive := a.active
	a.active = false
	a.mu.Unlock()
	err := a.dp.Fence(ctx)
	if r, ok := a.prov.(providers.Releaser); ok && len(a.cfg.Resources) > 0 {
		err = errors.Join(err, r.Release(ctx, a.cfg.Resources))
	}
	err = errors.Join(err, a.deactivateIKE(ctx))
	now := time.Now()
	a.mu.Lock()
	a.fencedAt = now
	a.mu.Unlock()
	if err != nil {
		a.log.Error("fencing failed", "reason", reason, "detail", detail, "err", err)
	} else if wasActive {
		a.log.Warn("fenced", "reason", reason, "detail", detail)
	}
	if wasActive {
		a.emit(Event{Kind: "node.fenced", Term: a.store.Term(), Reason: reason, Detail: detail, Err: err})
	}
}

// awaitSuccessor keeps a node that handed the active role over on purpose
// carrying the tunnels (VIPs, outbound SAs) until its successor has
// committed active, at most HandoverGrace: fencing at once would leave the
// tunnels without a gateway for the whole takeover (the lab lost 9 probes
// of 100/s that way). The successor moves the VIPs first (the linux
// provider then asks this node to yield them) and starts every outbound
// SA past what this node can send within the grace (see PrepareInstall),
// so the two never send the same sequence number. After an unplanned loss
// of leadership there is no grace: the node fences at once.
func (a *Agent) awaitSuccessor(ctx context.Context) {
	a.mu.Lock()
	h := a.handover
	a.handover = plannedHandover{}
	a.mu.Unlock()
	wait := time.Until(h.until)
	if h.until.IsZero() || wait <= 0 {
		return
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	fsm := a.store.FSM()
	for {
		changed := fsm.Changed()
		var cur raftstore.Active
		fsm.View(func(st *raftstore.State) { cur = st.Active })
		if cur.Term > h.term && cur.Phase == raftstore.PhaseActive && cur.Node != a.cfg.NodeID {
			a.log.Info("successor active; fencing", "successor", cur.Node, "term", cur.Term)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			a.log.Warn("successor not active within the hand-over grace; fencing", "grace", a.cfg.HandoverGrace)
			return
		case <-changed:
		}
	}
}

// lead runs while this node is the Raft leader.
func (a *Agent) lead(ctx context.Context) {
	gained := time.Now()
	bctx, cancel := context.WithTimeout(ctx, a.cfg.BarrierTimeout)
	err := a.store.Barrier(bctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			a.log.Error("barrier after winning the election failed; handing leadership over", "err", err)
			a.handOver(ctx, raftstore.ReasonTakeoverFailed, "barrier failed on "+a.cfg.NodeID+": "+err.Error())
		}
		return
	}
	term := a.store.Term()
	cur, reason, detail := a.takeoverReason(term)
	if why := a.unfit(); why != "" {
		// Passed on, the takeover keeps the reason that caused it.
		a.handOver(ctx, reason, detail+"; passed on by "+a.cfg.NodeID+": "+why)
		return
	}
	if err := a.ensureMember(ctx); err != nil {
		a.log.Error("recording own membership", "err", err)
	}
	if cur.Node == a.cfg.NodeID && cur.Term == term && cur.Phase == raftstore.PhaseActive {
		a.setActive()
		a.activateIKE(ctx)
		a.runActive(ctx, nil)
		return
	}
	t := a.electionTimings()
	a.emit(Event{Kind: "failover.started", Term: term, Reason: reason, Detail: detail})
	a.log.Info("taking over", "term", term, "previous", cur.Node, "previous_term", cur.Term, "reason", reason, "detail", detail)

	if _, err := a.store.Apply(ctx, &raftstore.ClaimCmd{Node: a.cfg.NodeID, At: time.Now(), Reason: reason, Detail: detail, From: cur.Node}); err != nil {
		// Refused by the state machine or not leader any more: either way
		// no resource was touched, and a new leadership round starts over.
		a.log.Error("committing claim", "term", term, "err", err)
		a.handOver(ctx, raftstore.ReasonTakeoverFailed, "claim refused on "+a.cfg.NodeID+": "+err.Error())
		return
	}
	t.Claim = time.Since(gained)

	// Install before move: from the moment a resource points here (the
	// first one can carry traffic while the next is still moving), this
	// node can decrypt what arrives and encrypt what it must send back.
	// Installed SAs on a node that does not hold the resources are inert:
	// no ESP reaches it and no inside traffic is routed through it, and if
	// the move fails the node hands over and fences them. Installing after
	// the move lost probes in every planned drain in the lab: the inside
	// VIP followed the outside one to the successor before its SAs were in.
	installStart := time.Now()
	held := a.prepareIKE(ctx)
	installed, hashes, err := a.installReplicated(ctx, held)
	if err != nil {
		a.failed(ctx, term, reason, "install", err)
		return
	}
	// The carried IKE_SAs go live before the move too: the first IKE
	// request that reaches this node must find them answering.
	carried := a.activateIKE(ctx)
	if carried != nil {
		reconciled := a.reconcileIKE(ctx)
		defer func() { <-reconciled }()
	}
	t.Install = time.Since(installStart)

	moveStart := time.Now()
	a.declareGone(term, cur)
	if err := a.claimResources(ctx, term); err != nil {
		a.failed(ctx, term, reason, "move", err)
		return
	}
	t.Move = time.Since(moveStart)
	a.setActive()
	// Re-elected with no other claim since its own completed one: charon
	// here still holds the IKE SAs of what it carried, and initiating
	// them again would only make the peers replace live IKE SAs and
	// CHILD_SAs (in the lab's flap runs that failed, and the client's
	// tunnel went dead).
	reelected := cur.Node == a.cfg.NodeID && cur.Phase == raftstore.PhaseActive
	// Peers whose IKE_SA came with the takeover keep it: re-establishment
	// is the fallback for the others.
	if re, ok := a.dp.(Reestablisher); ok && !reelected {
		rest := notCarried(installed, carried)
		go func() {
			if len(rest) == 0 {
				return
			}
			if err := re.Reestablish(ctx, rest); err != nil && ctx.Err() == nil {
				a.log.Warn("re-establishing IKE SAs after takeover", "err", err)
			}
		}()
	}
	t.Total = t.Detect + t.Elect + time.Since(gained)
	if _, err := a.store.Apply(ctx, &raftstore.ActiveCmd{Node: a.cfg.NodeID, At: time.Now(), Timings: t, SAs: len(installed)}); err != nil {
		a.log.Error("committing active", "term", term, "err", err)
		return
	}
	a.log.Info("active", "term", term, "reason", reason, "sas", len(installed), "detect", t.Detect, "elect", t.Elect,
		"claim", t.Claim, "install", t.Install, "move", t.Move, "total", t.Total)
	a.emit(Event{Kind: "failover.completed", Term: term, Reason: reason, Detail: detail, Timings: t, SAs: len(installed)})
	a.runActive(ctx, hashes)
}

func (a *Agent) setActive() {
	a.mu.Lock()
	a.active = true
	a.mu.Unlock()
}

func (a *Agent) electionTimings() raftstore.Timings {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.electionTimingsLocked()
}

func (a *Agent) electionTimingsLocked() raftstore.Timings {
	var t raftstore.Timings
	if !a.candidateAt.IsZero() {
		if !a.contactAt.IsZero() && a.candidateAt.After(a.contactAt) {
			t.Detect = a.candidateAt.Sub(a.contactAt)
		}
		if a.leaderAt.After(a.candidateAt) {
			t.Elect = a.leaderAt.Sub(a.candidateAt)
		}
	}
	return t
}

// unfit says why this node must not be active, or "".
func (a *Agent) unfit() string {
	if a.cfg.Role == raftstore.RoleWitness {
		return "witness won the election"
	}
	if a.health != nil {
		if ok, detail := a.health.Healthy(); !ok {
			return "unhealthy: " + detail
		}
	}
	return ""
}

func (a *Agent) failed(ctx context.Context, term uint64, reason raftstore.Reason, phase string, err error) {
	a.log.Error("takeover failed", "term", term, "reason", reason, "phase", phase, "err", err)
	a.emit(Event{Kind: "failover.failed", Term: term, Reason: reason, Detail: phase, Err: err})
	if ctx.Err() != nil {
		return
	}
	fctx, cancel := context.WithTimeout(ctx, a.cfg.BarrierTimeout)
	defer cancel()
	if _, aerr := a.store.Apply(fctx, &raftstore.FailedCmd{Node: a.cfg.NodeID, At: time.Now(), Phase: phase, Error: err.Error()}); aerr != nil {
		a.log.Error("recording the failed takeover", "err", aerr)
	}
	if errors.Is(err, providers.ErrStaleTerm) {
		// A newer term holds the resources: this node is behind, not broken.
		return
	}
	a.handOver(ctx, raftstore.ReasonTakeoverFailed, phase+" failed on "+a.cfg.NodeID+": "+err.Error())
}

// handOver transfers leadership to the best other gateway that answers,
// retrying until one accepts or ctx ends (a lone witness keeps leading
// Raft meanwhile). A gateway that did not answer or refused is passed over
// until every candidate has had its turn: after the active dies, the
// state still ranks it first (its last health reports were good), and a
// transfer to a dead node blocks the next ones for the whole dial timeout.
// Each transfer is announced first with its reason and detail (see
// announceHandover), for the successor's takeover to carry.
func (a *Agent) handOver(ctx context.Context, reason raftstore.Reason, detail string) {
	backoff := 100 * time.Millisecond
	passed := map[string]bool{}
	for ctx.Err() == nil {
		target, ok := a.reachableGateway(ctx, passed)
		switch {
		case ok:
			a.log.Info("handing leadership over", "to", target.ID, "reason", reason, "detail", detail)
			a.announceHandover(ctx, target.ID, reason, detail)
			err := a.store.TransferLeadership(target.ID, target.Address)
			if err == nil {
				a.emit(Event{Kind: "leadership.transferred", Reason: reason, Detail: detail + " → " + target.ID})
				<-ctx.Done()
				return
			}
			a.log.Warn("leadership transfer failed", "to", target.ID, "err", err)
			passed[target.ID] = true
		case len(passed) > 0:
			clear(passed) // every candidate had its turn: start over
		default:
			a.log.Warn("no gateway to hand leadership to", "reason", reason, "detail", detail)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// reachableGateway returns the best-ranked gateway (see rankGateways) not
// in passed that answers a ping. The ones that do not answer join passed.
func (a *Agent) reachableGateway(ctx context.Context, passed map[string]bool) (raftstore.Member, bool) {
	for _, m := range a.rankGateways(a.cfg.NodeID) {
		if passed[m.ID] {
			continue
		}
		if err := a.store.Ping(ctx, m.Address); err != nil {
			a.log.Warn("passing over a gateway that does not answer", "node", m.ID, "err", err)
			passed[m.ID] = true
			continue
		}
		return m, true
	}
	return raftstore.Member{}, false
}

// rankGateways orders the gateways other than exclude that are voters in
// the Raft configuration: healthy before unhealthy (by the observers'
// majority), then by priority, then by ID.
func (a *Agent) rankGateways(exclude string) []raftstore.Member {
	servers, err := a.store.Servers()
	if err != nil {
		return nil
	}
	return a.rankGatewaysOf(servers, exclude)
}

// rankGatewaysOf is rankGateways on a Raft configuration already read.
func (a *Agent) rankGatewaysOf(servers []raft.Server, exclude string) []raftstore.Member {
	voters := make(map[string]bool, len(servers))
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters[string(s.ID)] = true
		}
	}
	var cands []raftstore.Member
	healthy := map[string]bool{}
	a.store.FSM().View(func(st *raftstore.State) {
		for _, m := range st.Members {
			if m.ID == exclude || m.Role != raftstore.RoleGateway || !voters[m.ID] {
				continue
			}
			cands = append(cands, m)
			healthy[m.ID] = majorityHealthy(st.Health[m.ID])
		}
	})
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if healthy[a.ID] != healthy[b.ID] {
			return healthy[a.ID]
		}
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		return a.ID < b.ID
	})
	return cands
}

// majorityHealthy is true unless a majority of the observers that reported
// on the subject saw it unhealthy. No reports means no evidence against.
func majorityHealthy(obs map[string]raftstore.Observation) bool {
	bad := 0
	for _, o := range obs {
		if !o.Healthy {
			bad++
		}
	}
	return bad*2 <= len(obs) || len(obs) == 0
}

// claimResources moves every floating resource to this node, retrying
// until the claim timeout. A higher term on a resource ends it at once.
func (a *Agent) claimResources(ctx context.Context, term uint64) error {
	if len(a.cfg.Resources) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ClaimTimeout)
	defer cancel()
	pending := a.cfg.Resources
	backoff := 50 * time.Millisecond
	for {
		err := a.prov.Claim(ctx, term, pending)
		if err == nil {
			return nil
		}
		if errors.Is(err, providers.ErrStaleTerm) || errors.Is(err, providers.ErrPermission) {
			return fmt.Errorf("claiming floating resources at term %d: %w", term, err)
		}
		var ce *providers.ClaimError
		if errors.As(err, &ce) && len(ce.Failed) < len(pending) {
			pending = pending[:0:0]
			for _, f := range ce.Failed {
				pending = append(pending, f.Resource)
			}
		}
		a.log.Warn("claim incomplete; retrying", "term", term, "pending", len(pending), "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("claiming floating resources at term %d: %w (last error: %w)", term, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// SeqStart returns the outbound sequence number a new active must start
// after, so that it can never reuse one the old active sent.
//
// The old active kept sending after it read lastOSeq, until it was fenced.
// It fenced itself before this node could be elected (its lease is shorter
// than the election timeout), so it sent for at most now − readAt. This
// node knows only when it applied the counters (appliedAt, local clock), not
// when they were read on the other host: readAt is earlier by the commit
// latency, which the replay interval bounds generously. So the number of
// packets sent after the read is at most maxRate × (now − appliedAt +
// interval); the jump is that, never less than minJump.
func SeqStart(lastOSeq uint64, appliedAt, now time.Time, interval time.Duration, maxRate float64, minJump uint64) uint64 {
	stale := interval
	if !appliedAt.IsZero() && now.After(appliedAt) {
		stale += now.Sub(appliedAt)
	}
	jump := uint64(math.Ceil(maxRate * stale.Seconds()))
	if jump < minJump {
		jump = minJump
	}
	return lastOSeq + jump
}

// ensureMember records this node's own metadata when the state lacks it or
// it changed (first leader after bootstrap, changed priority in config).
func (a *Agent) ensureMember(ctx context.Context) error {
	want := a.ownRecord()
	var have raftstore.Member
	var ok bool
	a.store.FSM().View(func(st *raftstore.State) { have, ok = st.Members[a.cfg.NodeID] })
	if ok && have == want {
		return nil
	}
	_, err := a.store.Apply(ctx, &raftstore.MemberCmd{ID: want.ID, Address: want.Address, Role: want.Role, Priority: want.Priority, Version: want.Version})
	return err
}

// runActive runs the active node's duties until leadership ends: the SA
// feed and the health guard.
func (a *Agent) runActive(ctx context.Context, known map[string][32]byte) {
	guardDone := make(chan struct{})
	go func() {
		defer close(guardDone)
		a.guardActive(ctx)
	}()
	a.feed(ctx, known)
	<-guardDone
}
