// Package notify runs an operator's commands when this node changes state,
// the way keepalived runs notify_master and notify_backup: on becoming
// active (a takeover committed), standby (a healthy standby behind another
// active), fenced (it stopped carrying the tunnels) or faulty (a takeover
// failed, or its own checks did).
//
// A command never runs in a takeover's path: Event and Observe only note
// the transition and return, and one goroutine runs the commands after the
// fact, one at a time, in the order of the transitions. Transitions that
// arrive while a command runs wait in a single slot, the latest replacing
// the earlier: after a flap the command that runs is the one for the state
// the node is in, not a replay of every state it passed through. Each
// command runs with a timeout (it and its process group are killed past
// it), an environment of its own (HANDOFF_NOTIFY_STATE, HANDOFF_NODE, ...;
// none of the agent's secrets), and its exit status and the start of its
// output are logged.
package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/raftstore"
)

// States a command can be given for.
const (
	Active  = "active"
	Standby = "standby"
	Fenced  = "fenced"
	Faulty  = "faulty"
)

// StatusSource is where the notifier sees that a fenced or faulty node has
// become a standby again (*agent.Agent).
type StatusSource interface {
	OperatorStatus() agent.Status
}

// Config configures a Notifier.
type Config struct {
	// Node is this node's ID: only its own events are transitions.
	Node string
	// Commands maps a state to the argument vector run on entering it
	// (no shell). States without a command are still tracked.
	Commands map[string][]string
	// Timeout bounds one command (default 30s).
	Timeout time.Duration
	// MaxOutput bounds the bytes of a command's output (stdout and stderr
	// together) that are logged (default 4 KiB).
	MaxOutput int
	// Status, if set (or once Attach sets it), is read every Interval
	// (default 1s) while the node is fenced, faulty or just started, to
	// see it become a standby.
	Status   StatusSource
	Interval time.Duration
	Logger   *slog.Logger
}

// Transition is one change of this node's state.
type Transition struct {
	State    string
	Previous string // "" for the first since start
	Term     uint64
	Reason   string
	At       time.Time
}

// Notifier runs the commands. Event and Observe never block.
type Notifier struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex  // guards state, pending and status
	state   string      // the state of the latest transition
	pending *Transition // the next to run, if any
	status  StatusSource
	wake    chan struct{}

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// New checks cfg and starts the goroutine that runs the commands; Close
// stops it.
func New(cfg Config) (*Notifier, error) {
	if cfg.Node == "" {
		return nil, errors.New("notify: node ID is required")
	}
	for state, argv := range cfg.Commands {
		switch state {
		case Active, Standby, Fenced, Faulty:
		default:
			return nil, fmt.Errorf("notify: %q is not active, standby, fenced or faulty", state)
		}
		if len(argv) == 0 || argv[0] == "" {
			return nil, fmt.Errorf("notify: the %s command is empty", state)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = 4 << 10
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Notifier{cfg: cfg, log: cfg.Logger.With("component", "notify"), status: cfg.Status, wake: make(chan struct{}, 1),
		cancel: cancel, done: make(chan struct{})}
	go n.run(ctx)
	return n, nil
}

// Attach sets the status source: the agent, which is built after its
// event sink, and so after the notifier.
func (n *Notifier) Attach(src StatusSource) {
	n.mu.Lock()
	n.status = src
	n.mu.Unlock()
}

// Close stops the notifier; a command still running is killed. Safe twice.
func (n *Notifier) Close() {
	n.once.Do(func() {
		n.cancel()
		<-n.done
	})
}

// Event takes one of the agent's events (agent.WithEvents): events about
// this node that change its state become transitions.
func (n *Notifier) Event(e agent.Event) {
	if e.Node != n.cfg.Node {
		return
	}
	state := ""
	switch e.Kind {
	case "failover.completed":
		state = Active
	case "node.fenced":
		state = Fenced
	case "failover.failed", "node.unhealthy":
		state = Faulty
	}
	if state == "" {
		return
	}
	reason := e.Detail
	if e.Err != nil {
		reason += ": " + e.Err.Error()
	}
	n.enter(Transition{State: state, Term: e.Term, Reason: e.Kind + " " + reason, At: e.At}, nil)
}

// Observe takes a status snapshot: a node that is not carrying the
// tunnels, while another node is active and the cluster sees this one
// healthy, is a standby.
func (n *Notifier) Observe(st agent.Status) {
	if st.Node != n.cfg.Node || st.Role == raftstore.RoleWitness || st.Carrying || st.Active == "" || st.Active == n.cfg.Node {
		return
	}
	for _, m := range st.Members {
		if m.ID == n.cfg.Node && !m.Healthy {
			return
		}
	}
	// Active ends only through this node's own events (its fence): a
	// snapshot taken before the fence must not make it a standby early.
	notActive := func(current string) bool { return current != Active }
	n.enter(Transition{State: Standby, Term: st.Term, Reason: st.Active + " is active", At: time.Now()}, notActive)
}

// enter records a transition and hands it to the runner, replacing one
// that has not started yet. A transition to the state the node is already
// in is none, and so is one that allow, if set, refuses from the current
// state (checked under the same lock as the change).
func (n *Notifier) enter(t Transition, allow func(current string) bool) {
	n.mu.Lock()
	if t.State == n.state || allow != nil && !allow(n.state) {
		n.mu.Unlock()
		return
	}
	t.Previous = n.state
	n.state = t.State
	replaced := n.pending
	if replaced != nil {
		// The command that runs sees where the node was when the last
		// command ran, not the state it passed through unnoticed.
		t.Previous = replaced.Previous
	}
	n.pending = &t
	n.mu.Unlock()
	if replaced != nil {
		n.log.Info("notify: transition coalesced", "dropped", replaced.State, "for", t.State)
	}
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *Notifier) run(ctx context.Context) {
	defer close(n.done)
	tick := time.NewTicker(n.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
		case <-tick.C:
			n.mu.Lock()
			src, watch := n.status, n.state != Active && n.state != Standby
			n.mu.Unlock()
			if src != nil && watch {
				n.Observe(src.OperatorStatus())
			}
			continue
		}
		n.mu.Lock()
		t := n.pending
		n.pending = nil
		n.mu.Unlock()
		if t != nil {
			n.runCommand(ctx, *t)
		}
	}
}

// runCommand runs the command of t's state, if there is one, to its end or
// its timeout, and logs how it ended.
func (n *Notifier) runCommand(ctx context.Context, t Transition) {
	argv, ok := n.cfg.Commands[t.State]
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HANDOFF_NOTIFY_STATE=" + t.State,
		"HANDOFF_NOTIFY_PREVIOUS=" + t.Previous,
		"HANDOFF_NODE=" + n.cfg.Node,
		"HANDOFF_TERM=" + strconv.FormatUint(t.Term, 10),
		"HANDOFF_REASON=" + t.Reason,
		"HANDOFF_NOTIFY_AT=" + t.At.UTC().Format(time.RFC3339Nano),
	}
	out := &boundedBuffer{max: n.cfg.MaxOutput}
	cmd.Stdout, cmd.Stderr = out, out
	killGroup(cmd)
	// A command that leaves a child holding its output open would keep
	// Wait from returning; past this the pipes are closed anyway.
	cmd.WaitDelay = time.Second
	log := n.log.With("state", t.State, "previous", t.Previous, "term", t.Term, "command", argv[0])
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	attrs := []any{"took", took.Round(time.Millisecond), "output", out.String()}
	switch {
	case err == nil:
		log.Info("notify command done", append(attrs, "exit", 0)...)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		log.Warn("notify command timed out and was killed", append(attrs, "timeout", n.cfg.Timeout)...)
	case ctx.Err() != nil:
		log.Warn("notify command killed: the agent is stopping", attrs...)
	default:
		code := -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		log.Warn("notify command failed", append(attrs, "exit", code, "err", err)...)
	}
}

// boundedBuffer keeps the first max bytes written to it and counts the rest.
type boundedBuffer struct {
	mu      sync.Mutex // guards the fields: stdout and stderr write from two goroutines
	max     int
	buf     []byte
	dropped int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := min(len(p), b.max-len(b.buf))
	b.buf = append(b.buf, p[:keep]...)
	b.dropped += len(p) - keep
	return len(p), nil
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped > 0 {
		return fmt.Sprintf("%s… (%d more bytes not logged)", b.buf, b.dropped)
	}
	return string(b.buf)
}
