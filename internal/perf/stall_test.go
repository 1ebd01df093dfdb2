package perf

import (
	"testing"
	"time"
)

// The stall a leader change reports covers the second before it: steal
// and gaps older than that are not its.
func TestStallBeforeCoversTheLastSecond(t *testing.T) {
	w := &raftWatch{}
	ms := time.Millisecond
	at, steal := time.Unix(1000, 0), time.Duration(0)
	poll := func(gap, stolen time.Duration) {
		at, steal = at.Add(gap), steal+stolen
		w.recordStall(at, steal, true, gap)
	}
	for range 10 {
		poll(10*ms, 0)
	}
	poll(400*ms, 300*ms) // an old stall
	for range 100 {
		poll(10*ms, 0)
	}
	poll(130*ms, 120*ms) // the stall within the last second
	for range 50 {
		poll(10*ms, 0)
	}
	got := w.stallBefore()
	if got.StealMS != 120 || got.GapMS != 130 {
		t.Fatalf("stall before = %+v, want 120 ms of steal and a 130 ms gap (only the last second's)", got)
	}
	if s := got.String(); s != "machine steal 120 ms, longest poll gap 130 ms" {
		t.Fatalf("String() = %q", s)
	}
	w.recordStall(at.Add(10*ms), 0, false, 10*ms)
	if got := w.stallBefore(); got.StealMS != -1 || got.String() != "steal unknown, longest poll gap 130 ms" {
		t.Fatalf("with the steal unreadable: %+v %q", got, got.String())
	}
}
