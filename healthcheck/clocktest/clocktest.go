// Package clocktest provides a manual healthcheck.Clock for tests: it
// stands in for the wall clock, and time moves only when the test calls
// Advance, so tests of intervals, timeouts and hysteresis never sleep.
package clocktest

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/healthcheck"
)

// Clock is a manual clock. The zero value is not usable; use New.
type Clock struct {
	mu      sync.Mutex // guards the following fields
	now     time.Time
	timers  []*timer
	changed chan struct{} // closed and replaced whenever timers change
}

var _ healthcheck.Clock = (*Clock)(nil)

// New returns a clock set to start.
func New(start time.Time) *Clock {
	return &Clock{now: start, changed: make(chan struct{})}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires when Advance moves the clock to or
// past now+d. A timer with d <= 0 fires at once.
func (c *Clock) NewTimer(d time.Duration) healthcheck.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &timer{clock: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		t.fired = true
		return t
	}
	c.timers = append(c.timers, t)
	c.notifyLocked()
	return t
}

func (c *Clock) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Advance moves the clock forward by d, firing every timer that falls due,
// in order of their due times.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	end := c.now.Add(d)
	sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(end) {
			t.fired = true
			t.ch <- t.at
			continue
		}
		kept = append(kept, t)
	}
	c.timers = kept
	c.now = end
	c.notifyLocked()
}

// Pending returns how many timers are waiting to fire.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// WaitTimerDue blocks until a timer due exactly at `at` is waiting or ctx
// ends. Tests use it to know that the code under test has gone back to
// waiting (for example for its next interval) before they advance the clock.
func (c *Clock) WaitTimerDue(ctx context.Context, at time.Time) error {
	for {
		c.mu.Lock()
		found := false
		for _, t := range c.timers {
			if t.at.Equal(at) {
				found = true
				break
			}
		}
		ch := c.changed
		c.mu.Unlock()
		if found {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for a timer due at %v: %w", at, ctx.Err())
		}
	}
}

type timer struct {
	clock *Clock
	at    time.Time
	ch    chan time.Time
	fired bool // guarded by clock.mu
}

func (t *timer) C() <-chan time.Time { return t.ch }

func (t *timer) Stop() bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.fired {
		return false
	}
	for i, o := range c.timers {
		if o == t {
			c.timers = append(c.timers[:i], c.timers[i+1:]...)
			c.notifyLocked()
			return true
		}
	}
	return false
}
