package healthcheck

import (
	"context"
	"sync"
	"time"
)

// Clock is the time source of a Checker: intervals, probe timeouts and the
// timestamps of transitions all come from it, so tests can drive time
// without sleeping (see package healthcheck/clocktest).
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that fires once after d.
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer a Checker uses.
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it stopped
	// the timer before it fired.
	Stop() bool
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// NewTimer wraps time.NewTimer.
func (SystemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }

// WithTimeout returns a context that is cancelled after d on clk, with
// context.Cause reporting context.DeadlineExceeded. On the system clock it
// is context.WithTimeout, so probes also see a real deadline; on another
// clock the timeout fires when that clock reaches it.
func WithTimeout(ctx context.Context, clk Clock, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := clk.(SystemClock); ok {
		return context.WithTimeout(ctx, d)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	t := clk.NewTimer(d)
	stop := make(chan struct{})
	var once sync.Once
	go func() {
		select {
		case <-t.C():
			cancel(context.DeadlineExceeded)
		case <-stop:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
		}
	}()
	return ctx, func() {
		// Stop the timer here, not only in the goroutine: a manual clock
		// then never shows a dead timeout timer as pending.
		t.Stop()
		once.Do(func() { close(stop) })
		cancel(context.Canceled)
	}
}

// timedOut reports whether ctx ended because its timeout fired (on either
// kind of clock).
func timedOut(ctx context.Context) bool {
	return ctx.Err() != nil && context.Cause(ctx) == context.DeadlineExceeded
}
