package healthcheck_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/healthcheck"
	"github.com/handoffvpn/handoff/healthcheck/clocktest"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// scripted stands in for a real probe: each run returns the next scripted
// result (the last one repeats) and signals the run on ran.
type scripted struct {
	name    string
	mu      sync.Mutex
	results []error
	runs    int
	block   bool // wait for ctx instead of returning (a probe whose peer is silent)
}

func (s *scripted) Name() string { return s.name }

func (s *scripted) Run(ctx context.Context) error {
	s.mu.Lock()
	i := s.runs
	s.runs++
	block := s.block
	var r error
	if len(s.results) > 0 {
		r = s.results[min(i, len(s.results)-1)]
	}
	s.mu.Unlock()
	if block {
		<-ctx.Done()
		return fmt.Errorf("reading reply: %w", ctx.Err())
	}
	return r
}

func (s *scripted) setBlock(b bool) {
	s.mu.Lock()
	s.block = b
	s.mu.Unlock()
}

type harness struct {
	t     *testing.T
	clk   *clocktest.Clock
	c     *healthcheck.Checker
	trans chan healthcheck.Transition
}

func newHarness(t *testing.T, specs ...healthcheck.Spec) *harness {
	t.Helper()
	h := &harness{t: t, clk: clocktest.New(t0), trans: make(chan healthcheck.Transition, 100)}
	c, err := healthcheck.New(specs, healthcheck.WithClock(h.clk), healthcheck.WithNotify(func(tr healthcheck.Transition) {
		h.trans <- tr
	}))
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	t.Cleanup(func() { _ = c.Close() })
	return h
}

// step waits until the checker waits for a timer due at now+d and moves the
// clock there.
func (h *harness) step(d time.Duration) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.clk.WaitTimerDue(ctx, h.clk.Now().Add(d)); err != nil {
		h.t.Fatal(err)
	}
	h.clk.Advance(d)
}

func (h *harness) next() healthcheck.Transition {
	h.t.Helper()
	select {
	case tr := <-h.trans:
		return tr
	case <-time.After(5 * time.Second):
		h.t.Fatal("no transition")
	}
	return healthcheck.Transition{}
}

func (h *harness) none() {
	h.t.Helper()
	select {
	case tr := <-h.trans:
		h.t.Fatalf("unexpected transition %+v", tr)
	default:
	}
}

func TestRiseAndFall(t *testing.T) {
	boom := errors.New("boom")
	chk := &scripted{name: "ike", results: []error{
		nil, nil, // rise 2: healthy at run 2
		boom, boom, nil, // two failures, then a pass resets the streak
		boom, boom, boom, // fall 3: unhealthy at run 8
		nil, // one pass does not rise
		boom,
		nil, nil, // healthy again at run 12
	}}
	h := newHarness(t, healthcheck.Spec{Check: chk, Interval: time.Second, Timeout: 300 * time.Millisecond, Rise: 2, Fall: 3})
	if err := h.c.Start(); err != nil {
		t.Fatal(err)
	}
	h.step(time.Second) // run 2
	tr := h.next()
	if tr.Check != "ike" || tr.From != healthcheck.StateUnknown || tr.To != healthcheck.StateHealthy || tr.Streak != 2 || !tr.At.Equal(t0.Add(time.Second)) {
		t.Fatalf("first transition %+v", tr)
	}
	if o := h.next(); !o.IsOverall() || o.To != healthcheck.StateHealthy {
		t.Fatalf("overall transition %+v", o)
	}
	for range 5 { // runs 3..7
		h.step(time.Second)
	}
	h.none()
	h.step(time.Second) // run 8
	tr = h.next()
	if tr.To != healthcheck.StateUnhealthy || tr.Streak != 3 || !errors.Is(tr.Err, boom) || !tr.At.Equal(t0.Add(7*time.Second)) {
		t.Fatalf("fall transition %+v", tr)
	}
	if o := h.next(); !o.IsOverall() || o.To != healthcheck.StateUnhealthy || !errors.Is(o.Err, boom) {
		t.Fatalf("overall fall %+v", o)
	}
	h.step(time.Second) // run 9: pass
	h.step(time.Second) // run 10: fail
	h.step(time.Second) // run 11: pass
	h.none()
	h.step(time.Second) // run 12: pass
	if tr := h.next(); tr.To != healthcheck.StateHealthy || tr.From != healthcheck.StateUnhealthy {
		t.Fatalf("rise transition %+v", tr)
	}
	st := h.c.Status()
	if st.State != healthcheck.StateHealthy || st.Checks[0].Passes != 2 || st.Healthy() != 1 {
		t.Fatalf("status %+v", st)
	}
}

func TestTimeoutCountsAsFailure(t *testing.T) {
	chk := &scripted{name: "silent", block: true}
	h := newHarness(t, healthcheck.Spec{Check: chk, Interval: time.Second, Timeout: 400 * time.Millisecond, Rise: 1, Fall: 2})
	if err := h.c.Start(); err != nil {
		t.Fatal(err)
	}
	h.step(400 * time.Millisecond) // run 1 times out at 0.4 s
	h.step(600 * time.Millisecond) // run 2 starts at 1 s
	h.step(400 * time.Millisecond) // and times out at 1.4 s
	tr := h.next()
	if tr.To != healthcheck.StateUnhealthy || !errors.Is(tr.Err, healthcheck.ErrTimeout) || !errors.Is(tr.Err, context.Canceled) {
		t.Fatalf("transition %+v (err %v)", tr, tr.Err)
	}
	if !tr.At.Equal(t0.Add(1400 * time.Millisecond)) {
		t.Fatalf("fell at %v, want 1.4 s after start", tr.At.Sub(t0))
	}
	if o := h.next(); !o.IsOverall() || o.To != healthcheck.StateUnhealthy {
		t.Fatalf("overall %+v", o)
	}
	if st := h.c.Status().Checks[0]; st.LastTook != 400*time.Millisecond {
		t.Fatalf("last run took %v", st.LastTook)
	}
	// The probe answers again: one pass (rise 1) recovers.
	chk.setBlock(false)
	h.step(600 * time.Millisecond)
	if tr := h.next(); tr.To != healthcheck.StateHealthy {
		t.Fatalf("recovery %+v", tr)
	}
}

// A check that ignores its context and passes after its timeout still
// missed the deadline.
func TestLatePassIsTimeout(t *testing.T) {
	clk := clocktest.New(t0)
	release := make(chan struct{})
	late := healthcheck.CheckFunc("late", func(ctx context.Context) error {
		<-release
		return nil
	})
	trans := make(chan healthcheck.Transition, 10)
	c, err := healthcheck.New([]healthcheck.Spec{{Check: late, Interval: time.Second, Timeout: 100 * time.Millisecond, Rise: 1, Fall: 1}},
		healthcheck.WithClock(clk), healthcheck.WithNotify(func(tr healthcheck.Transition) { trans <- tr }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := clk.WaitTimerDue(ctx, t0.Add(100*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(200 * time.Millisecond)
	close(release)
	select {
	case tr := <-trans:
		if tr.To != healthcheck.StateUnhealthy || !errors.Is(tr.Err, healthcheck.ErrTimeout) {
			t.Fatalf("transition %+v", tr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no transition")
	}
}

func TestOverallNeedsEveryCheck(t *testing.T) {
	boom := errors.New("vici: connection refused")
	a := &scripted{name: "a"}
	b := &scripted{name: "b", results: []error{nil, boom}}
	h := newHarness(t,
		healthcheck.Spec{Check: a, Interval: time.Second, Timeout: 100 * time.Millisecond, Rise: 1, Fall: 1},
		healthcheck.Spec{Check: b, Interval: 2 * time.Second, Timeout: 100 * time.Millisecond, Rise: 1, Fall: 1},
	)
	if err := h.c.Start(); err != nil {
		t.Fatal(err)
	}
	// Both pass once: two check transitions, then the overall one after
	// the second.
	got := []healthcheck.Transition{h.next(), h.next(), h.next()}
	if !got[2].IsOverall() || got[2].To != healthcheck.StateHealthy || got[0].IsOverall() || got[1].IsOverall() {
		t.Fatalf("transitions %+v", got)
	}
	// At 2 s both run again; b fails and takes the gateway down.
	h.step(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.clk.WaitTimerDue(ctx, t0.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(time.Second)
	tr := h.next()
	if tr.Check != "b" || tr.To != healthcheck.StateUnhealthy {
		t.Fatalf("b transition %+v", tr)
	}
	if o := h.next(); !o.IsOverall() || o.To != healthcheck.StateUnhealthy || !errors.Is(o.Err, boom) {
		t.Fatalf("overall %+v", o)
	}
	st := h.c.Status()
	if st.State != healthcheck.StateUnhealthy || st.Healthy() != 1 {
		t.Fatalf("status %+v", st)
	}
}

func TestPanicIsFailure(t *testing.T) {
	p := healthcheck.CheckFunc("panicky", func(context.Context) error { panic("nil map") })
	h := newHarness(t, healthcheck.Spec{Check: p, Rise: 1, Fall: 1})
	if err := h.c.Start(); err != nil {
		t.Fatal(err)
	}
	if tr := h.next(); tr.To != healthcheck.StateUnhealthy || !errors.Is(tr.Err, healthcheck.ErrPanic) {
		t.Fatalf("transition %+v", tr)
	}
}

func TestCloseStopsBlockedCheck(t *testing.T) {
	chk := &scripted{name: "silent", block: true}
	h := newHarness(t, healthcheck.Spec{Check: chk, Interval: time.Hour, Timeout: time.Hour})
	if err := h.c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := h.c.Start(); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = h.c.Close()
		_ = h.c.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return while a check was blocked")
	}
	// A run cancelled by Close is no result.
	if st := h.c.Status().Checks[0]; !st.LastRun.IsZero() {
		t.Fatalf("cancelled run recorded: %+v", st)
	}
	if err := h.c.Start(); !errors.Is(err, healthcheck.ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
}

func TestCloseBeforeStart(t *testing.T) {
	c, err := healthcheck.New([]healthcheck.Spec{{Check: &scripted{name: "x"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestNewValidates(t *testing.T) {
	x := &scripted{name: "x"}
	for _, tc := range []struct {
		name  string
		specs []healthcheck.Spec
	}{
		{"none", nil},
		{"nil check", []healthcheck.Spec{{}}},
		{"unnamed", []healthcheck.Spec{{Check: &scripted{}}}},
		{"duplicate", []healthcheck.Spec{{Check: x}, {Check: x}}},
		{"negative", []healthcheck.Spec{{Check: x, Fall: -1}}},
	} {
		if _, err := healthcheck.New(tc.specs); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

// The timeout is capped at the interval, so runs never pile up.
func TestTimeoutCappedAtInterval(t *testing.T) {
	chk := &scripted{name: "silent", block: true}
	h := newHarness(t, healthcheck.Spec{Check: chk, Interval: 200 * time.Millisecond, Timeout: time.Hour, Rise: 1, Fall: 1})
	if err := h.c.Start(); err != nil {
		t.Fatal(err)
	}
	h.step(200 * time.Millisecond)
	if tr := h.next(); !errors.Is(tr.Err, healthcheck.ErrTimeout) {
		t.Fatalf("transition %+v", tr)
	}
}

func TestWithTimeoutSystemClock(t *testing.T) {
	ctx, cancel := healthcheck.WithTimeout(context.Background(), healthcheck.SystemClock{}, time.Millisecond)
	defer cancel()
	if _, ok := ctx.Deadline(); !ok {
		t.Fatal("system clock timeout has no deadline")
	}
	<-ctx.Done()
	if context.Cause(ctx) != context.DeadlineExceeded {
		t.Fatalf("cause %v", context.Cause(ctx))
	}
}
