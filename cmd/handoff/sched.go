package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/handoffvpn/handoff/internal/rtsched"
)

// schedHints are the advice of the warning, which differs between the
// agent (a systemd unit, a config file) and the demo (a command line).
type schedHints struct {
	grant string // how to give the process what it asked for
	off   string // how to stop asking
}

// applyScheduling applies req to this process (apply is rtsched.Apply but
// for tests) and logs one line: Info when it all took effect, otherwise one
// Warn saying what was asked, what the process got, how to grant the rest
// and how to stop asking. Either way the caller runs on: a normally
// scheduled agent works, it only risks a false failover when the host's
// CPU is busy.
func applyScheduling(log *slog.Logger, req rtsched.Request, hints schedHints, apply func(rtsched.Request) (rtsched.Report, error)) {
	if req.Empty() {
		log.Info("realtime scheduling off: the agent keeps the scheduling it was started with")
		return
	}
	rep, err := apply(req)
	if err == nil {
		log.Info("realtime scheduling applied", "asked", req.String(), "got", rep.String())
		return
	}
	log.Warn("realtime scheduling not applied in full: CPU load on this host can delay Raft heartbeats past the leader lease and fail the cluster over",
		"asked", req.String(), "got", rep.String(), "err", err, "grant", hints.grant, "off", hints.off)
}

// agentHints grant req through the systemd unit's settings, which the
// shipped unit has.
func agentHints(req rtsched.Request) schedHints {
	var unit []string
	if req.Priority > 0 {
		policy := strings.ToLower(strings.TrimPrefix(req.Policy.String(), "SCHED_"))
		unit = append(unit, fmt.Sprintf("CPUSchedulingPolicy=%s CPUSchedulingPriority=%d LimitRTPRIO=%d", policy, req.Priority, req.Priority))
	}
	if req.LockMemory {
		unit = append(unit, "LimitMEMLOCK=infinity")
	}
	return schedHints{
		grant: "run as root, or set in the systemd unit's [Service]: " + strings.Join(unit, " ") + " (see docs/runbook.md, Scheduling)",
		off:   "scheduling.realtime_priority = 0 and scheduling.lock_memory = false",
	}
}

// demoHints grant it to a demo run from a shell.
func demoHints() schedHints {
	return schedHints{
		grant: "run it as root, or give the binary the capabilities: sudo setcap cap_sys_nice,cap_ipc_lock=ep ./handoff",
		off:   "-realtime-priority 0",
	}
}

// tuneRuntime sets the garbage collector's target and soft memory limit,
// unless GOGC or GOMEMLIMIT in the environment already did. A collection's
// mark phase taxes every goroutine that allocates while it runs, Raft's
// heartbeats included; at 100,000 SAs the default target made the
// collector run so often that marking starved the heartbeats past the
// lease. A higher target collects less often, for more memory; the limit
// caps that (the collector then works harder near it, never fails).
func tuneRuntime(log *slog.Logger, gcPercent int, memoryLimit int64) {
	gc := "GOGC from the environment"
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
		gc = strconv.Itoa(gcPercent)
	}
	limit := "none"
	switch {
	case os.Getenv("GOMEMLIMIT") != "":
		limit = "GOMEMLIMIT from the environment"
	case memoryLimit > 0:
		debug.SetMemoryLimit(memoryLimit)
		limit = strconv.FormatInt(memoryLimit, 10) + " bytes"
	}
	log.Info("go runtime tuned", "gc_percent", gc, "memory_limit", limit)
}
