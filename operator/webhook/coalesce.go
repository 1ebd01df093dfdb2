package webhook

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// KindFlapping is the summary a notifier sends instead of the events it
// held back: the cluster produced more events than Config.Limit in one
// window (a flapping cluster once sent 106 webhooks in 162 s, each one
// paging somebody, none saying why).
const KindFlapping = "cluster.flapping"

// Coalescing defaults: ten events a minute let two complete failovers
// through (each is a handful of events per node) before holding back.
const (
	DefaultLimit  = 10
	DefaultWindow = time.Minute
)

// coalescer decides which events go out. Windows of Window each start at
// the first event after a quiet spell. In a window the first Limit events
// go out; the rest are held and counted, and when the window ends one
// summary (KindFlapping) goes out in their place. After a window that held
// events the next one sends nothing but its summary, and so on, until a
// window passes without any event: a flapping cluster costs its receiver
// at most Limit+1 deliveries in its first window and one per window
// after. Not safe for concurrent use.
type coalescer struct {
	limit  int
	window time.Duration

	start    time.Time // of the current window; zero when none is open
	sent     int
	flapping bool // the previous window held events

	held     int
	kinds    map[string]int
	reasons  map[string]int
	minTerm  uint64
	maxTerm  uint64
	latest   Event
	heldFrom time.Time
}

func newCoalescer(limit int, window time.Duration) *coalescer {
	return &coalescer{limit: limit, window: window, kinds: map[string]int{}, reasons: map[string]int{}}
}

// admit says whether e, arriving at now, goes out, and returns the summary
// of a window that ended before it, if one is due (to be sent first).
func (c *coalescer) admit(now time.Time, e Event) (send bool, summary *Event) {
	summary = c.tick(now)
	if c.start.IsZero() {
		c.start = now
	}
	if !c.flapping && c.sent < c.limit {
		c.sent++
		return true, summary
	}
	c.hold(now, e)
	return false, summary
}

func (c *coalescer) hold(now time.Time, e Event) {
	if c.held == 0 {
		c.heldFrom, c.minTerm, c.maxTerm = now, e.Term, e.Term
	}
	c.held++
	c.kinds[e.Kind]++
	if e.Reason != "" {
		c.reasons[e.Reason]++
	}
	if e.Term != 0 && (c.minTerm == 0 || e.Term < c.minTerm) {
		c.minTerm = e.Term
	}
	c.maxTerm = max(c.maxTerm, e.Term)
	c.latest = e
}

// tick closes the windows that have ended by now and returns the summary
// of the last one that held events, if any.
func (c *coalescer) tick(now time.Time) *Event {
	var summary *Event
	for !c.start.IsZero() && now.Sub(c.start) >= c.window {
		end := c.start.Add(c.window)
		if c.held > 0 {
			summary = c.summary(end)
		}
		c.flapping = c.held > 0
		c.sent, c.held = 0, 0
		clear(c.kinds)
		clear(c.reasons)
		c.start = time.Time{}
		if c.flapping {
			// The next window follows at once: it must pass quiet for
			// the events to flow again.
			c.start = end
		}
	}
	return summary
}

func (c *coalescer) summary(end time.Time) *Event {
	byCount := func(m map[string]int) string {
		keys := slices.Collect(maps.Keys(m))
		slices.SortFunc(keys, func(a, b string) int {
			if m[a] != m[b] {
				return m[b] - m[a]
			}
			return strings.Compare(a, b)
		})
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s %d", k, m[k])
		}
		return strings.Join(parts, ", ")
	}
	detail := fmt.Sprintf("%d events held back in %s: %s", c.held, end.Sub(c.heldFrom).Round(time.Second), byCount(c.kinds))
	if len(c.reasons) > 0 {
		detail += "; reasons: " + byCount(c.reasons)
	}
	if c.minTerm != c.maxTerm {
		detail += fmt.Sprintf("; terms %d-%d", c.minTerm, c.maxTerm)
	}
	l := c.latest
	detail += fmt.Sprintf("; latest: %s on %s", l.Kind, l.Node)
	if l.Term != 0 {
		detail += fmt.Sprintf(" at term %d", l.Term)
	}
	// The summary's term is the highest it saw: an event without one (a
	// monitor's) must not make the cluster look as if it went back.
	return &Event{Kind: KindFlapping, Node: l.Node, Term: c.maxTerm, Source: l.Source, At: end.UTC(), Held: c.held,
		Counts: maps.Clone(c.kinds), Reasons: maps.Clone(c.reasons), Detail: detail}
}
