package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Defaults for a Spec's zero fields.
const (
	DefaultInterval = time.Second
	DefaultTimeout  = 500 * time.Millisecond
	DefaultRise     = 2
	DefaultFall     = 3
)

// Spec is one check with its schedule and hysteresis.
type Spec struct {
	Check Check
	// Interval between the starts of two runs (DefaultInterval if zero). A
	// run that takes longer delays the next one; runs never overlap.
	Interval time.Duration
	// Timeout of one run (DefaultTimeout if zero, capped at Interval).
	Timeout time.Duration
	// Rise is how many consecutive passes make the check healthy, Fall how
	// many consecutive failures make it unhealthy (DefaultRise/DefaultFall
	// if zero). A dead gateway is declared unhealthy within about
	// Fall × Interval + Timeout, a recovered one healthy within
	// Rise × Interval.
	Rise, Fall int
}

func (s Spec) withDefaults() (Spec, error) {
	if s.Check == nil {
		return s, errors.New("spec without a check")
	}
	if s.Check.Name() == "" {
		return s, errors.New("check without a name")
	}
	if s.Interval == 0 {
		s.Interval = DefaultInterval
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	if s.Timeout > s.Interval {
		s.Timeout = s.Interval
	}
	if s.Rise == 0 {
		s.Rise = DefaultRise
	}
	if s.Fall == 0 {
		s.Fall = DefaultFall
	}
	if s.Interval < 0 || s.Timeout < 0 || s.Rise < 0 || s.Fall < 0 {
		return s, fmt.Errorf("check %s: negative interval, timeout, rise or fall", s.Check.Name())
	}
	return s, nil
}

// Transition is a change of verdict. Check is the check's name, or "" for
// the gateway's overall verdict (healthy when every check is healthy,
// unhealthy when any is, unknown otherwise).
type Transition struct {
	Check    string
	From, To State
	At       time.Time
	// Err is the failure that completed the fall (To == StateUnhealthy),
	// for the overall verdict that of the check that fell.
	Err error
	// Streak is how many consecutive results led to the transition.
	Streak int
}

// IsOverall reports whether the transition is of the overall verdict.
func (t Transition) IsOverall() bool { return t.Check == "" }

// CheckStatus is the current state of one check.
type CheckStatus struct {
	Name  string
	State State
	// Passes and Failures are the current streak (one of them is zero).
	Passes, Failures int
	LastRun          time.Time
	LastTook         time.Duration
	LastErr          error
	Since            time.Time // when State was entered (zero if never)
}

// Status is a snapshot of a Checker.
type Status struct {
	State  State
	Checks []CheckStatus
}

// Healthy counts the healthy checks, a tie-breaker when ranking gateways.
func (s Status) Healthy() int {
	n := 0
	for _, c := range s.Checks {
		if c.State == StateHealthy {
			n++
		}
	}
	return n
}

// Option configures a Checker.
type Option func(*Checker)

// WithClock sets the clock (SystemClock by default).
func WithClock(c Clock) Option { return func(k *Checker) { k.clock = c } }

// WithLogger sets the logger (a discarding one by default).
func WithLogger(l *slog.Logger) Option { return func(k *Checker) { k.log = l } }

// WithNotify sets the function called with every transition, in order, one
// call at a time, from the Checker's goroutines. It must not block for long
// and must not call Close.
func WithNotify(f func(Transition)) Option { return func(k *Checker) { k.notify = f } }

// Checker runs checks on its own goroutines and keeps their verdicts.
type Checker struct {
	specs  []Spec
	clock  Clock
	log    *slog.Logger
	notify func(Transition)

	notifyMu sync.Mutex // held while computing and delivering transitions, so they arrive in order

	mu      sync.Mutex // guards the following fields
	checks  []CheckStatus
	overall State
	started bool
	closed  bool
	cancel  context.CancelFunc

	wg sync.WaitGroup
}

// New validates the specs (names must be unique) and returns a Checker that
// does nothing until Start.
func New(specs []Spec, opts ...Option) (*Checker, error) {
	if len(specs) == 0 {
		return nil, errors.New("creating health checker: no checks")
	}
	c := &Checker{clock: SystemClock{}, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(c)
	}
	seen := map[string]bool{}
	for _, s := range specs {
		s, err := s.withDefaults()
		if err != nil {
			return nil, fmt.Errorf("creating health checker: %w", err)
		}
		name := s.Check.Name()
		if seen[name] {
			return nil, fmt.Errorf("creating health checker: check %q listed twice", name)
		}
		seen[name] = true
		c.specs = append(c.specs, s)
		c.checks = append(c.checks, CheckStatus{Name: name})
	}
	return c, nil
}

// Start starts one goroutine per check; the first runs start at once.
func (c *Checker) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if c.started {
		return nil
	}
	c.started = true
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	for i := range c.specs {
		c.wg.Add(1)
		go c.loop(ctx, i)
	}
	return nil
}

// Close stops the checks and waits for their goroutines. It is safe to
// call twice and before Start.
func (c *Checker) Close() error {
	c.mu.Lock()
	c.closed = true
	cancel := c.cancel
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	c.wg.Wait()
	return nil
}

// Status returns a snapshot of every check's state and the overall one.
func (c *Checker) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Status{State: c.overall, Checks: append([]CheckStatus(nil), c.checks...)}
}

func (c *Checker) loop(ctx context.Context, i int) {
	defer c.wg.Done()
	spec := c.specs[i]
	for {
		start := c.clock.Now()
		err := c.runOnce(ctx, spec)
		if ctx.Err() != nil {
			// Closing cancels the run in flight: that is not a result.
			return
		}
		took := c.clock.Now().Sub(start)
		c.record(i, start, took, err)
		t := c.clock.NewTimer(spec.Interval - took)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

func (c *Checker) runOnce(ctx context.Context, spec Spec) (err error) {
	start := c.clock.Now()
	rctx, cancel := WithTimeout(ctx, c.clock, spec.Timeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: check %s: %v", ErrPanic, spec.Check.Name(), p)
		}
	}()
	err = spec.Check.Run(rctx)
	if ctx.Err() != nil {
		return err
	}
	switch {
	case err == nil && c.clock.Now().Sub(start) > spec.Timeout:
		// A check that ignored its context and passed late still
		// missed its deadline.
		return fmt.Errorf("%w after %v (the check ignored it)", ErrTimeout, spec.Timeout)
	case err != nil && timedOut(rctx) && !errors.Is(err, ErrTimeout):
		return fmt.Errorf("%w after %v: %w", ErrTimeout, spec.Timeout, err)
	}
	return err
}

// record folds one result into the check's streak and state, and delivers
// the transitions it causes.
func (c *Checker) record(i int, at time.Time, took time.Duration, err error) {
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()

	spec := c.specs[i]
	c.mu.Lock()
	st := &c.checks[i]
	st.LastRun, st.LastTook, st.LastErr = at, took, err
	from := st.State
	var streak int
	if err == nil {
		st.Passes++
		st.Failures = 0
		streak = st.Passes
		if st.State != StateHealthy && st.Passes >= spec.Rise {
			st.State = StateHealthy
		}
	} else {
		st.Failures++
		st.Passes = 0
		streak = st.Failures
		if st.State != StateUnhealthy && st.Failures >= spec.Fall {
			st.State = StateUnhealthy
		}
	}
	now := c.clock.Now()
	var out []Transition
	if st.State != from {
		st.Since = now
		out = append(out, Transition{Check: st.Name, From: from, To: st.State, At: now, Err: err, Streak: streak})
		overallFrom := c.overall
		c.overall = c.overallLocked()
		if c.overall != overallFrom {
			out = append(out, Transition{From: overallFrom, To: c.overall, At: now, Err: err, Streak: streak})
		}
	}
	c.mu.Unlock()

	if err != nil {
		c.log.Debug("health check failed", "check", spec.Check.Name(), "took", took, "err", err)
	}
	for _, t := range out {
		if t.To == StateUnhealthy {
			c.log.Warn("health transition", "check", t.Check, "from", t.From, "to", t.To, "streak", t.Streak, "err", t.Err)
		} else {
			c.log.Info("health transition", "check", t.Check, "from", t.From, "to", t.To, "streak", t.Streak)
		}
		if c.notify != nil {
			c.notify(t)
		}
	}
}

func (c *Checker) overallLocked() State {
	all := true
	for _, s := range c.checks {
		if s.State == StateUnhealthy {
			return StateUnhealthy
		}
		if s.State != StateHealthy {
			all = false
		}
	}
	if all {
		return StateHealthy
	}
	return StateUnknown
}
