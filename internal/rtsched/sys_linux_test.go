//go:build linux

package rtsched

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeKernel stands in for the kernel so that the refusals can be tested
// without root.
type fakeKernel struct {
	threads map[int]Thread
	// listings are what successive listings of /proc/self/task return;
	// the last one repeats.
	listings [][]int
	listed   int
	// refuse answers sched_setattr for a TID (nil: granted).
	refuse   func(tid int) error
	sets     int
	rtprio   uint64
	memlock  uint64
	ipcLock  bool
	mlockErr error
	mlocked  int
}

func (k *fakeKernel) sys() sys {
	return sys{
		tids: func(int) ([]int, error) {
			l := k.listings[min(k.listed, len(k.listings)-1)]
			k.listed++
			return l, nil
		},
		get: func(tid int) (Thread, error) {
			t, ok := k.threads[tid]
			if !ok {
				return Thread{}, unix.ESRCH
			}
			return t, nil
		},
		set: func(tid int, p Policy, prio int) error {
			k.sets++
			if _, ok := k.threads[tid]; !ok {
				return unix.ESRCH
			}
			if k.refuse != nil {
				if err := k.refuse(tid); err != nil {
					return err
				}
			}
			k.threads[tid] = Thread{TID: tid, Policy: p, Priority: prio}
			return nil
		},
		mlockall: func() error {
			k.mlocked++
			return k.mlockErr
		},
		rlimit: func(res int) (uint64, error) {
			if res == unix.RLIMIT_RTPRIO {
				return k.rtprio, nil
			}
			return k.memlock, nil
		},
		hasCap: func(c int) bool { return c == unix.CAP_IPC_LOCK && k.ipcLock },
	}
}

func others(tids ...int) map[int]Thread {
	m := map[int]Thread{}
	for _, t := range tids {
		m[t] = Thread{TID: t}
	}
	return m
}

var rr10 = Request{Policy: RR, Priority: 10, LockMemory: true}

func TestApplyEveryThreadIncludingNewOnes(t *testing.T) {
	// Thread 4 appears between the listings, created under SCHED_OTHER
	// (by a thread not yet set).
	k := &fakeKernel{threads: others(1, 2, 3, 4), listings: [][]int{{1, 2, 3}, {1, 2, 3, 4}}, memlock: unix.RLIM_INFINITY}
	rep, err := k.sys().apply(rr10)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Complete() || rep.AtTarget() != 4 || !rep.MemoryLocked || k.mlocked != 1 {
		t.Fatalf("report %+v (%s), mlockall called %d times", rep, rep, k.mlocked)
	}
	if got := rep.String(); got != "SCHED_RR priority 10 on all 4 threads, memory locked" {
		t.Errorf("report says %q", got)
	}
}

func TestApplySkipsThreadsAlreadySet(t *testing.T) {
	// As systemd's CPUSchedulingPolicy leaves them: nothing to set, so a
	// process without the privilege to set it still succeeds.
	k := &fakeKernel{threads: map[int]Thread{1: {TID: 1, Policy: RR, Priority: 10}, 2: {TID: 2, Policy: RR, Priority: 10}},
		listings: [][]int{{1, 2}}, memlock: unix.RLIM_INFINITY, refuse: func(int) error { return unix.EPERM }}
	if rep, err := k.sys().apply(rr10); err != nil || !rep.Complete() || k.sets != 0 {
		t.Fatalf("err %v, report %s, %d sched_setattr calls", err, rep, k.sets)
	}
}

func TestApplyNamesThePermissionItLacks(t *testing.T) {
	k := &fakeKernel{threads: others(11, 12, 13), listings: [][]int{{11, 12, 13}}, rtprio: 0, memlock: 8 << 20,
		refuse: func(int) error { return unix.EPERM }}
	rep, err := k.sys().apply(rr10)
	if err == nil {
		t.Fatal("no error")
	}
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("error does not wrap EPERM: %v", err)
	}
	for _, want := range []string{"setting SCHED_RR priority 10 on 3 of 3 threads (tid 11, 12, 13)", "operation not permitted",
		"needs root or CAP_SYS_NICE", "RLIMIT_RTPRIO of at least 10 (it is 0; systemd: LimitRTPRIO=10)",
		"locking memory (mlockall): not attempted: RLIMIT_MEMLOCK is 8 MiB", "LimitMEMLOCK=infinity"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if k.mlocked != 0 {
		t.Error("mlockall called under a finite RLIMIT_MEMLOCK without CAP_IPC_LOCK")
	}
	if rep.Complete() || rep.MemoryLocked || rep.String() != "SCHED_OTHER on all 3 threads, memory not locked" {
		t.Errorf("report: %s", rep)
	}
}

func TestApplyReportsPartialSuccess(t *testing.T) {
	k := &fakeKernel{threads: others(1, 2, 3), listings: [][]int{{1, 2, 3, 4}}, memlock: unix.RLIM_INFINITY, ipcLock: true,
		refuse: func(tid int) error {
			if tid == 2 {
				return unix.EPERM
			}
			return nil
		}}
	// Thread 4 exited between the listing and the call: not a failure.
	rep, err := k.sys().apply(rr10)
	if err == nil || !strings.Contains(err.Error(), "on 1 of 3 threads (tid 2)") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "locking memory") || !rep.MemoryLocked {
		t.Errorf("memory: locked %v, err %v", rep.MemoryLocked, err)
	}
	if got := rep.String(); got != "SCHED_RR priority 10 on 2 of 3 threads, SCHED_OTHER on 1, memory locked" {
		t.Errorf("report says %q", got)
	}
}

func TestApplyGroupsDistinctCauses(t *testing.T) {
	k := &fakeKernel{threads: others(1, 2, 3), listings: [][]int{{1, 2, 3}},
		refuse: func(tid int) error {
			if tid == 3 {
				return unix.EINVAL
			}
			return unix.EPERM
		}}
	_, err := k.sys().apply(Request{Policy: FIFO, Priority: 20})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if !strings.Contains(msg, "SCHED_FIFO priority 20 on 2 of 3 threads (tid 1, 2): operation not permitted") ||
		!strings.Contains(msg, "on 1 of 3 threads (tid 3): invalid argument") || !errors.Is(err, unix.EINVAL) {
		t.Errorf("err = %v", err)
	}
	if strings.Count(msg, "CAP_SYS_NICE") != 1 {
		t.Errorf("the permission hint should follow the EPERM only:\n%s", msg)
	}
}

func TestApplyHintsAtSeccompWhenTheLimitAllows(t *testing.T) {
	k := &fakeKernel{threads: others(1), listings: [][]int{{1}}, rtprio: 10, refuse: func(int) error { return unix.EPERM }}
	_, err := k.sys().apply(Request{Policy: RR, Priority: 10})
	if err == nil || !strings.Contains(err.Error(), "RestrictRealtime=yes") {
		t.Errorf("err = %v", err)
	}
}

func TestApplyClearsResetOnFork(t *testing.T) {
	// At the right policy but with SCHED_RESET_ON_FORK: new threads would
	// start as SCHED_OTHER, so it must be set again without the flag.
	k := &fakeKernel{threads: map[int]Thread{1: {TID: 1, Policy: RR, Priority: 10, ResetOnFork: true}}, listings: [][]int{{1}}}
	if _, err := k.sys().apply(Request{Policy: RR, Priority: 10}); err != nil || k.sets != 1 || k.threads[1].ResetOnFork {
		t.Fatalf("err %v, %d sets, thread %+v", err, k.sets, k.threads[1])
	}
	k.threads[1] = Thread{TID: 1, Policy: RR, Priority: 10, ResetOnFork: true}
	k.refuse = func(int) error { return unix.EPERM }
	if _, err := k.sys().apply(Request{Policy: RR, Priority: 10}); err == nil || !strings.Contains(err.Error(), "SCHED_RESET_ON_FORK") {
		t.Errorf("err = %v", err)
	}
}

func TestApplyWrapsMlockallError(t *testing.T) {
	k := &fakeKernel{threads: others(1), listings: [][]int{{1}}, memlock: unix.RLIM_INFINITY, mlockErr: unix.EAGAIN}
	rep, err := k.sys().apply(Request{LockMemory: true})
	if !errors.Is(err, unix.EAGAIN) || !strings.Contains(err.Error(), "locking memory (mlockall MCL_CURRENT|MCL_FUTURE)") || rep.MemoryLocked {
		t.Errorf("err %v, report %s", err, rep)
	}
	if k.sets != 0 {
		t.Error("priority 0 must leave the scheduling alone")
	}
	if rep.String() != "SCHED_OTHER on the only thread, memory not locked" {
		t.Errorf("report %s", rep)
	}
}

func TestApplyRefusesInvalidRequests(t *testing.T) {
	for _, req := range []Request{{Policy: RR, Priority: 100}, {Policy: RR, Priority: -1}, {Policy: Other, Priority: 5}, {Policy: Deadline, Priority: 5}} {
		k := &fakeKernel{threads: others(1), listings: [][]int{{1}}}
		if _, err := k.sys().apply(req); err == nil || k.sets != 0 || k.listed != 0 {
			t.Errorf("%+v: err %v, %d sets", req, err, k.sets)
		}
	}
}

func TestApplyGivesUpOnEndlessNewThreads(t *testing.T) {
	// Every listing shows a new thread under SCHED_OTHER: bounded passes.
	k := &fakeKernel{threads: map[int]Thread{}}
	for i := 1; i <= maxPasses+2; i++ {
		k.threads[i] = Thread{TID: i}
		var l []int
		for j := 1; j <= i; j++ {
			l = append(l, j)
		}
		k.listings = append(k.listings, l)
	}
	_, err := k.sys().apply(Request{Policy: RR, Priority: 1})
	if err == nil || !strings.Contains(err.Error(), "still appearing") || k.listed > maxPasses+1 {
		t.Errorf("err %v after %d listings", err, k.listed)
	}
}
