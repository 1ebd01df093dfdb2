package bulk

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLaneBoundsWorkers runs more workers than seats and checks that no
// more than the seats ever ran at once, and that all of them finished.
func TestLaneBoundsWorkers(t *testing.T) {
	l := NewLane(2, time.Millisecond)
	var running, peak, done atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := l.Run(context.Background(), 200, func(int) error {
				n := running.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				time.Sleep(50 * time.Microsecond)
				running.Add(-1)
				return nil
			})
			if err != nil {
				t.Errorf("run: %v", err)
			}
			done.Add(1)
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > 2 {
		t.Errorf("%d workers ran at once in a lane of 2 seats", p)
	}
	if d := done.Load(); d != 8 {
		t.Errorf("%d of 8 workers finished", d)
	}
}

// TestUrgentWorkGoesFirst holds an ordinary worker in the lane and starts
// urgent work: the ordinary worker must step out at its next step and not
// run again until the urgent work is done.
func TestUrgentWorkGoesFirst(t *testing.T) {
	l := NewLane(1, time.Hour) // no slice expiry: only urgency makes it step out
	ctx := context.Background()
	w, err := l.Enter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var urgentSteps atomic.Int32
	release := make(chan struct{})
	finished := make(chan error, 1)
	go func() {
		finished <- l.RunUrgent(ctx, 3, func(i int) error {
			if i == 0 {
				close(release)
			}
			time.Sleep(5 * time.Millisecond)
			urgentSteps.Add(1)
			return nil
		})
	}()
	<-release
	if err := w.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if n := urgentSteps.Load(); n != 3 {
		t.Errorf("the ordinary worker went on after %d of 3 urgent steps", n)
	}
	if err := <-finished; err != nil {
		t.Fatal(err)
	}
	w.Leave()
	w.Leave() // safe twice
}

// TestPromptWorkDoesNotWaitForUrgentWork: the FSM's applies (Raft waits on
// them) run while a takeover's install is urgent; ordinary work waits.
func TestPromptWorkDoesNotWaitForUrgentWork(t *testing.T) {
	l := NewLane(2, time.Hour)
	ctx := context.Background()
	inUrgent, done := make(chan struct{}), make(chan struct{})
	finished := make(chan error, 1)
	go func() {
		finished <- l.RunUrgent(ctx, 1, func(int) error {
			close(inUrgent)
			<-done
			return nil
		})
	}()
	<-inUrgent
	// Bounded, so that prompt work made to wait fails here, not at the
	// test binary's timeout.
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	defer pcancel()
	w, err := l.EnterPrompt(pctx)
	if err != nil {
		close(done)
		t.Fatalf("prompt work while urgent work runs: %v", err)
	}
	if err := w.Step(ctx); err != nil {
		t.Fatal(err)
	}
	w.Leave()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := l.Enter(wctx); err == nil {
		t.Error("ordinary work entered while urgent work ran")
	}
	close(done)
	if err := <-finished; err != nil {
		t.Fatal(err)
	}
}

// TestLaneEndsWithContext: a worker waiting for a seat gives up when its
// context ends, naming what it waited for.
func TestLaneEndsWithContext(t *testing.T) {
	l := NewLane(1, time.Millisecond)
	held, err := l.Enter(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Leave()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Enter(ctx); err == nil {
		t.Fatal("entered a full lane")
	}
	var nilLane *Lane
	if err := nilLane.Run(context.Background(), 3, func(int) error { return nil }); err != nil {
		t.Fatalf("a nil lane runs everything at once: %v", err)
	}
}

func TestWorkersForLeaveACPU(t *testing.T) {
	for cpus, want := range map[int]int{1: 1, 2: 1, 4: 3, 16: 15} {
		if got := WorkersFor(cpus); got != want {
			t.Errorf("WorkersFor(%d) = %d, want %d", cpus, got, want)
		}
	}
}
