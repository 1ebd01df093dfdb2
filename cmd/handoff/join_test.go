package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestJoinGivesUpLoudly: a new node whose join peer does not answer logs
// every attempt with its error while it tries, and when -join-timeout runs
// out the agent stops with an error (exit status 1), so that systemd's
// Restart= tries again; it used to log nothing for five minutes, even at
// debug level, then run on outside the cluster.
func TestJoinGivesUpLoudly(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: starts an agent; not with -short")
	}
	dir := t.TempDir()
	var out bytes.Buffer
	for _, args := range [][]string{{"tls", "ca", "-out", dir}, {"tls", "cert", "-ca", dir, "-node", "gw2", "-hosts", "127.0.0.1", "-out", dir},
		{"keygen", "-out", filepath.Join(dir, "k")}} {
		if err := run(context.Background(), args, &out, &out); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "gw2.yaml")
	src := "node_id: gw2\nbind_addr: 127.0.0.1:0\nadvertise_addr: 127.0.0.1:7\njoin: [\"127.0.0.1:1\"]\ndata_dir: " + filepath.Join(dir, "data") +
		"\ncluster_key_file: " + filepath.Join(dir, "k") + "\ntls:\n  ca: " + filepath.Join(dir, "ca.pem") +
		"\n  cert: " + filepath.Join(dir, "gw2.pem") + "\n  key: " + filepath.Join(dir, "gw2-key.pem") +
		"\nscheduling:\n  realtime_priority: 0\n  lock_memory: false\n"
	if err := os.WriteFile(cfg, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := run(ctx, []string{"agent", "-config", cfg, "-api-addr", "", "-join-timeout", "2s"}, logs, logs)
	took := time.Since(start)
	var ue usageError
	if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "gave up after 2s") || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("agent with an unreachable join peer: err = %v, want a (non-usage) error naming the peer and the timeout\n%s", err, logs.String())
	}
	if took > 15*time.Second {
		t.Errorf("the agent took %s to give up after a 2s join timeout", took)
	}
	attempts := strings.Count(logs.String(), `msg="join attempt failed"`)
	if attempts < 3 || !strings.Contains(logs.String(), "peer=127.0.0.1:1") || !strings.Contains(logs.String(), "connection refused") {
		t.Errorf("%d join attempts logged (want every one, with peer and error):\n%s", attempts, logs.String())
	}
	if !strings.Contains(logs.String(), `level=WARN msg="join attempt failed"`) {
		t.Errorf("join attempts not logged at warn:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "agent running") {
		t.Errorf("the agent said it runs although it never joined:\n%s", logs.String())
	}
}
