package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/pki"
)

func TestDemoJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: the demo runs a cluster; not with -short")
	}
	var out, errOut bytes.Buffer
	// -realtime-priority 0: the demo runs in the test process, which must
	// not be left at a realtime priority with its memory locked.
	if err := run(context.Background(), []string{"demo", "--json", "-tunnels", "1000", "-realtime-priority", "0"}, &out, &errOut); err != nil {
		t.Fatalf("demo: %v\n%s", err, errOut.String())
	}
	var rep struct {
		Nodes     int    `json:"nodes"`
		Killed    string `json:"killed"`
		NewActive string `json:"new_active"`
		SAsBefore int    `json:"sas_before"`
		SAsAfter  int    `json:"sas_after"`
		LostSAs   *int   `json:"lost_sas"`
		SeqReused *bool  `json:"seq_reused"`
		Phases    map[string]float64
		PhasesMs  map[string]float64 `json:"phases_ms"`
		TotalMs   float64            `json:"total_ms"`
		Reason    string             `json:"reason"`
	}
	// stdout is exactly one JSON value: the report, nothing before or
	// after it (the timeline and progress go to stderr).
	dec := json.NewDecoder(bytes.NewReader(out.Bytes()))
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, out.String())
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("stdout holds more than the JSON report (%v):\n%s", err, out.String())
	}
	if rep.Nodes != 3 || rep.Killed == "" || rep.NewActive == "" || rep.NewActive == rep.Killed || rep.Reason != "leader_silent" {
		t.Errorf("report = %+v", rep)
	}
	if rep.LostSAs == nil || *rep.LostSAs != 0 || rep.SeqReused == nil || *rep.SeqReused {
		t.Errorf("lost %v SAs, seq reused %v", rep.LostSAs, rep.SeqReused)
	}
	if rep.SAsBefore < 1000 || rep.SAsAfter != rep.SAsBefore {
		t.Errorf("sas before %d, after %d", rep.SAsBefore, rep.SAsAfter)
	}
	for _, p := range []string{"detect", "elect", "claim", "install", "move"} {
		if _, ok := rep.PhasesMs[p]; !ok {
			t.Errorf("phase %s missing", p)
		}
	}
	if rep.TotalMs <= 0 || !strings.Contains(errOut.String(), "install") || !strings.Contains(errOut.String(), "t=") {
		t.Errorf("no timeline on stderr: %s", errOut.String())
	}
}

func TestTLSKeygenAndValidate(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	must := func(args ...string) {
		t.Helper()
		out.Reset()
		if err := run(context.Background(), args, &out, &out); err != nil {
			t.Fatalf("handoff %v: %v\n%s", args, err, out.String())
		}
	}
	must("tls", "ca", "-out", dir)
	must("tls", "cert", "-ca", dir, "-node", "gw1", "-hosts", "192.0.2.11,gw1.example", "-out", dir)
	must("keygen", "-out", filepath.Join(dir, "cluster.key"))
	for _, f := range []string{"ca-key.pem", "gw1-key.pem", "cluster.key"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, err %v; want 0600", f, st.Mode().Perm(), err)
		}
	}
	if _, err := pki.Load(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "gw1.pem"), filepath.Join(dir, "gw1-key.pem")); err != nil {
		t.Errorf("issued material does not load: %v", err)
	}
	if err := run(context.Background(), []string{"tls", "ca", "-out", dir}, &out, &out); err == nil {
		t.Error("tls ca overwrote an existing CA without -force")
	}
	cfg := filepath.Join(dir, "gw1.hcl")
	src := `node_id = "gw1"
advertise_addr = "192.0.2.11:7946"
cluster_key_file = "` + filepath.Join(dir, "cluster.key") + `"
tls {
  ca = "` + filepath.Join(dir, "ca.pem") + `"
  cert = "` + filepath.Join(dir, "gw1.pem") + `"
  key = "` + filepath.Join(dir, "gw1-key.pem") + `"
}
`
	if err := os.WriteFile(cfg, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	must("validate", "-config", cfg)
	if !strings.Contains(out.String(), "configuration valid: node gw1") {
		t.Errorf("validate said: %s", out.String())
	}
	if err := os.WriteFile(cfg, []byte(src+"raft {\n heartbeat_timeout = \"soon\"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"validate", "-config", cfg}, &out, &out); err == nil || !strings.Contains(err.Error(), "raft.heartbeat_timeout") {
		t.Errorf("validate of a bad duration: %v", err)
	}
}

// TestAgentCommandBootstrapsAndTakesOver runs the real agent command with a
// config file and checks that a lone bootstrapped node becomes active.
func TestAgentCommandRunsAndStops(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: starts an agent; not with -short")
	}
	dir := t.TempDir()
	var out bytes.Buffer
	for _, args := range [][]string{{"tls", "ca", "-out", dir}, {"tls", "cert", "-ca", dir, "-node", "gw1", "-hosts", "127.0.0.1", "-out", dir},
		{"keygen", "-out", filepath.Join(dir, "k")}} {
		if err := run(context.Background(), args, &out, &out); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "gw1.yaml")
	src := "node_id: gw1\nbind_addr: 127.0.0.1:0\nadvertise_addr: 127.0.0.1:7\nbootstrap: true\ndata_dir: " + filepath.Join(dir, "data") +
		"\ncluster_key_file: " + filepath.Join(dir, "k") + "\nlog_level: debug\ntls:\n  ca: " + filepath.Join(dir, "ca.pem") +
		"\n  cert: " + filepath.Join(dir, "gw1.pem") + "\n  key: " + filepath.Join(dir, "gw1-key.pem") +
		// The agent runs in the test process: no realtime, no mlockall.
		"\nscheduling:\n  realtime_priority: 0\n  lock_memory: false\n"
	if err := os.WriteFile(cfg, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"agent", "-config", cfg}, logs, logs) }()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(logs.String(), "msg=active") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "msg=active") {
		t.Fatalf("the bootstrapped agent never became active:\n%s", logs.String())
	}
}

// TestDemoThroughEmulatedClouds runs the demo's failover with each cloud's
// real SDK against the built-in emulator: the demo itself checks that
// every floating resource ends on the new active.
func TestDemoThroughEmulatedClouds(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: the demo runs a cluster; not with -short")
	}
	for _, p := range []string{"aws", "gcp", "azure"} {
		t.Run(p, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), []string{"demo", "--json", "-tunnels", "200", "-provider", p, "-provider-latency", "5ms", "-realtime-priority", "0"}, &out, &errOut)
			if err != nil {
				t.Fatalf("demo --provider %s: %v\n%s", p, err, errOut.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			var rep struct {
				Provider  string `json:"provider"`
				LostSAs   int    `json:"lost_sas"`
				SeqReused bool   `json:"seq_reused"`
				Resources int    `json:"resources_moved"`
				Phases    struct {
					Move float64 `json:"move"`
				} `json:"phases_ms"`
			}
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &rep); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(rep.Provider, p) || rep.LostSAs != 0 || rep.SeqReused || rep.Resources < 2 || rep.Phases.Move < 5 {
				t.Errorf("report = %+v", rep)
			}
		})
	}
}
