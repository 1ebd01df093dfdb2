package perf

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/internal/rtsched"
	"github.com/handoffvpn/handoff/ipsec/memdp"
	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/raftstore"
)

// StabilityOptions configure a stability run (Stability). Zero values take
// the defaults named on each field.
type StabilityOptions struct {
	// Duration of the measured run, from the first active on (default
	// 10 minutes). The start-up before it is not counted; a takeover in
	// progress when it ends is waited for.
	Duration time.Duration
	// Nodes is the number of gateways (default 3).
	Nodes int
	// Tunnels is the number of synthetic tunnels that appear at once on
	// the active (default 100,000).
	Tunnels int
	// HeartbeatTimeout is the Raft heartbeat and election timeout; the
	// lease is a third of it and the agents' suspect_after twice the
	// lease (default 150ms: the product's defaults).
	HeartbeatTimeout time.Duration
	// BusyLoops is the number of busy-loop processes started for the run
	// (0: none; the command's default is 2 × runtime.NumCPU()).
	BusyLoops int
	// Jitter delays every write on every Raft link by a random 0..Jitter,
	// Delay by a fixed amount on top (both 0: no delay).
	Jitter, Delay time.Duration
	// KillEvery is the interval between kills of the active (default 2
	// minutes; negative: no kills).
	KillEvery time.Duration
	// RekeyEvery is the interval between rekey rounds on the active
	// (default 30s; negative: none); each replaces RekeyFraction of its
	// SAs (default 0.05) with fresh ones under new SPIs.
	RekeyEvery    time.Duration
	RekeyFraction float64
	// Settle extends the window after each kill, from the kill to the new
	// active committed, within which leader changes, fences and takeovers
	// are the kill's (default 1s).
	Settle time.Duration
	// PollEvery is how often every node's Raft state is read (default
	// 10ms).
	PollEvery time.Duration
	// TakeoverTimeout bounds the wait for an active node (default 1m):
	// the run fails without one.
	TakeoverTimeout time.Duration
	// RealtimePriority, when above 0 and running as root, puts the whole
	// process under SCHED_RR at this priority with its memory locked, as
	// the agent does by default (0: leave the scheduling as it is).
	RealtimePriority int
	// ApplyRealtime applies the request (default rtsched.Apply).
	ApplyRealtime func(rtsched.Request) (rtsched.Report, error)
	// Reconnect re-establishes, all at once on the new active, the tunnels
	// a takeover dropped (their SAs had not been replicated), as their
	// clients would, a thundering herd. Off, the dropped tunnels stay
	// gone and the run goes on with what the new active carries.
	Reconnect bool
	// NoSync skips fsync of the Raft logs (production syncs).
	NoSync bool
	// Dir holds the nodes' data (default: a temporary directory, removed
	// afterwards).
	Dir    string
	Logger *slog.Logger
	// Progress, if set, receives a line for each step of the run.
	Progress io.Writer
}

func (o *StabilityOptions) defaults() {
	if o.Duration <= 0 {
		o.Duration = 10 * time.Minute
	}
	if o.Nodes <= 0 {
		o.Nodes = 3
	}
	if o.Tunnels <= 0 {
		o.Tunnels = 100_000
	}
	if o.HeartbeatTimeout <= 0 {
		o.HeartbeatTimeout = 150 * time.Millisecond
	}
	if o.KillEvery == 0 {
		o.KillEvery = 2 * time.Minute
	}
	if o.RekeyEvery == 0 {
		o.RekeyEvery = 30 * time.Second
	}
	if o.RekeyFraction <= 0 {
		o.RekeyFraction = 0.05
	}
	if o.Settle <= 0 {
		o.Settle = time.Second
	}
	if o.PollEvery <= 0 {
		o.PollEvery = 10 * time.Millisecond
	}
	if o.TakeoverTimeout <= 0 {
		o.TakeoverTimeout = time.Minute
	}
	if o.ApplyRealtime == nil {
		o.ApplyRealtime = rtsched.Apply
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// Kill is one kill of the active and the takeover that followed it.
type Kill struct {
	// At is the kill's time since the run started.
	At        time.Duration
	Killed    string
	NewActive string
	Term      uint64
	// Timings are the new active's own, from its committed active state.
	Timings raftstore.Timings
	// Observed is kill → new active committed, by the driver's clock.
	Observed time.Duration
	// Carried is the number of SAs the killed node carried; Replicated
	// those of them the new active's replicated state held when it
	// committed; Lost those replicated ones it cannot send on.
	Carried, Replicated, Lost int
}

// LeaderChange is a change of the Raft term or leader seen by the poll.
type LeaderChange struct {
	At time.Time
	// FromTerm → Term is the highest term any running node reported.
	FromTerm, Term uint64
	// PrevLeader → Leader are the leaders of the two terms ("" while
	// unknown).
	PrevLeader, Leader string
	// Node is the node that first reported the new term (or leader).
	Node string
	// Kill is the index of the kill it is attributed to, or -1: spurious.
	Kill int
	// Before is what the watch saw of the machine in the second before
	// the change was seen.
	Before Stall
}

// Stall is how much a stretch of the run was held up: StealMS is the
// time the hypervisor took from the machine's vCPUs (summed over them,
// -1 when unknown), GapMS the longest time between two of the watch's
// polls (a gap far above PollEvery means the process was not running).
type Stall struct {
	StealMS float64
	GapMS   float64
}

func (s Stall) String() string {
	steal := "steal unknown"
	if s.StealMS >= 0 {
		steal = fmt.Sprintf("machine steal %.0f ms", s.StealMS)
	}
	return fmt.Sprintf("%s, longest poll gap %.0f ms", steal, s.GapMS)
}

// StabilityEvent is an agent event the run counts: a fence or a takeover.
type StabilityEvent struct {
	agent.Event
	// Kill is the index of the kill it is attributed to, or -1: spurious.
	Kill int
}

// StabilityResult is what a stability run saw.
type StabilityResult struct {
	Options StabilityOptions
	Start   time.Time
	Elapsed time.Duration
	// BusyLoops is the number of busy-loop processes that ran; BusyPIDs
	// their process IDs; BusyExited notes loops that ended before the run
	// did (their CPU load was missing from then on).
	BusyLoops  int
	BusyPIDs   []int
	BusyExited []string
	// Realtime: every thread of the process ran under a realtime policy
	// at the end of the run. RealtimeDetail says what was asked and what
	// the threads had.
	Realtime       bool
	RealtimeDetail string
	Lease          time.Duration
	SuspectAfter   time.Duration
	// StormReplicated is the time from the storm to every node holding
	// every SA the active carries, with its replay state (0 if they never
	// did); StormSAs is that number of SAs: fewer than the storm's if a
	// takeover without a kill cut the storm short.
	StormReplicated time.Duration
	StormSAs        int
	Kills           []Kill
	Changes         []LeaderChange
	Events          []StabilityEvent
	// Rekeys is the number of rekey rounds, RekeyedSAs the SAs replaced.
	Rekeys, RekeyedSAs int
	// DroppedBySpurious counts SAs the driver's active carried that its
	// successor, after a takeover without a kill, could not send on.
	DroppedBySpurious int
	// Reconnected counts the tunnels re-established on a new active after
	// it came up without them (their SAs had not been replicated).
	Reconnected int
	// Polls is the number of polls of the nodes' Raft state; PollGapMax
	// the longest time between two (a starved driver sees coarsely).
	Polls      int
	PollGapMax time.Duration
	// Steal is the time the hypervisor took from the machine's vCPUs
	// during the run, summed over them (negative: unknown).
	Steal time.Duration
}

// Stability runs the in-process cluster at the product's Raft timings
// under CPU saturation (busy-loop processes), a replication storm with
// traffic and rekey churn, and jitter on every Raft link, kills the
// active every KillEvery, and counts the leader changes and fences that no
// kill caused. It returns an error, with what it saw so far, when the run
// itself fails (no active node, a killed node that cannot restart, an
// interrupt); spurious changes, and a storm the cluster cannot replicate,
// are figures, not errors.
func Stability(ctx context.Context, o StabilityOptions) (*StabilityResult, error) {
	o.defaults()
	res := &StabilityResult{Options: o, Lease: o.HeartbeatTimeout / 3}
	res.SuspectAfter = 2 * res.Lease
	say := func(format string, args ...any) { fmt.Fprintf(o.Progress, format+"\n", args...) }

	// The loops start first, before the process may become realtime: a
	// child inherits its parent thread's policy.
	busy, err := startBusyLoops(o.BusyLoops)
	if err != nil {
		return res, err
	}
	defer busy.stop()
	res.BusyLoops, res.BusyPIDs = len(busy.cmds), busy.pids()
	if res.BusyLoops > 0 {
		say("%d busy loops running at normal priority (pids %v)", res.BusyLoops, res.BusyPIDs)
	}
	rtAsked := applyRealtime(o, say)

	if o.Dir == "" {
		dir, cleanup, err := cluster.TempDir()
		if err != nil {
			return res, err
		}
		defer cleanup()
		o.Dir = dir
	}
	r := &stabilityRun{o: o, res: res, say: say, specs: map[string]cluster.NodeSpec{}, events: &eventLog{}}
	err = r.run(ctx)
	res.Realtime, res.RealtimeDetail = realtimeNow(rtAsked)
	res.BusyExited = busy.exited()
	r.classify()
	return res, err
}

// applyRealtime applies the requested realtime priority as the agent does
// when permitted, and returns what was asked (for the report).
func applyRealtime(o StabilityOptions, say func(string, ...any)) string {
	switch {
	case o.RealtimePriority <= 0:
		return "not asked (realtime priority 0)"
	case os.Geteuid() != 0:
		return "not asked (not root)"
	}
	req := rtsched.Request{Policy: rtsched.RR, Priority: o.RealtimePriority, LockMemory: true}
	rep, err := o.ApplyRealtime(req)
	if err != nil {
		say("realtime scheduling not applied in full: asked %s, got %s: %v", req, rep, err)
		return fmt.Sprintf("asked %s, failed: %v", req, err)
	}
	say("realtime scheduling: %s", rep)
	return "asked " + req.String()
}

// realtimeNow reads back whether every thread runs under a realtime
// policy.
func realtimeNow(asked string) (bool, string) {
	threads, err := rtsched.Threads(0)
	if err != nil {
		return false, fmt.Sprintf("%s; reading the threads back: %v", asked, err)
	}
	all := len(threads) > 0
	for _, t := range threads {
		all = all && t.Policy.Realtime()
	}
	return all, fmt.Sprintf("%s; threads at the end: %s", asked, rtsched.Summarize(threads))
}

// killWindow is the time a kill's consequences are expected in.
type killWindow struct {
	node     string
	at, end  time.Time
	restarts time.Time // the killed node restarted (zero: it did not)
}

type stabilityRun struct {
	o      StabilityOptions
	res    *StabilityResult
	say    func(string, ...any)
	c      *cluster.Cluster
	specs  map[string]cluster.NodeSpec
	events *eventLog
	watch  *raftWatch

	// The driver's bookkeeping: the node it believes active and the SAs
	// that node carries, by ID.
	active   *cluster.Node
	book     map[string]*sa.ChildSA
	rekeySeq uint32
	windows  []killWindow
}

func (r *stabilityRun) run(ctx context.Context) error {
	o := r.o
	var specs []cluster.NodeSpec
	for i := 1; i <= o.Nodes; i++ {
		s := cluster.NodeSpec{ID: fmt.Sprintf("gw%d", i), Role: raftstore.RoleGateway, Priority: 100 - i}
		specs = append(specs, s)
		r.specs[s.ID] = s
	}
	// The tunnels' keys are drawn before the agents start: that is the
	// driver's work, not the cluster's.
	r.say("generating %d synthetic tunnels", o.Tunnels)
	vip := netip.MustParseAddr("203.0.113.100")
	storm := memdp.Synthetic(o.Tunnels, vip)

	c, err := cluster.Start(ctx, cluster.Options{Nodes: specs, Dir: o.Dir, HeartbeatTimeout: o.HeartbeatTimeout,
		Logger: o.Logger, NoSync: o.NoSync, Events: r.events.add,
		Resources: []providers.Resource{{Kind: "eip", ID: "eipalloc-stability"}, {Kind: "route", ID: "rtb-stability|198.51.100.0/24"}}})
	if err != nil {
		return fmt.Errorf("starting the cluster: %w", err)
	}
	r.c = c
	defer func() {
		if err := c.Close(); err != nil {
			o.Logger.Warn("closing the cluster", "err", err)
		}
	}()
	c.Net.SetDelay(o.Delay, o.Jitter)
	r.say("%d nodes started (heartbeat %v, lease %v, suspect_after %v; Raft writes delayed %v + 0..%v)",
		o.Nodes, o.HeartbeatTimeout, r.res.Lease, r.res.SuspectAfter, o.Delay, o.Jitter)
	first, act, err := r.waitActive(ctx, 0)
	if err != nil {
		return err
	}
	r.say("%s is active at term %d", first.Spec.ID, act.Term)

	// Everything after this point is counted.
	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopBG()
		wg.Wait()
	}()
	r.watch = newRaftWatch(c)
	r.watch.poll(time.Now()) // the baseline: the first leader is not a change
	wg.Add(2)
	go func() {
		defer wg.Done()
		r.watch.run(bg, o.PollEvery)
	}()
	go func() {
		defer wg.Done()
		// As the demo: every SA carries traffic, 2,000 per node and tick in
		// turn, so replay counters keep moving.
		c.TrafficBounded(bg, 2*time.Millisecond, 1, 2000)
	}()
	start := time.Now()
	r.res.Start = start
	defer func() {
		r.res.Elapsed = time.Since(start)
		stopBG()
		wg.Wait()
		r.res.Changes, r.res.Polls, r.res.PollGapMax, r.res.Steal = r.watch.result()
	}()

	r.active = first
	r.book = make(map[string]*sa.ChildSA, len(storm))
	for _, s := range storm {
		r.book[s.ID] = s
	}
	first.DP.Add(storm...)
	r.say("storm: %d tunnels up on %s at once; replicating", len(storm), first.Spec.ID)
	deadline := start.Add(o.Duration)
	nextKill, nextRekey := start.Add(o.KillEvery), start.Add(o.RekeyEvery)
	// The storm has until the first kill to replicate; a cluster that
	// cannot replicate it (its leader deposed again and again) is a result,
	// not a failed run: the schedule goes on.
	stormBy := deadline
	if o.KillEvery > 0 && nextKill.Before(stormBy) {
		stormBy = nextKill
	}
	sctx, cancel := context.WithDeadline(ctx, stormBy)
	err = r.waitConverged(sctx)
	cancel()
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("replicating the storm of %d tunnels: %w", o.Tunnels, ctx.Err())
	case err != nil:
		r.say("the storm did not replicate within %v (%v); going on", stormBy.Sub(start).Round(time.Second), err)
	default:
		r.res.StormReplicated, r.res.StormSAs = time.Since(start), len(r.book)
		r.say("storm replicated: every node holds the active's %d SAs after %v", r.res.StormSAs, r.res.StormReplicated.Round(time.Millisecond))
	}
	for {
		now := time.Now()
		if !now.Before(deadline) {
			return nil
		}
		wake := deadline
		if o.KillEvery > 0 && nextKill.Before(wake) {
			wake = nextKill
		}
		if o.RekeyEvery > 0 && nextRekey.Before(wake) {
			wake = nextRekey
		}
		if err := sleepUntil(ctx, wake); err != nil {
			return fmt.Errorf("running the stability load: %w", err)
		}
		now = time.Now()
		if o.KillEvery > 0 && !now.Before(nextKill) && now.Before(deadline) {
			if err := r.kill(ctx); err != nil {
				return err
			}
			// A kill that took long (a slow takeover) does not make the next
			// one come at once.
			nextKill = nextKill.Add(o.KillEvery)
			if now := time.Now(); nextKill.Before(now) {
				nextKill = now.Add(o.KillEvery)
			}
		}
		if o.RekeyEvery > 0 && !time.Now().Before(nextRekey) && time.Now().Before(deadline) {
			if err := r.rekey(ctx); err != nil {
				return err
			}
			nextRekey = time.Now().Add(o.RekeyEvery)
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// waitActive waits for an active node that also leads Raft, at a term
// above after, within the takeover timeout.
func (r *stabilityRun) waitActive(ctx context.Context, after uint64, exclude ...string) (*cluster.Node, raftstore.Active, error) {
	wctx, cancel := context.WithTimeout(ctx, r.o.TakeoverTimeout)
	defer cancel()
	n, act, err := r.c.WaitActive(wctx, after, exclude...)
	if err != nil {
		return nil, act, fmt.Errorf("waiting up to %v for an active node: %w", r.o.TakeoverTimeout, err)
	}
	return n, act, nil
}

// syncActive returns the active node. If it is not the one the driver
// believes active, a takeover happened without a kill: the bookkeeping
// starts over from what the new active carries.
func (r *stabilityRun) syncActive(ctx context.Context) (*cluster.Node, raftstore.Active, error) {
	n, act, err := r.waitActive(ctx, 0)
	if err != nil {
		return nil, act, err
	}
	if n != r.active {
		have := outboundSet(n)
		dropped := 0
		for id := range r.book {
			if !have[id] {
				dropped++
			}
		}
		r.res.DroppedBySpurious += dropped
		r.say("active moved from %s to %s (term %d) without a kill; %d of %d SAs not carried over",
			r.active.Spec.ID, n.Spec.ID, act.Term, dropped, len(r.book))
		prev := r.book
		if err := r.adopt(ctx, n); err != nil {
			return nil, act, err
		}
		if err := r.reconnect(n, prev); err != nil {
			return nil, act, err
		}
	}
	return n, act, nil
}

// reconnect brings back on the new active n the tunnels of prev (the
// previous active's) that n cannot send on, as their clients would
// re-establish them: fresh SAs under new SPIs, all at once (only with
// StabilityOptions.Reconnect).
func (r *stabilityRun) reconnect(n *cluster.Node, prev map[string]*sa.ChildSA) error {
	if !r.o.Reconnect {
		return nil
	}
	var fresh []*sa.ChildSA
	now := time.Now()
	for id, s := range prev {
		if _, ok := r.book[id]; ok {
			continue
		}
		f, err := r.rekeyed(s, now)
		if err != nil {
			return err
		}
		fresh = append(fresh, f)
	}
	if len(fresh) == 0 {
		return nil
	}
	n.DP.Add(fresh...)
	for _, f := range fresh {
		r.book[f.ID] = f
	}
	r.res.Reconnected += len(fresh)
	r.say("%d dropped tunnels re-established on %s", len(fresh), n.Spec.ID)
	return nil
}

// adopt makes n the driver's active and its SAs the bookkeeping.
func (r *stabilityRun) adopt(ctx context.Context, n *cluster.Node) error {
	sas, err := n.DP.Export(ctx)
	if err != nil {
		return fmt.Errorf("reading the SAs of the new active %s: %w", n.Spec.ID, err)
	}
	out := outboundSet(n)
	r.book = make(map[string]*sa.ChildSA, len(sas))
	for _, s := range sas {
		if out[s.ID] {
			r.book[s.ID] = s
		}
	}
	r.active = n
	return nil
}

func outboundSet(n *cluster.Node) map[string]bool {
	ids := n.DP.Outbound()
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// waitConverged waits until every running node's replicated state holds
// as many SAs, with their replay state, as the active carries.
func (r *stabilityRun) waitConverged(ctx context.Context) error {
	for {
		if _, _, err := r.syncActive(ctx); err != nil {
			return err
		}
		want := len(r.book)
		ok := true
		for _, n := range r.c.Nodes() {
			var sas, replay int
			n.Store.FSM().View(func(st *raftstore.State) { sas, replay = len(st.SAs), len(st.Replay) })
			ok = ok && sas == want && replay >= want
		}
		if ok {
			return nil
		}
		if err := sleepUntil(ctx, time.Now().Add(50*time.Millisecond)); err != nil {
			return fmt.Errorf("waiting for every node to hold %d SAs: %w", want, err)
		}
	}
}

// kill kills the active, waits for its successor, checks that every
// replicated SA it carried survived, and restarts it as a standby.
func (r *stabilityRun) kill(ctx context.Context) error {
	n, act, err := r.syncActive(ctx)
	if err != nil {
		return err
	}
	id := n.Spec.ID
	carried := make([]string, 0, len(r.book))
	for sid := range r.book {
		carried = append(carried, sid)
	}
	k := Kill{Killed: id, Carried: len(carried)}
	w := killWindow{node: id, at: time.Now()}
	k.At = w.at.Sub(r.res.Start)
	r.say("kill %d at %v: killing the active %s (term %d, %d SAs)", len(r.res.Kills)+1, k.At.Round(time.Second), id, act.Term, len(carried))
	r.watch.exclude(id, true)
	if err := r.c.Kill(id); err != nil {
		// Kill has crashed the node either way; its store's close failed.
		r.o.Logger.Warn("killing the active", "node", id, "err", err)
	}
	next, act2, err := r.waitActive(ctx, act.Term, id)
	if err != nil {
		w.end = time.Now()
		r.windows = append(r.windows, w)
		return fmt.Errorf("taking over after killing %s: %w", id, err)
	}
	// The new active's own clock (the same process's) dates the commit:
	// Kill itself returns only once the node's Raft has shut down, which
	// can take longer than the takeover.
	committed := act2.ActiveAt
	if committed.IsZero() {
		committed = time.Now()
	}
	w.end = committed.Add(r.o.Settle)
	k.Observed = committed.Sub(w.at)
	k.NewActive, k.Term, k.Timings = next.Spec.ID, act2.Term, act2.Timings
	next.Store.FSM().View(func(st *raftstore.State) {
		for _, sid := range carried {
			if _, ok := st.SAs[sid]; ok {
				carried[k.Replicated] = sid
				k.Replicated++
			}
		}
	})
	have := outboundSet(next)
	for _, sid := range carried[:k.Replicated] {
		if !have[sid] {
			k.Lost++
		}
	}
	r.res.Kills = append(r.res.Kills, k)
	r.say("kill %d: %s active at term %d: detect %.1f ms, total %.1f ms (observed %.1f ms); %d of %d replicated SAs lost",
		len(r.res.Kills), next.Spec.ID, act2.Term, MS(k.Timings.Detect), MS(k.Timings.Total), MS(k.Observed), k.Lost, k.Replicated)
	prev := r.book
	if err := r.adopt(ctx, next); err != nil {
		r.windows = append(r.windows, w)
		return err
	}
	if err := r.reconnect(next, prev); err != nil {
		r.windows = append(r.windows, w)
		return err
	}
	if err := restart(r.c, r.specs[id]); err != nil {
		r.windows = append(r.windows, w)
		return fmt.Errorf("restarting the killed %s: %w", id, err)
	}
	w.restarts = time.Now()
	r.watch.exclude(id, false)
	r.windows = append(r.windows, w)
	r.say("%s restarted as a standby", id)
	return nil
}

// restart restarts a killed node. A panic in opening its store (the Raft
// library panics on a log it cannot read) ends the run with an error and
// the report of what was measured, instead of the process.
func restart(c *cluster.Cluster, spec cluster.NodeSpec) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("opening its store panicked: %v", p)
			if strings.Contains(fmt.Sprint(p), "sealed segment has no index block") {
				err = fmt.Errorf("%w (its Raft log's tail had been truncated: hashicorp/raft-wal#31, fixed in raft-wal v0.4.1)", err)
			}
		}
	}()
	_, err = c.Restart(spec)
	return err
}

// rekey replaces a fraction of the active's SAs as IKE rekeys would: the
// fresh SAs (new SPIs, new keys) appear first, then the old ones go.
func (r *stabilityRun) rekey(ctx context.Context) error {
	n, _, err := r.syncActive(ctx)
	if err != nil {
		return err
	}
	count := int(r.o.RekeyFraction * float64(len(r.book)))
	if count == 0 && len(r.book) > 0 {
		count = 1
	}
	old := make([]*sa.ChildSA, 0, count)
	for _, s := range r.book { // map order: a different sample each round
		if len(old) == count {
			break
		}
		old = append(old, s)
	}
	now := time.Now()
	fresh := make([]*sa.ChildSA, 0, len(old))
	for _, s := range old {
		f, err := r.rekeyed(s, now)
		if err != nil {
			return err
		}
		fresh = append(fresh, f)
	}
	n.DP.Add(fresh...)
	for _, s := range old {
		n.DP.Delete(s.ID)
		delete(r.book, s.ID)
	}
	for _, s := range fresh {
		r.book[s.ID] = s
	}
	r.res.Rekeys++
	r.res.RekeyedSAs += len(fresh)
	r.o.Logger.Info("rekeyed", "node", n.Spec.ID, "sas", len(fresh))
	return nil
}

// rekeyed returns the successor of s after a CHILD_SA rekey: the same
// tunnel and reqid, new SPIs and keys.
func (r *stabilityRun) rekeyed(s *sa.ChildSA, now time.Time) (*sa.ChildSA, error) {
	r.rekeySeq++
	seq := r.rekeySeq & 0x0fffffff
	n := *s
	var err error
	// Synthetic SPIs are 0xc…/0x8… plus the tunnel's index; these do not
	// meet them.
	if n.In, err = rekeyState(s.In, 0xe0000000|seq); err != nil {
		return nil, err
	}
	if n.Out, err = rekeyState(s.Out, 0xa0000000|seq); err != nil {
		return nil, err
	}
	n.ID = sa.MakeID(n.In)
	n.Child.UniqueID = 1<<28 | seq
	n.Child.InstalledAt = now
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("rekeying %s: %w", s.ID, err)
	}
	return &n, nil
}

func rekeyState(s sa.State, spi uint32) (sa.State, error) {
	s.SPI = spi
	for _, a := range []**sa.Algo{&s.AEAD, &s.Crypt, &s.Auth} {
		if *a == nil {
			continue
		}
		fresh := **a
		fresh.Key = make([]byte, len(fresh.Key))
		if _, err := rand.Read(fresh.Key); err != nil {
			return s, fmt.Errorf("drawing a rekeyed SA's key: %w", err)
		}
		*a = &fresh
	}
	return s, nil
}

// classify attributes every leader change and agent event to a kill or
// to none (spurious).
func (r *stabilityRun) classify() {
	if r.res.Start.IsZero() {
		return // the run never started
	}
	in := func(t time.Time, w killWindow) bool { return !t.Before(w.at) && !t.After(w.end) }
	for i := range r.res.Changes {
		ch := &r.res.Changes[i]
		ch.Kill = -1
		for k, w := range r.windows {
			if in(ch.At, w) {
				ch.Kill = k
				break
			}
		}
	}
	for _, e := range r.events.all() {
		if e.At.Before(r.res.Start) {
			continue // the first takeover, before the run
		}
		se := StabilityEvent{Event: e, Kill: -1}
		for k, w := range r.windows {
			var ok bool
			if e.Kind == "node.fenced" {
				// Only the killed node fencing is the kill's doing; a
				// survivor fencing is spurious.
				end := w.end
				if w.restarts.After(end) {
					end = w.restarts
				}
				ok = e.Node == w.node && !e.At.Before(w.at) && !e.At.After(end)
			} else {
				ok = in(e.At, w)
			}
			if ok {
				se.Kill = k
				break
			}
		}
		r.res.Events = append(r.res.Events, se)
	}
}

// eventLog keeps the agents' fences and takeovers.
type eventLog struct {
	mu     sync.Mutex // guards events
	events []agent.Event
}

func (l *eventLog) add(e agent.Event) {
	switch e.Kind {
	case "node.fenced", "failover.started", "failover.completed", "failover.failed":
	default:
		return
	}
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

func (l *eventLog) all() []agent.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Clone(l.events)
	slices.SortStableFunc(out, func(a, b agent.Event) int { return a.At.Compare(b.At) })
	return out
}

// raftWatch polls every running node's Raft state and records each change
// of the highest term any of them reports, and of that term's leader.
type raftWatch struct {
	c *cluster.Cluster

	mu       sync.Mutex // guards excluded
	excluded map[string]bool

	// The poll's own state: run's goroutine only, read by result after
	// run has returned.
	init       bool
	term       uint64
	leader     string
	open       int // index in changes of the last term change, or -1
	changes    []LeaderChange
	polls      int
	last       time.Time
	pollGapMax time.Duration
	// recent are the polls of the last stallWindow, oldest first.
	recent []pollSample
	// steal0 is the machine's steal time at the first poll; stealOK
	// whether the last poll could read it.
	steal0  time.Duration
	stealOK bool
}

// stallWindow is how far back a leader change looks for a stall.
const stallWindow = time.Second

// pollSample is one poll: its time, the machine's steal time then and
// the gap since the poll before.
type pollSample struct {
	at    time.Time
	steal time.Duration
	gap   time.Duration
}

func newRaftWatch(c *cluster.Cluster) *raftWatch {
	return &raftWatch{c: c, excluded: map[string]bool{}, open: -1}
}

// exclude stops (or resumes) reading node: a killed node's view is not
// the cluster's.
func (w *raftWatch) exclude(node string, out bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if out {
		w.excluded[node] = true
	} else {
		delete(w.excluded, node)
	}
}

func (w *raftWatch) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			w.poll(now)
		}
	}
}

func (w *raftWatch) poll(now time.Time) {
	w.mu.Lock()
	excluded := make(map[string]bool, len(w.excluded))
	for id := range w.excluded {
		excluded[id] = true
	}
	w.mu.Unlock()
	type sample struct {
		id, leader string
		term       uint64
		state      raft.RaftState
	}
	var samples []sample
	var term uint64
	var first string
	for _, n := range w.c.Nodes() {
		if excluded[n.Spec.ID] {
			continue
		}
		s := sample{id: n.Spec.ID, term: n.Store.Term(), state: n.Store.State()}
		s.leader, _ = n.Store.Leader()
		samples = append(samples, s)
		if s.term > term {
			term, first = s.term, s.id
		}
	}
	// The leader of the highest term: the node leading at it, else what a
	// follower at it has heard.
	leader := ""
	for _, s := range samples {
		if s.term == term && s.state == raft.Leader {
			leader = s.id
		}
	}
	for _, s := range samples {
		if leader == "" && s.term == term && s.leader != "" {
			leader = s.leader
		}
	}
	w.polls++
	var gap time.Duration
	if !w.last.IsZero() {
		gap = now.Sub(w.last)
		w.pollGapMax = max(w.pollGapMax, gap)
	}
	w.last = now
	steal, ok := machineSteal()
	w.recordStall(now, steal, ok, gap)
	if !w.init {
		w.init, w.term, w.leader = true, term, leader
		w.steal0 = steal
		return
	}
	switch {
	case term > w.term:
		w.changes = append(w.changes, LeaderChange{At: now, FromTerm: w.term, Term: term, PrevLeader: w.leader, Leader: leader, Node: first, Before: w.stallBefore()})
		w.open = len(w.changes) - 1
		w.term = term
		if leader != "" {
			w.leader = leader
		}
	case leader == "":
	case w.open >= 0 && w.changes[w.open].Term == term && w.changes[w.open].Leader == "":
		// The leader of a term already counted: the same change.
		w.changes[w.open].Leader = leader
		w.leader = leader
	case leader != w.leader:
		// A new leader without a new term: Raft allows none, but a change
		// it is.
		w.changes = append(w.changes, LeaderChange{At: now, FromTerm: term, Term: term, PrevLeader: w.leader, Leader: leader, Node: leader})
		w.leader = leader
	}
}

// recordStall keeps the poll in the window of recent ones.
func (w *raftWatch) recordStall(now time.Time, steal time.Duration, ok bool, gap time.Duration) {
	w.stealOK = ok
	w.recent = append(w.recent, pollSample{at: now, steal: steal, gap: gap})
	drop := 0
	for drop < len(w.recent)-1 && now.Sub(w.recent[drop].at) > stallWindow {
		drop++
	}
	w.recent = w.recent[drop:]
}

// stallBefore sums up the window before the current poll.
func (w *raftWatch) stallBefore() Stall {
	st := Stall{StealMS: -1}
	if len(w.recent) == 0 {
		return st
	}
	for _, p := range w.recent {
		st.GapMS = max(st.GapMS, MS(p.gap))
	}
	if w.stealOK {
		st.StealMS = MS(w.recent[len(w.recent)-1].steal - w.recent[0].steal)
	}
	return st
}

// result returns the changes seen, the number of polls, the longest gap
// between two and the machine's steal time over the run (-1: unknown).
func (w *raftWatch) result() ([]LeaderChange, int, time.Duration, time.Duration) {
	steal := time.Duration(-1)
	if w.stealOK && len(w.recent) > 0 {
		steal = w.recent[len(w.recent)-1].steal - w.steal0
	}
	return w.changes, w.polls, w.pollGapMax, steal
}

// busyLoops are the CPU-saturating child processes.
type busyLoops struct {
	cmds []*exec.Cmd
	done []chan struct{} // closed when the loop's Wait returned

	mu        sync.Mutex // guards the following fields
	stopping  bool
	exitNotes []string
}

// startBusyLoops starts n shell busy loops at normal priority. Each is
// waited for by a goroutine of its own, which notices one that ends
// early; stop kills them by PID and waits for them.
func startBusyLoops(n int) (*busyLoops, error) {
	b := &busyLoops{}
	for range n {
		cmd := exec.Command("/bin/sh", "-c", "while :; do :; done")
		cmd.SysProcAttr = busyLoopAttr()
		if err := cmd.Start(); err != nil {
			b.stop()
			return nil, fmt.Errorf("starting busy loop %d of %d: %w", len(b.cmds)+1, n, err)
		}
		done := make(chan struct{})
		b.cmds, b.done = append(b.cmds, cmd), append(b.done, done)
		go func() {
			defer close(done)
			err := cmd.Wait()
			b.mu.Lock()
			defer b.mu.Unlock()
			if !b.stopping {
				b.exitNotes = append(b.exitNotes, fmt.Sprintf("busy loop pid %d ended early: %v", cmd.Process.Pid, err))
			}
		}()
		if err := normalPriority(cmd.Process.Pid); err != nil {
			b.stop()
			return nil, fmt.Errorf("busy loop %d of %d: %w", len(b.cmds), n, err)
		}
	}
	return b, nil
}

func (b *busyLoops) pids() []int {
	var out []int
	for _, c := range b.cmds {
		out = append(out, c.Process.Pid)
	}
	return out
}

// exited returns the notes on loops that ended before stop.
func (b *busyLoops) exited() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.exitNotes)
}

// stop kills every loop by its PID and waits for it. Safe twice.
func (b *busyLoops) stop() {
	b.mu.Lock()
	b.stopping = true
	b.mu.Unlock()
	for i, c := range b.cmds {
		// An error means the process has ended already; Wait (in the
		// loop's goroutine) reaps it either way.
		_ = c.Process.Kill()
		<-b.done[i]
	}
}

// StabilitySummary is the JSON line of a stability run.
type StabilitySummary struct {
	Minutes               float64  `json:"minutes"`
	SpuriousLeaderChanges int      `json:"spurious_leader_changes"`
	SpuriousFences        int      `json:"spurious_fences"`
	Tunnels               int      `json:"tunnels"`
	LostSAs               int      `json:"lost_sas"`
	DetectP50MS           *float64 `json:"detect_ms_p50"`
	DetectP99MS           *float64 `json:"detect_ms_p99"`
	Kills                 int      `json:"kills"`
	BusyLoops             int      `json:"busy_loops"`
	GoMaxProcs            int      `json:"gomaxprocs"`
	Realtime              bool     `json:"realtime"`
	RealtimeDetail        string   `json:"realtime_detail"`
	JitterMS              float64  `json:"jitter_ms"`
	DelayMS               float64  `json:"delay_ms"`
	HeartbeatMS           float64  `json:"heartbeat_ms"`
	LeaseMS               float64  `json:"lease_ms"`
	SuspectAfterMS        float64  `json:"suspect_after_ms"`
	Nodes                 int      `json:"nodes"`
	LeaderChanges         int      `json:"leader_changes"`
	SpuriousTakeovers     int      `json:"spurious_takeovers"`
	FailedTakeovers       int      `json:"failed_takeovers"`
	TotalP50MS            *float64 `json:"takeover_ms_p50"`
	TotalP99MS            *float64 `json:"takeover_ms_p99"`
	UnreplicatedSAs       int      `json:"unreplicated_sas"`
	SpuriousDroppedSAs    int      `json:"spurious_dropped_sas"`
	RekeyedSAs            int      `json:"rekeyed_sas"`
	StormReplicatedMS     *float64 `json:"storm_replicated_ms"`
	StormSAs              *int     `json:"storm_sas"`
	ReconnectedSAs        int      `json:"reconnected_sas"`
	PollGapMaxMS          float64  `json:"poll_gap_max_ms"`
	StealMS               *float64 `json:"steal_ms"`
}

// Summary condenses the result into the JSON line's figures.
func (r *StabilityResult) Summary() StabilitySummary {
	o := r.Options
	s := StabilitySummary{
		Minutes: MS(r.Elapsed) / 60000, Tunnels: o.Tunnels, Kills: len(r.Kills), BusyLoops: r.BusyLoops, GoMaxProcs: runtime.GOMAXPROCS(0),
		Realtime: r.Realtime, RealtimeDetail: r.RealtimeDetail, JitterMS: MS(o.Jitter), DelayMS: MS(o.Delay),
		HeartbeatMS: MS(o.HeartbeatTimeout), LeaseMS: MS(r.Lease), SuspectAfterMS: MS(r.SuspectAfter), Nodes: o.Nodes,
		LeaderChanges: len(r.Changes), ReconnectedSAs: r.Reconnected, SpuriousDroppedSAs: r.DroppedBySpurious, RekeyedSAs: r.RekeyedSAs, PollGapMaxMS: MS(r.PollGapMax),
	}
	s.Minutes = float64(int64(s.Minutes*100+0.5)) / 100
	if r.Steal >= 0 {
		s.StealMS = ptrTo(MS(r.Steal))
	}
	for _, ch := range r.Changes {
		if ch.Kill < 0 {
			s.SpuriousLeaderChanges++
		}
	}
	for _, e := range r.Events {
		switch {
		case e.Kind == "node.fenced" && e.Kill < 0:
			s.SpuriousFences++
		case e.Kind == "failover.started" && e.Kill < 0:
			s.SpuriousTakeovers++
		case e.Kind == "failover.failed":
			s.FailedTakeovers++
		}
	}
	var detect, total Latencies
	for _, k := range r.Kills {
		s.LostSAs += k.Lost
		s.UnreplicatedSAs += k.Carried - k.Replicated
		detect = append(detect, k.Timings.Detect)
		total = append(total, k.Timings.Total)
	}
	if len(r.Kills) > 0 {
		s.DetectP50MS, s.DetectP99MS = ptrTo(MS(detect.Quantile(.5))), ptrTo(MS(detect.Quantile(.99)))
		s.TotalP50MS, s.TotalP99MS = ptrTo(MS(total.Quantile(.5))), ptrTo(MS(total.Quantile(.99)))
	}
	if r.StormReplicated > 0 {
		s.StormReplicatedMS, s.StormSAs = ptrTo(MS(r.StormReplicated)), ptrTo(r.StormSAs)
	}
	return s
}

func ptrTo[T any](v T) *T { return &v }

// maxListed bounds the spurious changes and events the report lists.
const maxListed = 20

// WriteReport writes the human table, then the summary as one JSON line,
// the last line.
func (r *StabilityResult) WriteReport(w io.Writer) error {
	o, s := r.Options, r.Summary()
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "== stability: %d nodes, %d tunnels, %.2f min on %s (%d CPUs, GOMAXPROCS %d, %s)\n",
		o.Nodes, o.Tunnels, s.Minutes, host, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Fprintf(&b, "   Raft: heartbeat/election %v, lease %v, suspect_after %v; writes on every link delayed %v + 0..%v\n",
		o.HeartbeatTimeout, r.Lease, r.SuspectAfter, o.Delay, o.Jitter)
	storm := "never replicated to every node before the first kill"
	if r.StormReplicated > 0 {
		storm = fmt.Sprintf("every node held the active's %d SAs after %v", r.StormSAs, r.StormReplicated.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "   load: %d busy loops at normal priority; storm of %d tunnels (%s); traffic on 2,000 SAs per node every 2 ms; rekey of %.0f%% every %v (%d rounds, %d SAs)\n",
		r.BusyLoops, o.Tunnels, storm, 100*o.RekeyFraction, o.RekeyEvery, r.Rekeys, r.RekeyedSAs)
	fmt.Fprintf(&b, "   realtime: %v (%s)\n", r.Realtime, r.RealtimeDetail)
	for _, note := range r.BusyExited {
		fmt.Fprintf(&b, "   warning: %s\n", note)
	}

	fmt.Fprintf(&b, "\n== kills (every %v; timings from the new active's committed state, ms)\n", o.KillEvery)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "#\tat\tkilled\tnew\tterm\tdetect\telect\tclaim\tinstall\tmove\ttotal\tobserved\tcarried\treplicated\tlost SAs\t")
	for i, k := range r.Kills {
		t := k.Timings
		fmt.Fprintf(tw, "%d\t%v\t%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\t\n", i+1, k.At.Round(time.Second),
			k.Killed, k.NewActive, k.Term, MS(t.Detect), MS(t.Elect), MS(t.Claim), MS(t.Install), MS(t.Move), MS(t.Total), MS(k.Observed),
			k.Carried, k.Replicated, k.Lost)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(&b, "\n== totals\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	row := func(name string, v any, note string) { fmt.Fprintf(tw, "  %s\t%v\t%s\n", name, v, note) }
	row("kills", s.Kills, "")
	row("detect p50 / p99 ms", quantiles(s.DetectP50MS, s.DetectP99MS), "new active: last contact with the old leader → candidate")
	row("takeover p50 / p99 ms", quantiles(s.TotalP50MS, s.TotalP99MS), "detect + elect + claim + install + move")
	row("lost SAs", s.LostSAs, "replicated SAs of a killed active missing from its successor's outbound SAs")
	row("unreplicated SAs", s.UnreplicatedSAs, "SAs a killed active carried that were not yet replicated (rekeyed just before)")
	row("leader changes", s.LeaderChanges, fmt.Sprintf("terms or leaders seen by a %v poll; within a kill's window (kill → committed + %v) they are the kill's", o.PollEvery, o.Settle))
	row("spurious leader changes", s.SpuriousLeaderChanges, "no kill caused them")
	row("spurious fences", s.SpuriousFences, "an active fenced itself with no kill of it")
	row("spurious takeovers", s.SpuriousTakeovers, "takeovers started outside every kill's window")
	row("failed takeovers", s.FailedTakeovers, "")
	row("SAs dropped by spurious takeovers", s.SpuriousDroppedSAs, "carried by the driver's active, missing on its unplanned successor")
	if o.Reconnect {
		row("tunnels re-established", s.ReconnectedSAs, "dropped tunnels brought back on the new active as fresh SAs, all at once")
	}
	row("polls / longest gap ms", fmt.Sprintf("%d / %.1f", r.Polls, s.PollGapMaxMS), "a long gap means the driver itself was starved")
	if s.StealMS != nil {
		row("machine steal ms", fmt.Sprintf("%.0f", *s.StealMS), "time the hypervisor kept the vCPUs from running, summed over them")
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	type listed struct {
		at   time.Time
		line string
	}
	var spurious []listed
	for _, ch := range r.Changes {
		if ch.Kill < 0 {
			spurious = append(spurious, listed{ch.At, fmt.Sprintf("leader change: term %d → %d, leader %q → %q (first seen on %s); the second before: %s",
				ch.FromTerm, ch.Term, ch.PrevLeader, ch.Leader, ch.Node, ch.Before)})
		}
	}
	for _, e := range r.Events {
		if e.Kill < 0 && e.Kind != "failover.completed" {
			line := fmt.Sprintf("%s on %s: %s", e.Kind, e.Node, e.Detail)
			if e.Term > 0 {
				line = fmt.Sprintf("%s on %s at term %d: %s", e.Kind, e.Node, e.Term, e.Detail)
			}
			if e.Err != nil {
				line += ": " + e.Err.Error()
			}
			spurious = append(spurious, listed{e.At, line})
		}
	}
	slices.SortStableFunc(spurious, func(a, b listed) int { return a.at.Compare(b.at) })
	if len(spurious) > 0 {
		fmt.Fprintf(&b, "\n== spurious, from the run's start (first %d of %d)\n", min(maxListed, len(spurious)), len(spurious))
		for _, l := range spurious[:min(maxListed, len(spurious))] {
			fmt.Fprintf(&b, "  %9v  %s\n", l.at.Sub(r.Start).Round(time.Millisecond), l.line)
		}
	}
	line, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encoding the summary: %w", err)
	}
	b.WriteString("\n")
	b.Write(line)
	b.WriteString("\n")
	_, err = io.WriteString(w, b.String())
	return err
}

func quantiles(p50, p99 *float64) string {
	if p50 == nil || p99 == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f / %.1f", *p50, *p99)
}
