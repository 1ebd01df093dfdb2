// Package rtsched puts the agent's own threads under a realtime scheduling
// policy and locks its memory, so that CPU load from other processes on the
// gateway cannot delay Raft's heartbeats past the leader lease and fail the
// cluster over for nothing (corosync and keepalived do the same for the same
// reason).
//
// Apply sets the policy on every thread the process has (threads created
// later inherit it from their creator) and optionally calls mlockall; it
// returns a Report of what took effect, read back from the kernel, and an
// error naming each part that failed and what would allow it. Threads reads
// back the policy of every thread of a process, for checks and tests.
//
// Only Linux is implemented; elsewhere both return ErrNotSupported.
package rtsched

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ErrNotSupported is returned where the operating system offers no way to
// apply a Request.
var ErrNotSupported = errors.New("realtime scheduling is not supported on this operating system")

// Policy is a Linux scheduling policy; the values are the kernel's.
type Policy uint32

// The policies Threads may report. Apply sets RR or FIFO only.
const (
	Other    Policy = 0 // SCHED_OTHER (SCHED_NORMAL): time-shared, the default
	FIFO     Policy = 1 // SCHED_FIFO: realtime, runs until it blocks or yields
	RR       Policy = 2 // SCHED_RR: realtime, round-robin among equal priorities
	Batch    Policy = 3 // SCHED_BATCH
	Idle     Policy = 5 // SCHED_IDLE
	Deadline Policy = 6 // SCHED_DEADLINE
)

// MaxPriority is the highest realtime priority Linux accepts.
const MaxPriority = 99

func (p Policy) String() string {
	switch p {
	case Other:
		return "SCHED_OTHER"
	case FIFO:
		return "SCHED_FIFO"
	case RR:
		return "SCHED_RR"
	case Batch:
		return "SCHED_BATCH"
	case Idle:
		return "SCHED_IDLE"
	case Deadline:
		return "SCHED_DEADLINE"
	}
	return "SCHED_" + strconv.FormatUint(uint64(p), 10)
}

// Realtime reports whether p is one of the realtime policies a Request may
// ask for.
func (p Policy) Realtime() bool { return p == RR || p == FIFO }

// ParsePolicy reads the configuration's names of the realtime policies:
// "rr" or "fifo".
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "rr":
		return RR, nil
	case "fifo":
		return FIFO, nil
	}
	return 0, fmt.Errorf("%q is not rr or fifo", s)
}

// Request is what Apply is asked to do.
type Request struct {
	// Policy is RR or FIFO.
	Policy Policy
	// Priority is the realtime priority, 1..99; 0 leaves the threads'
	// scheduling as it is (for instance as systemd's CPUSchedulingPolicy
	// set it).
	Priority int
	// LockMemory calls mlockall(MCL_CURRENT|MCL_FUTURE), so that no page
	// the agent needs is swapped out or evicted and faulted back in from
	// disk in the middle of a heartbeat.
	LockMemory bool
}

// Validate checks the request's ranges.
func (r Request) Validate() error {
	if r.Priority < 0 || r.Priority > MaxPriority {
		return fmt.Errorf("realtime priority %d is outside 0..%d", r.Priority, MaxPriority)
	}
	if r.Priority > 0 && !r.Policy.Realtime() {
		return fmt.Errorf("policy %s is not SCHED_RR or SCHED_FIFO", r.Policy)
	}
	return nil
}

// Empty reports whether r asks for nothing at all.
func (r Request) Empty() bool { return r.Priority == 0 && !r.LockMemory }

// String says what r asks for, e.g. "SCHED_RR priority 10 on every thread,
// memory locked".
func (r Request) String() string {
	var parts []string
	if r.Priority > 0 {
		parts = append(parts, fmt.Sprintf("%s priority %d on every thread", r.Policy, r.Priority))
	}
	if r.LockMemory {
		parts = append(parts, "memory locked")
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// Thread is one thread's scheduling as read back from the kernel.
type Thread struct {
	TID      int
	Policy   Policy
	Priority int // realtime priority; 0 under the non-realtime policies
	// ResetOnFork: the kernel starts the thread's children, and the threads
	// it creates, under SCHED_OTHER (SCHED_RESET_ON_FORK).
	ResetOnFork bool
}

func (t Thread) sched() string {
	if t.Policy.Realtime() {
		return fmt.Sprintf("%s priority %d", t.Policy, t.Priority)
	}
	return t.Policy.String()
}

// Report is what took effect.
type Report struct {
	Requested Request
	// Threads is every thread of the process as read back after applying
	// (nil if the read-back failed).
	Threads []Thread
	// MemoryLocked: mlockall succeeded.
	MemoryLocked bool
}

// AtTarget is the number of threads that run under the requested policy
// and priority.
func (r Report) AtTarget() int {
	n := 0
	for _, t := range r.Threads {
		if t.Policy == r.Requested.Policy && t.Priority == r.Requested.Priority {
			n++
		}
	}
	return n
}

// Complete reports whether everything requested took effect.
func (r Report) Complete() bool {
	if r.Requested.Priority > 0 && (len(r.Threads) == 0 || r.AtTarget() != len(r.Threads)) {
		return false
	}
	return !r.Requested.LockMemory || r.MemoryLocked
}

// String says what the process got, e.g. "SCHED_RR priority 10 on all 7
// threads, memory locked" or "SCHED_RR priority 10 on 5 of 7 threads,
// SCHED_OTHER on 2, memory not locked".
func (r Report) String() string {
	var parts []string
	if len(r.Threads) == 0 {
		parts = append(parts, "threads unknown")
	} else {
		parts = append(parts, Summarize(r.Threads))
	}
	if r.MemoryLocked {
		parts = append(parts, "memory locked")
	} else {
		parts = append(parts, "memory not locked")
	}
	return strings.Join(parts, ", ")
}

// Summarize groups threads by their scheduling, the most common first:
// "SCHED_RR priority 10 on all 7 threads" or "SCHED_RR priority 10 on 5 of
// 7 threads, SCHED_OTHER on 2".
func Summarize(threads []Thread) string {
	if len(threads) == 0 {
		return "no threads"
	}
	var order []string
	count := map[string]int{}
	for _, t := range threads {
		s := t.sched()
		if count[s] == 0 {
			order = append(order, s)
		}
		count[s]++
	}
	switch {
	case len(threads) == 1:
		return order[0] + " on the only thread"
	case len(order) == 1:
		return fmt.Sprintf("%s on all %d threads", order[0], len(threads))
	}
	// Most common first; ties keep the order threads were listed in.
	slices.SortStableFunc(order, func(a, b string) int { return count[b] - count[a] })
	parts := []string{fmt.Sprintf("%s on %d of %d threads", order[0], count[order[0]], len(threads))}
	for _, s := range order[1:] {
		parts = append(parts, fmt.Sprintf("%s on %d", s, count[s]))
	}
	return strings.Join(parts, ", ")
}
