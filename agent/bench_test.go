package agent_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/internal/perf"
	"github.com/handoffvpn/handoff/raftstore"
)

// benchEnv is a three-gateway in-process cluster with the agents' default
// replication settings and fsync on, as in production.
func benchEnv(b *testing.B, events func(agent.Event)) (*cluster.Cluster, *cluster.Node) {
	b.Helper()
	ctx, cancel := context.WithTimeout(b.Context(), 60*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{
		Nodes: specs("g1", "g2", "g3"), Dir: b.TempDir(), HeartbeatTimeout: 500 * time.Millisecond,
		Resources: resources, Events: events,
		// Kills make the survivors log connection errors: not the figures.
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	active, _, err := c.WaitActive(ctx, 0)
	if err != nil {
		b.Fatal(err)
	}
	return c, active
}

// BenchmarkAgentFeed brings 20,000 new SAs up on the active's memory
// dataplane as fast as the agent's feed takes them (in chunks that keep
// its watch channel from overflowing: an overflow ends memdp's Watch and
// the feed resyncs, which would measure the resync instead) and waits for
// every node to hold them.
// It reports upserts applied per second on the active and the followers'
// lag from the SA appearing to their FSM applying it.
func BenchmarkAgentFeed(b *testing.B) {
	c, active := benchEnv(b, nil)
	const n, chunk = 20000, 2048
	var perSec float64
	var lag perf.Latencies
	for i := 0; b.Loop(); i++ {
		sas, err := perf.SAs(n, uint32(i)*n)
		if err != nil {
			b.Fatal(err)
		}
		added := make(map[string]time.Time, n)
		t0 := time.Now()
		for start := 0; start < n; start += chunk {
			part := sas[start:min(start+chunk, n)]
			now := time.Now()
			active.DP.Add(part...)
			for _, s := range part {
				added[s.ID] = now
			}
			// Keep at most four chunks queued in front of the feed.
			waitHolds(b, active, added, start+len(part)-4*chunk)
		}
		waitHolds(b, active, added, len(added))
		var last time.Time
		for id := range added {
			last = maxTime(last, active.Store.FSM().AppliedAt(id))
		}
		perSec = float64(n) / last.Sub(t0).Seconds()
		lag = lag[:0]
		for _, node := range c.Nodes() {
			if node == active {
				continue
			}
			waitHolds(b, node, added, len(added))
			for id, at := range added {
				lag = append(lag, node.Store.FSM().AppliedAt(id).Sub(at))
			}
		}
	}
	b.ReportMetric(perSec, "upserts/s")
	b.ReportMetric(perf.MS(lag.Quantile(0.5)), "lag-p50-ms")
	b.ReportMetric(perf.MS(lag.Quantile(0.99)), "lag-p99-ms")
}

// waitHolds waits until node's FSM holds at least want of the SAs in ids.
func waitHolds(b *testing.B, node *cluster.Node, ids map[string]time.Time, want int) {
	b.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		have := 0
		node.Store.FSM().View(func(st *raftstore.State) {
			for id := range ids {
				if _, ok := st.SAs[id]; ok {
					have++
				}
			}
		})
		if have >= want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s holds %d of the %d SAs after 60s", node.Spec.ID, have, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// BenchmarkAgentTakeover replicates 20,000 SAs, kills the active and
// reports the new active's install phase (unseal, decode, sequence jump,
// install into its memory dataplane) and the whole takeover.
func BenchmarkAgentTakeover(b *testing.B) {
	var mu sync.Mutex
	var done []agent.Event
	c, active := benchEnv(b, func(e agent.Event) {
		if e.Kind == "failover.completed" {
			mu.Lock()
			done = append(done, e)
			mu.Unlock()
		}
	})
	const n = 20000
	sas, err := perf.SAs(n, 0)
	if err != nil {
		b.Fatal(err)
	}
	ids := make(map[string]time.Time, n)
	for _, s := range sas {
		ids[s.ID] = time.Time{}
	}
	for start := 0; start < n; start += 2048 {
		active.DP.Add(sas[start:min(start+2048, n)]...)
		waitHolds(b, active, ids, start-4*2048)
	}
	for _, node := range c.Nodes() {
		waitHolds(b, node, ids, n)
	}
	var ev agent.Event
	for b.Loop() {
		var term uint64
		active.Store.FSM().View(func(st *raftstore.State) { term = st.Active.Term })
		if err := c.Kill(active.Spec.ID); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(b.Context(), 60*time.Second)
		next, act, err := c.WaitActive(ctx, term, active.Spec.ID)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		if got := next.DP.Count(); got != n {
			b.Fatalf("the new active carries %d SAs, want %d", got, n)
		}
		mu.Lock()
		for _, e := range done {
			if e.Term == act.Term {
				ev = e
			}
		}
		mu.Unlock()
	}
	if ev.SAs != n {
		b.Fatalf("takeover event reports %d SAs, want %d", ev.SAs, n)
	}
	b.ReportMetric(perf.MS(ev.Timings.Install), "install-ms")
	b.ReportMetric(perf.MS(ev.Timings.Total), "takeover-ms")
}
