package agent_test

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/ipsec/memdp"
)

// syncBuffer is a log sink the agents write to from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestTakeoverUsesTheStandbysStage: the standbys open the replicated SAs
// ahead of time, and the takeover after a kill takes every one of them
// from that stage instead of unsealing the set in its critical path.
func TestTakeoverUsesTheStandbysStage(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: in-process cluster tests are not run with -short")
	}
	const n = 2000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logs := &syncBuffer{}
	c, err := cluster.Start(ctx, cluster.Options{Nodes: specs("g1", "g2", "g3"), Dir: t.TempDir(), NoSync: true,
		HeartbeatTimeout: 300 * time.Millisecond, Resources: resources,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	active, act, err := c.WaitActive(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	active.DP.Add(memdp.Synthetic(n, c.VIP)...)
	staged := regexp.MustCompile(`msg="staged replicated SAs" node=(\w+) changed=\d+ staged=(\d+)`)
	waitFor(t, "both standbys staging every SA", func() bool {
		full := map[string]bool{}
		for _, m := range staged.FindAllStringSubmatch(logs.String(), -1) {
			if k, _ := strconv.Atoi(m[2]); k == n && m[1] != active.Spec.ID {
				full[m[1]] = true
			}
		}
		return len(full) == 2
	})
	if err := c.Kill(active.Spec.ID); err != nil {
		t.Fatal(err)
	}
	next, _, err := c.WaitActive(ctx, act.Term, active.Spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	used := regexp.MustCompile(`msg="takeover used staged SAs" node=` + next.Spec.ID + ` staged=(\d+) decoded=(\d+)`).
		FindStringSubmatch(logs.String())
	if used == nil {
		t.Fatalf("%s's takeover took nothing from its stage", next.Spec.ID)
	}
	if used[1] != strconv.Itoa(n) || used[2] != "0" {
		t.Errorf("%s's takeover took %s SAs from its stage and opened %s itself, want all %d staged", next.Spec.ID, used[1], used[2], n)
	}
	if got := len(next.DP.Outbound()); got != n {
		t.Errorf("new active carries %d of %d SAs", got, n)
	}
}
