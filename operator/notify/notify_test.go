package notify

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/raftstore"
)

// logBuffer collects a notifier's log lines while the test reads them.
type logBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newNotifier(t *testing.T, cfg Config) (*Notifier, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n, logs
}

// waitFor polls cond for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readLines(path string) []string {
	b, _ := os.ReadFile(path)
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// sh runs script with /bin/sh; $0 in it is arg.
func sh(script, arg string) []string { return []string{"/bin/sh", "-c", script, arg} }

// TestCommandSeesItsTransitionAndNoSecrets: the command gets the state,
// the previous state, the node, the term and the reason in its
// environment, and nothing of the agent's (its API token in particular).
func TestCommandSeesItsTransitionAndNoSecrets(t *testing.T) {
	t.Setenv("HANDOFF_API_TOKEN", "0123456789abcdef0123456789abcdef")
	out := filepath.Join(t.TempDir(), "env")
	n, _ := newNotifier(t, Config{Node: "gw1", Commands: map[string][]string{Active: sh(`env > "$0"`, out)}})
	n.Event(agent.Event{Kind: "failover.completed", Node: "gw2", Term: 6}) // another node's: not a transition
	n.Event(agent.Event{Kind: "failover.started", Node: "gw1", Term: 7})   // not a state
	n.Event(agent.Event{Kind: "failover.completed", Node: "gw1", Term: 7, At: time.Now()})
	waitFor(t, 5*time.Second, "the active command", func() bool { return len(readLines(out)) > 0 })
	env := strings.Join(readLines(out), "\n")
	for _, want := range []string{"HANDOFF_NOTIFY_STATE=active", "HANDOFF_NOTIFY_PREVIOUS=\n", "HANDOFF_NODE=gw1", "HANDOFF_TERM=7", "HANDOFF_REASON=failover.completed"} {
		if !strings.Contains(env+"\n", want) {
			t.Errorf("the command's environment lacks %q:\n%s", want, env)
		}
	}
	if strings.Contains(env, "HANDOFF_API_TOKEN") {
		t.Errorf("the command inherited the agent's secrets:\n%s", env)
	}
}

// TestTransitionsRunInOrderAndCoalesce: one command at a time; what
// arrives while one runs waits in one slot, the latest winning, and a
// transition to the state the node is in is none.
func TestTransitionsRunInOrderAndCoalesce(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ran")
	script := sh(`echo "$HANDOFF_NOTIFY_STATE from=$HANDOFF_NOTIFY_PREVIOUS" >> "$0"; sleep 0.3`, out)
	cmds := map[string][]string{Active: script, Standby: script, Fenced: script, Faulty: script}
	n, logs := newNotifier(t, Config{Node: "gw1", Commands: cmds})
	n.Event(agent.Event{Kind: "failover.completed", Node: "gw1", Term: 3})
	waitFor(t, 5*time.Second, "the active command", func() bool { return len(readLines(out)) == 1 })
	n.Event(agent.Event{Kind: "failover.completed", Node: "gw1", Term: 3}) // already active
	n.Event(agent.Event{Kind: "node.fenced", Node: "gw1", Detail: "lost leadership"})
	n.Event(agent.Event{Kind: "failover.failed", Node: "gw1", Term: 4, Detail: "move", Err: errors.New("denied")})
	waitFor(t, 5*time.Second, "the faulty command", func() bool { return len(readLines(out)) == 2 })
	time.Sleep(500 * time.Millisecond) // nothing else may run
	got := readLines(out)
	want := []string{"active from=", "faulty from=active"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("ran %q, want %q (fenced coalesced into faulty)", got, want)
	}
	if !strings.Contains(logs.String(), "transition coalesced") {
		t.Errorf("coalescing not logged:\n%s", logs)
	}
}

// TestTimeoutKillsTheCommandAndItsChildren: past the timeout the command
// and the processes it started are killed, and the log says so.
func TestTimeoutKillsTheCommandAndItsChildren(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	n, logs := newNotifier(t, Config{Node: "gw1", Timeout: 300 * time.Millisecond,
		Commands: map[string][]string{Faulty: sh(`sleep 30 & echo $! > "$0"; wait`, pidFile)}})
	start := time.Now()
	n.Event(agent.Event{Kind: "node.unhealthy", Node: "gw1", Detail: "own checks: charon down"})
	waitFor(t, 10*time.Second, "the timeout", func() bool { return strings.Contains(logs.String(), "timed out") })
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the command was killed after %s, timeout 300ms", took)
	}
	lines := readLines(pidFile)
	if len(lines) != 1 {
		t.Fatalf("the command did not record its child: %q", lines)
	}
	pid, err := strconv.Atoi(lines[0])
	if err != nil {
		t.Fatal(err)
	}
	// Gone, or a zombie waiting for whoever reaps orphans here.
	waitFor(t, 5*time.Second, "the child to die", func() bool {
		stat, err := os.ReadFile(filepath.Join("/proc", lines[0], "stat"))
		if err != nil {
			return errors.Is(err, os.ErrNotExist) || syscall.Kill(pid, 0) == syscall.ESRCH
		}
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		return len(f) > 0 && f[0] == "Z"
	})
}

// TestOutputIsBounded: a chatty command's output is logged up to the bound.
func TestOutputIsBounded(t *testing.T) {
	n, logs := newNotifier(t, Config{Node: "gw1", MaxOutput: 100,
		Commands: map[string][]string{Fenced: sh(`i=0; while [ $i -lt 100 ]; do echo 0123456789abcdef; i=$((i+1)); done; exit 3`, "")}})
	n.Event(agent.Event{Kind: "node.fenced", Node: "gw1"})
	waitFor(t, 5*time.Second, "the command", func() bool { return strings.Contains(logs.String(), "notify command failed") })
	l := logs.String()
	if !strings.Contains(l, "exit=3") || !strings.Contains(l, "1600 more bytes not logged") {
		t.Errorf("want exit 3 and the output cut at 100 bytes:\n%s", l)
	}
	if len(l) > 1000 {
		t.Errorf("the log holds %d bytes for 100 of output", len(l))
	}
}

// TestObserveFindsTheStandby: a node not carrying, with another active and
// itself healthy, becomes a standby; one that is active does not, whatever
// a snapshot taken before its fence says.
func TestObserveFindsTheStandby(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ran")
	script := sh(`echo "$HANDOFF_NOTIFY_STATE $HANDOFF_REASON" >> "$0"`, out)
	n, _ := newNotifier(t, Config{Node: "gw2", Commands: map[string][]string{Standby: script, Active: script}})
	st := agent.Status{Node: "gw2", Role: raftstore.RoleGateway, Active: "gw1", Term: 2,
		Members: []agent.MemberStatus{{Member: raftstore.Member{ID: "gw2"}, Healthy: false}}}
	n.Observe(st) // unhealthy: not a standby
	st.Members[0].Healthy = true
	n.Observe(agent.Status{Node: "gw2", Role: raftstore.RoleWitness, Active: "gw1"}) // a witness is never one
	n.Observe(st)
	waitFor(t, 5*time.Second, "the standby command", func() bool { return len(readLines(out)) == 1 })
	n.Event(agent.Event{Kind: "failover.completed", Node: "gw2", Term: 3})
	waitFor(t, 5*time.Second, "the active command", func() bool { return len(readLines(out)) == 2 })
	n.Observe(st) // stale: gw1 active at term 2
	time.Sleep(300 * time.Millisecond)
	if got := readLines(out); len(got) != 2 || !strings.HasPrefix(got[0], "standby gw1 is active") || !strings.HasPrefix(got[1], "active") {
		t.Errorf("ran %q", got)
	}
}

func TestNewRefusesBadCommands(t *testing.T) {
	for _, cmds := range []map[string][]string{{"master": {"/bin/true"}}, {Active: {}}, {Active: {""}}} {
		if _, err := New(Config{Node: "gw1", Commands: cmds}); err == nil {
			t.Errorf("New accepted %v", cmds)
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New accepted no node")
	}
}
