// Package bulk keeps a node's bulk work from starving the work that must
// stay prompt.
//
// A node's latency-critical work is small and networked: Raft's
// heartbeats and their answers, the leader's lease check, the failure
// detector. Its bulk work is large and CPU-bound: sealing and hashing the
// SA set, opening and decoding it at a takeover, scanning replay counters.
// Go schedules goroutines, not priorities: when every P runs bulk work, a
// goroutine whose socket became readable waits until the scheduler next
// polls the network (the runtime's monitor does so only every ~10 ms) and
// then behind the run queue. Under a 100,000-SA takeover that was enough
// for the leader to miss a 50 ms lease and fence itself: the takeover's
// own work caused the next failover.
//
// A Lane admits at most a fixed number of bulk workers at a time (by
// default one fewer than GOMAXPROCS, at least one), so one P is always
// left to poll the network and run what it wakes; and a worker that has
// run for a time slice steps out and queues again, so workers take turns.
// This is back-pressure, not a rate limit: with nothing latency-critical
// to do, bulk work still uses every P it is given.
package bulk

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
)

// DefaultSlice is how long a worker runs before it steps out of the lane.
const DefaultSlice = 2 * time.Millisecond

// Lane admits a bounded number of bulk workers. The zero value is not
// usable; a nil *Lane admits everyone at once (no pacing).
type Lane struct {
	seats chan struct{}
	slice time.Duration
	// urgent counts urgent workers running (see RunUrgent): while there is
	// one, ordinary workers step out and wait.
	urgent atomic.Int32
}

// WorkersFor is how many bulk workers a lane should admit on cpus CPUs:
// one fewer, so that a CPU is left for the network, and at least one.
func WorkersFor(cpus int) int { return max(1, cpus-1) }

// NewLane returns a lane of workers seats whose workers step out after
// slice. workers < 1 means WorkersFor the CPUs the runtime runs on
// (GOMAXPROCS, or the CPU count when GOMAXPROCS is higher: the agent
// oversubscribes its Ps, see internal/gotune); slice ≤ 0 means
// DefaultSlice.
func NewLane(workers int, slice time.Duration) *Lane {
	if workers < 1 {
		workers = WorkersFor(min(runtime.GOMAXPROCS(0), runtime.NumCPU()))
	}
	if slice <= 0 {
		slice = DefaultSlice
	}
	return &Lane{seats: make(chan struct{}, workers), slice: slice}
}

// Worker is one piece of bulk work in a lane. Not safe for concurrent use.
type Worker struct {
	lane  *Lane
	since time.Time
	held  bool
	// prompt: Raft waits on this work, so it never waits for urgent
	// work (see EnterPrompt).
	prompt bool
}

// Enter waits for a seat in the lane. The worker must Leave when done.
func (l *Lane) Enter(ctx context.Context) (*Worker, error) { return l.enter(ctx, false) }

// EnterPrompt is Enter for work that Raft itself waits on: applying
// committed entries. It takes a seat like any worker, so it still leaves a
// P to the network, but it does not wait for urgent work. Raft hands
// committed entries to the FSM on the path that answers the leader's
// heartbeats and blocks there once the FSM falls behind, so an FSM parked
// behind a takeover's install stops its node answering: in the in-process
// demo at 100,000 SAs a new leader lost its lease to the follower whose
// applies waited for that leader's own install.
func (l *Lane) EnterPrompt(ctx context.Context) (*Worker, error) { return l.enter(ctx, true) }

func (l *Lane) enter(ctx context.Context, prompt bool) (*Worker, error) {
	w := &Worker{lane: l, prompt: prompt}
	if err := w.take(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Worker) take(ctx context.Context) error {
	if w.lane == nil {
		w.held = true
		return ctx.Err()
	}
	if !w.prompt {
		if err := w.lane.waitUrgent(ctx); err != nil {
			return err
		}
	}
	select {
	case w.lane.seats <- struct{}{}:
		w.held, w.since = true, time.Now()
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for a bulk work seat: %w", ctx.Err())
	}
}

// Step marks a unit of work done. Once the worker has held its seat for a
// slice it steps out, lets the scheduler run what is waiting, and queues
// for a seat again. It returns ctx's error when ctx ended, so loops can
// stop there.
func (w *Worker) Step(ctx context.Context) error {
	if w.lane == nil {
		return ctx.Err()
	}
	if time.Since(w.since) < w.lane.slice && (w.prompt || w.lane.urgent.Load() == 0) {
		return nil
	}
	w.release()
	runtime.Gosched()
	return w.take(ctx)
}

// Leave gives the seat back. Safe twice.
func (w *Worker) Leave() {
	if w != nil && w.lane != nil {
		w.release()
	}
}

func (w *Worker) release() {
	if w.held {
		<-w.lane.seats
		w.held = false
	}
}

// waitUrgent waits while an urgent worker runs.
func (l *Lane) waitUrgent(ctx context.Context) error {
	for l.urgent.Load() > 0 {
		t := time.NewTimer(time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for urgent work to finish: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// RunUrgent runs fn(i) for i in [0, n) ahead of every ordinary worker: it
// takes no seat, and while it runs the ordinary workers step out at their
// next Step and wait. It still yields the scheduler every slice, so it
// occupies one P and leaves the others to Raft. A takeover's install is
// urgent: queued behind standby staging and the stand-in's traffic in the
// bench, new leaders lost their lease waiting for a seat.
func (l *Lane) RunUrgent(ctx context.Context, n int, fn func(i int) error) error {
	if n == 0 {
		return ctx.Err()
	}
	if l != nil {
		l.urgent.Add(1)
		defer l.urgent.Add(-1)
	}
	slice := DefaultSlice
	if l != nil {
		slice = l.slice
	}
	since := time.Now()
	for i := range n {
		if err := fn(i); err != nil {
			return err
		}
		if time.Since(since) >= slice {
			if err := ctx.Err(); err != nil {
				return err
			}
			runtime.Gosched()
			since = time.Now()
		}
	}
	return ctx.Err()
}

// Run runs fn(i) for i in [0, n) as one worker of l, stepping after each.
// It stops at the first error fn returns, or when ctx ends.
func (l *Lane) Run(ctx context.Context, n int, fn func(i int) error) error {
	if n == 0 {
		return ctx.Err()
	}
	w, err := l.Enter(ctx)
	if err != nil {
		return err
	}
	defer w.Leave()
	for i := range n {
		if err := fn(i); err != nil {
			return err
		}
		if err := w.Step(ctx); err != nil {
			return err
		}
	}
	return nil
}
