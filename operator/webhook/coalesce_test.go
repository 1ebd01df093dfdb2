package webhook

import (
	"testing"
	"time"
)

// TestCoalescerBoundsAFlap: a cluster that produces an event every 500 ms
// for three minutes (360 events; the demo once sent 106 webhooks in 162 s)
// sends at most Limit+1 in any window, and summaries that account for
// every event held back; once it settles for a window, events flow again.
func TestCoalescerBoundsAFlap(t *testing.T) {
	const limit, window = 5, time.Minute
	c := newCoalescer(limit, window)
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	var sent []time.Time
	var summaries []*Event
	held, kinds := 0, []string{"failover.started", "failover.completed", "node.fenced"}
	for i := 0; i < 360; i++ {
		now := t0.Add(time.Duration(i) * 500 * time.Millisecond)
		e := Event{Kind: kinds[i%3], Node: "gw2", Term: uint64(2 + i/3), Reason: "leader_silent"}
		if e.Kind == "node.fenced" {
			e.Term = 0 // as a monitor's events come, without a term
		}
		send, s := c.admit(now, e)
		if s != nil {
			summaries = append(summaries, s)
			sent = append(sent, now)
		}
		if send {
			sent = append(sent, now)
		} else {
			held++
		}
	}
	end := t0.Add(180 * time.Second)
	if s := c.tick(end.Add(window)); s != nil {
		summaries = append(summaries, s)
		sent = append(sent, end.Add(window))
	}
	for i := range sent {
		n := 0
		for _, at := range sent[i:] {
			if at.Sub(sent[i]) < window {
				n++
			}
		}
		if n > limit+1 {
			t.Fatalf("%d deliveries within a minute from %s, want at most %d", n, sent[i].Sub(t0), limit+1)
		}
	}
	if len(summaries) < 3 {
		t.Fatalf("%d flapping summaries in three minutes of flapping", len(summaries))
	}
	total := 0
	for _, s := range summaries {
		if s.Kind != KindFlapping || s.Counts["failover.started"] == 0 || s.Reasons["leader_silent"] != s.Held {
			t.Errorf("summary %+v", s)
		}
		total += s.Held
	}
	if total != held {
		t.Errorf("summaries account for %d events, %d were held", total, held)
	}
	last := summaries[len(summaries)-1]
	if last.Term != 121 || last.Node != "gw2" {
		t.Errorf("last summary names %s at term %d, want the latest event's gw2 and the highest term, 121", last.Node, last.Term)
	}
	// Quiet for a window: the next event goes out at once.
	if send, _ := c.admit(end.Add(3*window), Event{Kind: "failover.started"}); !send {
		t.Error("an event after a quiet window was held back")
	}
}
