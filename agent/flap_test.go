package agent

import (
	"testing"
	"time"

	"github.com/handoffvpn/handoff/raftstore"
)

func TestFlapCountsUnplannedTakeoversInTheWindow(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	h := func(ago time.Duration, r raftstore.Reason) raftstore.HistoryEntry {
		return raftstore.HistoryEntry{ClaimedAt: now.Add(-ago), Reason: r}
	}
	drill := []raftstore.HistoryEntry{h(10*time.Minute, raftstore.ReasonLeaderSilent), h(4*time.Minute, raftstore.ReasonFirstElection),
		h(3*time.Minute, raftstore.ReasonDrain), h(2*time.Minute, raftstore.ReasonLeaderSilent), h(time.Minute, raftstore.ReasonTransfer)}
	if f := flapOf(drill, now); f.Flapping || f.Takeovers != 4 || f.Unplanned != 1 || !f.Since.Equal(now.Add(-4*time.Minute)) {
		t.Errorf("an operator's drill: %+v, want 4 takeovers, 1 unplanned, not flapping", f)
	}
	flap := append(drill, h(30*time.Second, raftstore.ReasonLeaseLost), h(10*time.Second, "leader elected"))
	f := flapOf(flap, now)
	if !f.Flapping || f.Unplanned != 3 || f.Reasons[raftstore.ReasonLeaseLost] != 1 || f.Reasons["leader elected"] != 1 || f.WindowMs != 300000 {
		t.Errorf("three unplanned takeovers in five minutes: %+v, want flapping", f)
	}
}
