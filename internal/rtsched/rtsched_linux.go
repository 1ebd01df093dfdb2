//go:build linux

package rtsched

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Apply sets req on the calling process: the policy on every thread it has
// (listed in /proc/self/task; threads created afterwards inherit it from
// their creator) and, if asked, mlockall. It does not block.
//
// The Report is read back from the kernel after applying, so it shows what
// took effect even when the error says part of it failed: threads that
// already ran under the requested policy (systemd's CPUSchedulingPolicy)
// count as set, and a refused thread keeps what it had.
func Apply(req Request) (Report, error) { return kernel().apply(req) }

// Threads reads back the scheduling of every thread of process pid (0: the
// calling process). Threads that exit while it reads are left out.
func Threads(pid int) ([]Thread, error) { return kernel().threads(pid) }

// maxPasses bounds the passes over /proc/self/task. A pass that finds every
// thread already set ends it: a thread created later has a set creator, so
// it inherits the policy. Two passes are the rule; more mean threads are
// being created by threads not yet set while Apply runs.
const maxPasses = 8

// sys is the part of the kernel Apply uses. Tests replace it to reach the
// refusals without root.
type sys struct {
	tids     func(pid int) ([]int, error)
	get      func(tid int) (Thread, error)
	set      func(tid int, p Policy, priority int) error
	mlockall func() error
	// rlimit returns the soft limit of resource.
	rlimit func(resource int) (uint64, error)
	// hasCap reports whether the calling thread has capability c in its
	// effective set.
	hasCap func(c int) bool
}

func kernel() sys {
	return sys{tids: listTIDs, get: getThread, set: setThread, mlockall: mlockall, rlimit: softLimit, hasCap: hasCap}
}

func listTIDs(pid int) ([]int, error) {
	dir := "/proc/self/task"
	if pid != 0 {
		dir = "/proc/" + strconv.Itoa(pid) + "/task"
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

func getThread(tid int) (Thread, error) {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return Thread{}, err
	}
	return Thread{TID: tid, Policy: Policy(a.Policy), Priority: int(a.Priority),
		ResetOnFork: a.Flags&unix.SCHED_FLAG_RESET_ON_FORK != 0}, nil
}

// setThread uses sched_setattr with no flags, which also clears
// SCHED_RESET_ON_FORK: with it, every thread the Go runtime creates later
// would start under SCHED_OTHER.
func setThread(tid int, p Policy, priority int) error {
	return unix.SchedSetAttr(tid, &unix.SchedAttr{Policy: uint32(p), Priority: uint32(priority)}, 0)
}

func mlockall() error { return unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE) }

func softLimit(resource int) (uint64, error) {
	var r unix.Rlimit
	if err := unix.Getrlimit(resource, &r); err != nil {
		return 0, err
	}
	return r.Cur, nil
}

func hasCap(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

func (s sys) apply(req Request) (Report, error) {
	rep := Report{Requested: req}
	if err := req.Validate(); err != nil {
		return rep, err
	}
	var errs []error
	if req.Priority > 0 {
		errs = append(errs, s.setAll(req)...)
	}
	if req.LockMemory {
		if err := s.lockMemory(); err != nil {
			errs = append(errs, err)
		} else {
			rep.MemoryLocked = true
		}
	}
	threads, err := s.threads(0)
	if err != nil {
		errs = append(errs, fmt.Errorf("reading back the threads' scheduling: %w", err))
	}
	rep.Threads = threads
	return rep, join(errs)
}

// joined is errors.Join on one line: the error ends up in one log line.
type joined []error

func (j joined) Error() string {
	s := make([]string, len(j))
	for i, e := range j {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (j joined) Unwrap() []error { return j }

func join(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return joined(errs)
}

// setAll sets req on every thread until a pass over /proc/self/task finds
// nothing left to do. A thread the kernel refused is not asked again.
func (s sys) setAll(req Request) []error {
	refused := map[int]error{}
	var order []int // refused TIDs in the order they were refused
	seen := map[int]bool{}
	resetOnFork := false
	settled := false
	for pass := 0; pass < maxPasses && !settled; pass++ {
		tids, err := s.tids(0)
		if err != nil {
			return []error{fmt.Errorf("setting %s priority %d: listing the threads in /proc/self/task: %w", req.Policy, req.Priority, err)}
		}
		settled = true
		for _, tid := range tids {
			if _, ok := refused[tid]; ok {
				continue
			}
			t, err := s.get(tid)
			if errors.Is(err, unix.ESRCH) {
				continue // exited since the listing
			}
			seen[tid] = true
			if err == nil && t.Policy == req.Policy && t.Priority == req.Priority && !t.ResetOnFork {
				continue
			}
			settled = false
			resetOnFork = resetOnFork || err == nil && t.ResetOnFork
			if err := s.set(tid, req.Policy, req.Priority); err != nil && !errors.Is(err, unix.ESRCH) {
				refused[tid] = err
				order = append(order, tid)
			}
		}
	}
	var errs []error
	// One error per distinct cause, naming the threads it refused.
	for len(order) > 0 {
		cause := refused[order[0]]
		var tids, rest []int
		for _, tid := range order {
			if errors.Is(refused[tid], cause) {
				tids = append(tids, tid)
			} else {
				rest = append(rest, tid)
			}
		}
		errs = append(errs, fmt.Errorf("setting %s priority %d on %d of %d threads (%s): %w%s",
			req.Policy, req.Priority, len(tids), len(seen), tidList(tids), cause, s.setHint(req, cause, resetOnFork)))
		order = rest
	}
	if !settled {
		errs = append(errs, fmt.Errorf("setting %s priority %d: threads were still appearing under another policy after %d passes over /proc/self/task", req.Policy, req.Priority, maxPasses))
	}
	return errs
}

// setHint says what would let the kernel grant a refused sched_setattr.
func (s sys) setHint(req Request, cause error, resetOnFork bool) string {
	if !errors.Is(cause, unix.EPERM) {
		return ""
	}
	limit, err := s.rlimit(unix.RLIMIT_RTPRIO)
	have := "unknown"
	if err == nil {
		have = limitString(limit, false)
	}
	h := fmt.Sprintf(": needs root or CAP_SYS_NICE, or RLIMIT_RTPRIO of at least %d (it is %s; systemd: LimitRTPRIO=%d)",
		req.Priority, have, req.Priority)
	if resetOnFork {
		h += "; the threads have SCHED_RESET_ON_FORK (systemd's CPUSchedulingResetOnFork=yes, chrt -R), which only CAP_SYS_NICE may clear, and with it every new thread starts as SCHED_OTHER"
	} else if err == nil && limit >= uint64(req.Priority) {
		// The limit allows it, so something else refused: a seccomp
		// filter answers EPERM too.
		h += "; RLIMIT_RTPRIO allows it, so a seccomp filter may refuse it (systemd: RestrictRealtime=yes)"
	}
	return h
}

// lockMemory calls mlockall, unless the limit would make it dangerous.
func (s sys) lockMemory() error {
	limit, err := s.rlimit(unix.RLIMIT_MEMLOCK)
	if err != nil {
		return fmt.Errorf("locking memory: reading RLIMIT_MEMLOCK: %w", err)
	}
	if limit != unix.RLIM_INFINITY && !s.hasCap(unix.CAP_IPC_LOCK) {
		// With MCL_FUTURE every later mapping past the limit fails, and
		// the Go runtime treats a failed heap mapping as fatal: the process
		// would crash when its heap grows. The kernel also counts the
		// runtime's address space reservations (VmSize, about 1 GiB), so
		// a finite limit that lets MCL_CURRENT pass is rarely big enough.
		return fmt.Errorf("locking memory (mlockall): not attempted: RLIMIT_MEMLOCK is %s and the process lacks CAP_IPC_LOCK, so the process would crash once its heap outgrew the limit: needs root or CAP_IPC_LOCK, or an unlimited RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=infinity)",
			limitString(limit, true))
	}
	if err := s.mlockall(); err != nil {
		hint := ""
		if errors.Is(err, unix.EPERM) {
			// The limits allow it, so a seccomp filter refused it.
			hint = ": a seccomp filter may refuse it (systemd: a SystemCallFilter without @memlock)"
		}
		return fmt.Errorf("locking memory (mlockall MCL_CURRENT|MCL_FUTURE): %w%s", err, hint)
	}
	return nil
}

func (s sys) threads(pid int) ([]Thread, error) {
	tids, err := s.tids(pid)
	if err != nil {
		return nil, fmt.Errorf("listing the threads of process %s: %w", pidName(pid), err)
	}
	out := make([]Thread, 0, len(tids))
	for _, tid := range tids {
		t, err := s.get(tid)
		if errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading the scheduling of thread %d: %w", tid, err)
		}
		out = append(out, t)
	}
	return out, nil
}

func pidName(pid int) string {
	if pid == 0 {
		return "self"
	}
	return strconv.Itoa(pid)
}

// tidList names up to five TIDs.
func tidList(tids []int) string {
	tids = slices.Sorted(slices.Values(tids))
	var b strings.Builder
	b.WriteString("tid ")
	for i, t := range tids {
		if i == 5 {
			fmt.Fprintf(&b, " and %d more", len(tids)-5)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(t))
	}
	return b.String()
}

// limitString formats a resource limit, as bytes if asBytes.
func limitString(v uint64, asBytes bool) string {
	switch {
	case v == unix.RLIM_INFINITY:
		return "unlimited"
	case !asBytes:
		return strconv.FormatUint(v, 10)
	case v >= 1<<30 && v%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", v>>30)
	case v >= 1<<20 && v%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", v>>20)
	case v >= 1<<10 && v%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", v>>10)
	}
	return fmt.Sprintf("%d bytes", v)
}
