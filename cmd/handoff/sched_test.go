package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"

	"github.com/handoffvpn/handoff/internal/rtsched"
)

func logLines(t *testing.T, b *bytes.Buffer) []string {
	t.Helper()
	s := strings.TrimSpace(b.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func TestApplySchedulingWarnsInOneLine(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	req := rtsched.Request{Policy: rtsched.RR, Priority: 10, LockMemory: true}
	refused := func(r rtsched.Request) (rtsched.Report, error) {
		// What rtsched.Apply returns to a user without the privileges.
		return rtsched.Report{Requested: r, Threads: []rtsched.Thread{{TID: 1}, {TID: 2}}},
			errors.Join(
				errors.New("setting SCHED_RR priority 10 on 2 of 2 threads (tid 1, 2): operation not permitted: needs root or CAP_SYS_NICE"),
				syscall.EPERM)
	}
	applyScheduling(log, req, agentHints(req), refused)
	lines := logLines(t, &buf)
	if len(lines) != 1 {
		t.Fatalf("%d log lines, want one:\n%s", len(lines), buf.String())
	}
	for _, want := range []string{"level=WARN", `asked="SCHED_RR priority 10 on every thread, memory locked"`,
		`got="SCHED_OTHER on all 2 threads, memory not locked"`, "CAP_SYS_NICE",
		"CPUSchedulingPolicy=rr CPUSchedulingPriority=10 LimitRTPRIO=10 LimitMEMLOCK=infinity",
		`off="scheduling.realtime_priority = 0 and scheduling.lock_memory = false"`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("warning lacks %s:\n%s", want, lines[0])
		}
	}
}

func TestApplySchedulingInfoWhenApplied(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	req := rtsched.Request{Policy: rtsched.FIFO, Priority: 20}
	granted := func(r rtsched.Request) (rtsched.Report, error) {
		return rtsched.Report{Requested: r, Threads: []rtsched.Thread{{TID: 1, Policy: rtsched.FIFO, Priority: 20}}}, nil
	}
	applyScheduling(log, req, demoHints(), granted)
	lines := logLines(t, &buf)
	if len(lines) != 1 || !strings.Contains(lines[0], "level=INFO") || !strings.Contains(lines[0], `got="SCHED_FIFO priority 20 on the only thread, memory not locked"`) {
		t.Errorf("log:\n%s", buf.String())
	}
}

func TestApplySchedulingOffDoesNothing(t *testing.T) {
	var buf bytes.Buffer
	called := false
	applyScheduling(slog.New(slog.NewTextHandler(&buf, nil)), rtsched.Request{Policy: rtsched.RR}, demoHints(),
		func(rtsched.Request) (rtsched.Report, error) { called = true; return rtsched.Report{}, nil })
	if called || len(logLines(t, &buf)) != 1 || strings.Contains(buf.String(), "WARN") {
		t.Errorf("apply called: %v; log:\n%s", called, buf.String())
	}
}

func TestAgentHintsFollowTheRequest(t *testing.T) {
	h := agentHints(rtsched.Request{Policy: rtsched.FIFO, Priority: 30})
	if !strings.Contains(h.grant, "CPUSchedulingPolicy=fifo CPUSchedulingPriority=30 LimitRTPRIO=30 (") || strings.Contains(h.grant, "MEMLOCK") {
		t.Errorf("grant = %q", h.grant)
	}
	if h := agentHints(rtsched.Request{Policy: rtsched.RR, LockMemory: true}); !strings.Contains(h.grant, "[Service]: LimitMEMLOCK=infinity (") {
		t.Errorf("grant = %q", h.grant)
	}
}

func TestDemoRealtimePriorityFlag(t *testing.T) {
	for _, v := range []string{"100", "-1"} {
		var out bytes.Buffer
		err := run(context.Background(), []string{"demo", "-realtime-priority", v}, &out, &out)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "-realtime-priority "+v+" is outside 0..99") {
			t.Errorf("-realtime-priority %s: err = %v", v, err)
		}
	}
}
