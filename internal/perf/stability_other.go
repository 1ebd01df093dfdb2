//go:build !linux

package perf

import "syscall"

func busyLoopAttr() *syscall.SysProcAttr { return nil }

// normalPriority has nothing to do where no realtime policy is applied.
func normalPriority(pid int) error { return nil }
