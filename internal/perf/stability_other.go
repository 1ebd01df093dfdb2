//go:build !linux

package perf

import (
	"syscall"
	"time"
)

func busyLoopAttr() *syscall.SysProcAttr { return nil }

// normalPriority has nothing to do where no realtime policy is applied.
func normalPriority(pid int) error { return nil }

// machineSteal is unknown here.
func machineSteal() (time.Duration, bool) { return 0, false }
