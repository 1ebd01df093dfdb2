//go:build unix

package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStabilityShortRun is a real stability run, shortened: three nodes,
// 2,000 tunnels, one busy loop, 2 ms of jitter and one kill in about 15
// seconds. It checks what the run must always do (the kill counted and
// taken over, no replicated SA lost, the JSON line complete and last, the
// busy loop ended), never how many spurious changes a loaded machine saw.
func TestStabilityShortRun(t *testing.T) {
	if testing.Short() {
		t.Skip("a real 15-second stability run with a busy-loop process; not in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	res, err := Stability(ctx, StabilityOptions{
		Duration: 15 * time.Second, Nodes: 3, Tunnels: 2000, BusyLoops: 1, Jitter: 2 * time.Millisecond,
		KillEvery: 8 * time.Second, RekeyEvery: 5 * time.Second, Dir: t.TempDir(), Progress: &progress,
		RealtimePriority: 0, // the test process keeps its scheduling
	})
	t.Log("progress:\n" + progress.String())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := res.WriteReport(&out); err != nil {
		t.Fatal(err)
	}
	t.Log("report:\n" + out.String())
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	last := lines[len(lines)-1]
	var got map[string]any
	if err := json.Unmarshal([]byte(last), &got); err != nil {
		t.Fatalf("the last line is not one JSON object: %v\n%s", err, last)
	}
	for _, k := range []string{"minutes", "spurious_leader_changes", "spurious_fences", "tunnels", "lost_sas",
		"detect_ms_p50", "detect_ms_p99", "kills", "busy_loops", "realtime", "jitter_ms", "heartbeat_ms", "lease_ms", "steal_ms"} {
		if _, ok := got[k]; !ok {
			t.Errorf("the JSON line has no %q", k)
		}
	}
	if got["kills"] != 1.0 || len(res.Kills) != 1 {
		t.Fatalf("kills = %v (%d recorded), want 1", got["kills"], len(res.Kills))
	}
	k := res.Kills[0]
	if k.NewActive == "" || k.NewActive == k.Killed || k.Timings.Detect <= 0 {
		t.Fatalf("the kill of %s was not taken over and detected: new active %q, detect %v", k.Killed, k.NewActive, k.Timings.Detect)
	}
	if d, ok := got["detect_ms_p50"].(float64); !ok || d <= 0 {
		t.Fatalf("detect_ms_p50 = %v", got["detect_ms_p50"])
	}
	if got["lost_sas"] != 0.0 || k.Lost != 0 {
		t.Fatalf("lost_sas = %v: replicated SAs of the killed active are missing on %s", got["lost_sas"], k.NewActive)
	}
	if k.Replicated == 0 {
		t.Fatal("the killed active carried no replicated SA: the loss check checked nothing")
	}
	if got["tunnels"] != 2000.0 || got["busy_loops"] != 1.0 || got["jitter_ms"] != 2.0 || got["heartbeat_ms"] != 150.0 || got["lease_ms"] != 50.0 {
		t.Fatalf("settings in the JSON line: %s", last)
	}
	if res.Rekeys == 0 {
		t.Fatal("no rekey round ran")
	}
	// The busy loop was ended by its PID and reaped.
	for _, pid := range res.BusyPIDs {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("busy loop pid %d still exists after the run (kill -0: %v)", pid, err)
		}
	}
	if len(res.BusyExited) > 0 {
		t.Fatalf("a busy loop ended during the run: %v", res.BusyExited)
	}
}
