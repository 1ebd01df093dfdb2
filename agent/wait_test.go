package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitUntil(t *testing.T) {
	var calls atomic.Int32
	if !waitUntil(context.Background(), time.Second, func() bool { return calls.Add(1) >= 3 }) {
		t.Error("waitUntil gave up on a condition that came true on the third check")
	}
	start := time.Now()
	if waitUntil(context.Background(), 60*time.Millisecond, func() bool { return false }) {
		t.Error("waitUntil reported a condition that never held")
	}
	if d := time.Since(start); d < 60*time.Millisecond || d > time.Second {
		t.Errorf("waitUntil with a 60 ms bound returned after %v", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if waitUntil(ctx, time.Minute, func() bool { return false }) {
		t.Error("waitUntil reported a condition that never held, with its context ended")
	}
}
