//go:build linux

package rtsched

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The tests that really change scheduling run in a child: the test binary
// started again with childEnv set, so that the test process itself never
// runs at a realtime priority or with its memory locked.
const childEnv = "RTSCHED_TEST_CHILD"

// childPriority is what the "apply" child asks for: not the default 10, so
// that a process already at 10 (the shell's chrt, a unit) cannot pass for
// it.
const childPriority = 7

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	os.Exit(m.Run())
}

// childResult is what a child writes to its stdout, as one JSON line.
type childResult struct {
	Report Report
	Err    string
	EPERM  bool
}

// runChild applies a request to its own process, starts more threads, says
// what happened and waits for its stdin to close, so the test can look at
// it in /proc while it holds still.
func runChild(mode string) int {
	req := Request{Policy: RR, Priority: childPriority, LockMemory: true}
	if mode == "denied" {
		// Lower our own soft limits (anyone may) so that the refusal does
		// not depend on how the machine set them.
		for res, v := range map[int]uint64{unix.RLIMIT_RTPRIO: 0, unix.RLIMIT_MEMLOCK: 64 << 10} {
			var r unix.Rlimit
			if err := unix.Getrlimit(res, &r); err == nil {
				r.Cur = min(v, r.Max)
				_ = unix.Setrlimit(res, &r)
			}
		}
		req.Priority = 10
	}
	rep, err := Apply(req)
	// Threads created from now on must inherit the policy: each goroutine
	// locked to its thread keeps that thread, so the runtime needs others
	// for the rest.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			runtime.LockOSThread()
			wg.Done()
			<-stop
		}()
	}
	wg.Wait()
	res := childResult{Report: rep, EPERM: errors.Is(err, unix.EPERM)}
	if err != nil {
		res.Err = err.Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 1
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	close(stop)
	return 0
}

// startChild starts the test binary in mode and returns its PID and
// result; the child exits when the test ends.
func startChild(t *testing.T, mode string, cred *syscall.Credential) (int, childResult) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if cred != nil {
		// Another user must be able to run the binary: a copy in a
		// directory everyone may enter.
		exe = copyExecutable(t, exe)
		dir = filepath.Dir(exe)
	}
	cmd := exec.Command(exe)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("child %s: %v", mode, err)
		}
	})
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		t.Fatalf("child %s said nothing: %v", mode, err)
	}
	var res childResult
	if err := json.Unmarshal(line, &res); err != nil {
		t.Fatalf("child %s: %v: %s", mode, err, line)
	}
	return cmd.Process.Pid, res
}

func copyExecutable(t *testing.T, exe string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rtsched-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "rtsched.test")
	if err := os.WriteFile(dst, src, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// procSched reads every thread's policy and realtime priority of pid from
// /proc/PID/task/TID/stat, independently of the package's own read-back.
func procSched(t *testing.T, pid int) map[int][2]int {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int][2]int{}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			t.Fatal(err)
		}
		// The fields after the command name, which may hold spaces, start
		// with field 3 (state); rt_priority is field 40, policy field 41.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		prio, err1 := strconv.Atoi(f[40-3])
		policy, err2 := strconv.Atoi(f[41-3])
		if err1 != nil || err2 != nil {
			t.Fatalf("%s/%d/stat: %s", dir, tid, b)
		}
		out[tid] = [2]int{policy, prio}
	}
	return out
}

// vmLocked returns VmLck of /proc/PID/status in kB.
func vmLocked(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmLck:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatalf("VmLck: %q", v)
			}
			return n
		}
	}
	t.Fatal("no VmLck in /proc/PID/status")
	return 0
}

func TestApplySetsEveryThreadOfAProcess(t *testing.T) {
	if os.Geteuid() != 0 || !hasCap(unix.CAP_SYS_NICE) || !hasCap(unix.CAP_IPC_LOCK) {
		t.Skip("SKIP: setting SCHED_RR and locking memory needs root (with CAP_SYS_NICE and CAP_IPC_LOCK)")
	}
	pid, res := startChild(t, "apply", nil)
	if res.Err != "" {
		t.Fatalf("Apply: %s", res.Err)
	}
	if !res.Report.Complete() || !res.Report.MemoryLocked {
		t.Errorf("report: %s", res.Report)
	}
	threads := procSched(t, pid)
	// The main thread, the runtime's, and the four locked ones: more than
	// Apply saw for most of them.
	if len(threads) < 5 {
		t.Errorf("only %d threads: the child did not start its own", len(threads))
	}
	for tid, s := range threads {
		if s != [2]int{int(RR), childPriority} {
			t.Errorf("thread %d: policy %d priority %d, want SCHED_RR (%d) priority %d", tid, s[0], s[1], RR, childPriority)
		}
	}
	// The package's own read-back agrees with /proc.
	back, err := Threads(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, th := range back {
		if s, ok := threads[th.TID]; ok && s != [2]int{int(th.Policy), th.Priority} {
			t.Errorf("Threads says %+v, /proc says %v", th, s)
		}
	}
	if kb := vmLocked(t, pid); kb == 0 {
		t.Error("VmLck is 0 after mlockall")
	}
	t.Logf("child %d: %s; /proc: %d threads at SCHED_RR %d", pid, res.Report, len(threads), childPriority)
}

func TestApplyWithoutPrivilegeNamesWhatItNeeds(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: running the child as an unprivileged user needs root")
	}
	pid, res := startChild(t, "denied", &syscall.Credential{Uid: 65534, Gid: 65534})
	if !res.EPERM {
		t.Errorf("the error does not wrap EPERM: %q", res.Err)
	}
	for _, want := range []string{"setting SCHED_RR priority 10 on", "operation not permitted", "needs root or CAP_SYS_NICE",
		"RLIMIT_RTPRIO of at least 10 (it is 0; systemd: LimitRTPRIO=10)",
		"locking memory (mlockall): not attempted: RLIMIT_MEMLOCK is 64 KiB", "LimitMEMLOCK=infinity"} {
		if !strings.Contains(res.Err, want) {
			t.Errorf("error lacks %q:\n%s", want, res.Err)
		}
	}
	if res.Report.Complete() || res.Report.MemoryLocked || res.Report.AtTarget() != 0 || len(res.Report.Threads) == 0 {
		t.Errorf("report: %s", res.Report)
	}
	for tid, s := range procSched(t, pid) {
		if s[0] == int(RR) || s[0] == int(FIFO) {
			t.Errorf("thread %d is realtime (%v) though Apply was refused", tid, s)
		}
	}
	if kb := vmLocked(t, pid); kb != 0 {
		t.Errorf("VmLck is %d kB though mlockall was not attempted", kb)
	}
	t.Logf("refused as expected: %s", res.Err)
}
