package notify_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/operator/notify"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/raftstore"
)

// statusOf reads a node's status from whichever agent runs it now.
type statusOf struct {
	c  func() *cluster.Cluster
	id string
}

func (s statusOf) OperatorStatus() agent.Status {
	if c := s.c(); c != nil {
		if n := c.Node(s.id); n != nil {
			return n.Agent.OperatorStatus()
		}
	}
	return agent.Status{Node: s.id}
}

// stamps reads the lines "<state> <node> <unix ns>" the commands wrote,
// the first of each state and node (a loaded machine may flap leadership
// later).
func stamps(t *testing.T, path string) map[string]time.Time {
	t.Helper()
	b, _ := os.ReadFile(path)
	out := map[string]time.Time{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 {
			continue
		}
		ns, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			t.Fatalf("bad line %q", l)
		}
		if _, seen := out[f[0]+" "+f[1]]; !seen {
			out[f[0]+" "+f[1]] = time.Unix(0, ns)
		}
	}
	return out
}

// TestNotifyOnARealTakeoverIsNotInItsPath runs three real agents (Raft over
// loopback mutual TLS) with a notifier each. Every node's standby command
// hangs until its timeout kills it. The active is killed while the
// standbys' commands still run: the successor's takeover completes all the
// same, long before its own standby command is killed at the timeout, and
// its active command runs only after that, one command at a time.
func TestNotifyOnARealTakeoverIsNotInItsPath(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: in-process cluster tests are not run with -short")
	}
	const timeout = 4 * time.Second
	dir := t.TempDir()
	record := filepath.Join(dir, "ran")
	// date +%s%N is GNU; the shell's own clock would do as well, but
	// coreutils is everywhere the agent runs.
	hang := []string{"/bin/sh", "-c", `echo "$HANDOFF_NOTIFY_STATE $HANDOFF_NODE $(date +%s%N)" >> "$0"; sleep 30`, record}
	quick := []string{"/bin/sh", "-c", `echo "$HANDOFF_NOTIFY_STATE $HANDOFF_NODE $(date +%s%N)" >> "$0"`, record}

	var (
		mu        sync.Mutex // guards c and completed
		c         *cluster.Cluster
		completed = map[string]time.Time{}
	)
	current := func() *cluster.Cluster { mu.Lock(); defer mu.Unlock(); return c }
	ids := []string{"gw1", "gw2", "gw3"}
	notifiers := map[string]*notify.Notifier{}
	logs := map[string]*strings.Builder{}
	var logMu sync.Mutex
	for _, id := range ids {
		b := &strings.Builder{}
		logs[id] = b
		n, err := notify.New(notify.Config{Node: id, Timeout: timeout, Interval: 50 * time.Millisecond,
			Commands: map[string][]string{notify.Standby: hang, notify.Active: quick},
			Status:   statusOf{c: current, id: id},
			Logger:   slog.New(slog.NewTextHandler(lockedWriter{&logMu, b}, nil))})
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		notifiers[id] = n
	}
	events := func(e agent.Event) {
		if e.Kind == "failover.completed" {
			mu.Lock()
			if _, seen := completed[e.Node]; !seen {
				completed[e.Node] = e.At
			}
			mu.Unlock()
		}
		if n := notifiers[e.Node]; n != nil {
			n.Event(e)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var specs []cluster.NodeSpec
	for i, id := range ids {
		specs = append(specs, cluster.NodeSpec{ID: id, Role: raftstore.RoleGateway, Priority: 100 - i})
	}
	started, err := cluster.Start(ctx, cluster.Options{Nodes: specs, Dir: t.TempDir(), HeartbeatTimeout: 250 * time.Millisecond,
		Resources: []providers.Resource{{Kind: "eip", ID: "eipalloc-1"}}, NoSync: true, Events: events})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	c = started
	mu.Unlock()
	defer started.Close()

	first, act, err := started.WaitActive(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	var standbys []string
	for _, id := range ids {
		if id != first.Spec.ID {
			standbys = append(standbys, id)
		}
	}
	// Both standbys' commands start, and hang.
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := stamps(t, record)
		if _, ok := s["standby "+standbys[0]]; ok {
			if _, ok := s["standby "+standbys[1]]; ok {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standbys' commands did not start: %v", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := started.Kill(first.Spec.ID); err != nil {
		t.Fatal(err)
	}
	next, act2, err := started.WaitActive(ctx, act.Term, first.Spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	done, ok := completed[next.Spec.ID]
	mu.Unlock()
	if !ok {
		t.Fatalf("%s active at term %d without a failover.completed event", next.Spec.ID, act2.Term)
	}
	s := stamps(t, record)
	standbyStart := s["standby "+next.Spec.ID]
	if !done.Before(standbyStart.Add(timeout)) {
		t.Fatalf("%s's takeover completed %s after its standby command started: not before the command's %s timeout", next.Spec.ID, done.Sub(standbyStart), timeout)
	}
	t.Logf("%s took over (%s) %s after its standby command started; the command still runs", next.Spec.ID, act2.Timings.Total, done.Sub(standbyStart).Round(time.Millisecond))

	// The active command waits for the standby command's end: its timeout.
	// Unless the cluster failed over again meanwhile (a loaded machine):
	// the slot then holds the later state, by design, and the active
	// command rightly never runs; the timeout is still checked below.
	deadline = time.Now().Add(timeout + 10*time.Second)
	flapped := false
	for {
		s = stamps(t, record)
		if _, ok := s["active "+next.Spec.ID]; ok {
			break
		}
		if now := started.Active(next.Spec.ID); now.Term != act2.Term || now.Node != next.Spec.ID {
			flapped = true
			t.Logf("%s lost the active role before its active command could run (now %s at term %d): a flap under load; its command is for the later state", next.Spec.ID, now.Node, now.Term)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's active command never ran: %v", next.Spec.ID, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !flapped {
		activeStart := s["active "+next.Spec.ID]
		if gap := activeStart.Sub(standbyStart); gap < timeout-100*time.Millisecond {
			t.Errorf("the active command started %s after the standby command: want the standby command killed at its %s timeout first", gap, timeout)
		}
		if !activeStart.After(done) {
			t.Errorf("the active command started before the takeover completed")
		}
	}
	// The standby command was killed at its timeout, not let run its 30 s.
	var l string
	for {
		logMu.Lock()
		l = logs[next.Spec.ID].String()
		logMu.Unlock()
		if strings.Contains(l, "notify command timed out and was killed") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var killedAfter time.Duration
	for _, line := range strings.Split(l, "\n") {
		if strings.Contains(line, "notify command timed out and was killed") && strings.Contains(line, "state=standby") {
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "took="); ok {
					killedAfter, _ = time.ParseDuration(v)
				}
			}
		}
	}
	if killedAfter < timeout || killedAfter > timeout+2*time.Second {
		t.Errorf("%s's standby command was killed after %s, timeout %s:\n%s", next.Spec.ID, killedAfter, timeout, l)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
