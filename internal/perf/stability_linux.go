//go:build linux

package perf

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// busyLoopAttr ends a busy loop with its parent thread's death, so that a
// driver killed outright (SIGKILL, which no defer survives) leaves no
// process burning the CPU behind it. The Go runtime does not end its
// threads, except under a goroutine that exits locked to one, and the
// driver starts its loops from no such goroutine; an early exit is still
// noticed and reported (busyLoops.exited).
func busyLoopAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// normalPriority makes sure process pid runs under SCHED_OTHER: a child
// inherits its parent thread's policy, so a loop started from a driver
// already running under a realtime policy (chrt, a systemd unit) would
// starve the very threads it is meant to compete with.
func normalPriority(pid int) error {
	a, err := unix.SchedGetAttr(pid, 0)
	if err != nil {
		return fmt.Errorf("reading the scheduling of process %d: %w", pid, err)
	}
	if a.Policy != unix.SCHED_FIFO && a.Policy != unix.SCHED_RR {
		return nil
	}
	if err := unix.SchedSetAttr(pid, &unix.SchedAttr{Policy: unix.SCHED_NORMAL}, 0); err != nil {
		return fmt.Errorf("setting process %d to SCHED_OTHER: %w", pid, err)
	}
	return nil
}

// machineSteal reads the time the hypervisor kept this machine's vCPUs
// from running, summed over the CPUs (/proc/stat's steal column). A
// virtual machine stalled by its host stalls every thread at once, the
// agents' heartbeats included: no priority inside the machine helps.
// USER_HZ is 100 on every Linux the project runs on.
func machineSteal() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	// cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0, false
	}
	ticks, err := strconv.ParseUint(string(f[8]), 10, 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(ticks) * 10 * time.Millisecond, true
}
