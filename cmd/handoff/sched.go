package main

import (
	"fmt"
	"log/slog"
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
