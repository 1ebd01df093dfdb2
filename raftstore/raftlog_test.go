package raftstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// TestRaftLogFieldsAreAttributes: what hashicorp/raft logs reaches slog
// with its message alone in msg and every key/value pair as an attribute
// (the former io.Writer bridge flattened them all into msg), at raft's
// level, filtered by the configured one.
func TestRaftLogFieldsAreAttributes(t *testing.T) {
	var buf bytes.Buffer
	l := newRaftLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug - 4})), "info")
	l.Debug("not shown at info")
	l.Warn("heartbeat timeout reached, starting election", "last-leader-addr", "10.0.1.11:7946", "last-leader-id", "gw1")
	l.Named("snapshot").With("path", "/var/lib/handoff").Error("failed to reap snapshot", "error", errors.New("permission denied"))
	l.Info("entering", "state", hclog.Fmt("%s at term %d", "follower", 7))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 records (debug filtered out), got %d:\n%s", len(lines), buf.String())
	}
	var recs []map[string]any
	for _, ln := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(ln), &m); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, m)
	}
	want := []map[string]any{
		{"level": "WARN", "msg": "heartbeat timeout reached, starting election", "component": "raft", "last-leader-addr": "10.0.1.11:7946", "last-leader-id": "gw1"},
		{"level": "ERROR", "msg": "failed to reap snapshot", "logger": "raft.snapshot", "path": "/var/lib/handoff", "error": "permission denied"},
		{"level": "INFO", "msg": "entering", "state": "follower at term 7"},
	}
	for i, w := range want {
		for k, v := range w {
			if recs[i][k] != v {
				t.Errorf("record %d: %s = %v, want %v\n%s", i, k, recs[i][k], v, lines[i])
			}
		}
	}
	if !l.IsInfo() || l.IsDebug() {
		t.Error("level checks do not follow the configured level")
	}
	buf.Reset()
	w := l.StandardWriter(&hclog.StandardLoggerOptions{InferLevels: true})
	_, _ = w.Write([]byte("[WARN] raft-net: connection reset\n"))
	if !strings.Contains(buf.String(), `"level":"WARN"`) || !strings.Contains(buf.String(), `"msg":"raft-net: connection reset"`) {
		t.Errorf("standard writer line: %s", buf.String())
	}
}
