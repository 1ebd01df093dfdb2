package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/healthcheck/internal/vicitest"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func charonLike(s *vicitest.Server) {
	s.Handle("version", func() []vicitest.Item {
		return []vicitest.Item{vicitest.KV("daemon", "charon-systemd"), vicitest.KV("version", "5.9.8")}
	})
	s.Handle("stats", func() []vicitest.Item {
		return []vicitest.Item{
			vicitest.Sec("workers", vicitest.KV("total", "16"), vicitest.KV("idle", "11")),
			vicitest.Sec("ikesas", vicitest.KV("total", "3"), vicitest.KV("half-open", "1")),
		}
	})
}

func TestVICIAnswers(t *testing.T) {
	s := vicitest.Start(t)
	charonLike(s)
	if err := NewVICI(s.Path).Run(ctxT(t, 2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if s.Calls("version") != 1 || s.Calls("stats") != 1 {
		t.Fatalf("calls version=%d stats=%d", s.Calls("version"), s.Calls("stats"))
	}
	st, err := ReadStats(ctxT(t, 2*time.Second), s.Path)
	if err != nil {
		t.Fatal(err)
	}
	if st != (Stats{IKESAs: 3, HalfOpen: 1, Workers: 16, IdleWorkers: 11}) {
		t.Fatalf("stats %+v", st)
	}
}

func TestVICIHangTimesOut(t *testing.T) {
	s := vicitest.Start(t)
	charonLike(s)
	s.SetHang(true)
	start := time.Now()
	err := NewVICI(s.Path).Run(ctxT(t, 200*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("hung for %v", d)
	}
}

func TestVICIFailures(t *testing.T) {
	if err := NewVICI(filepath.Join(t.TempDir(), "none.vici")).Run(ctxT(t, time.Second)); err == nil || !strings.Contains(err.Error(), "connecting to VICI") {
		t.Fatalf("missing socket: %v", err)
	}
	s := vicitest.Start(t)
	s.Handle("version", func() []vicitest.Item { return []vicitest.Item{vicitest.KV("daemon", "charon")} })
	if err := NewVICI(s.Path).Run(ctxT(t, time.Second)); err == nil {
		t.Fatal("unknown stats command accepted")
	}
	s.Handle("stats", func() []vicitest.Item { return []vicitest.Item{vicitest.Sec("ikesas", vicitest.KV("total", "x"))} })
	if err := NewVICI(s.Path).Run(ctxT(t, time.Second)); !errors.Is(err, ErrBadReply) {
		t.Fatalf("bad stats: %v", err)
	}
	s.Handle("version", func() []vicitest.Item { return nil })
	if err := NewVICI(s.Path).Run(ctxT(t, time.Second)); !errors.Is(err, ErrBadReply) {
		t.Fatalf("version without daemon: %v", err)
	}
}

// A real child process: running, stopped, continued, dead.
func TestProcessStates(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("SKIP: cannot start sleep: %v", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })

	p := &Process{PID: func() (int, error) { return pid, nil }, Comm: "sleep"}
	ctx := ctxT(t, 5*time.Second)
	if err := p.Run(ctx); err != nil {
		t.Fatalf("running: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return errors.Is(p.Run(ctx), ErrStopped) }, "stopped state")
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return p.Run(ctx) == nil }, "running again")

	wrong := &Process{PID: p.PID, Comm: "charon"}
	if err := wrong.Run(ctx); !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "stale PID") {
		t.Fatalf("wrong comm: %v", err)
	}
	byName := &Process{Comm: "sleep"}
	if err := byName.Run(ctx); err != nil {
		t.Fatalf("scan: %v", err)
	}

	_ = cmd.Process.Kill()
	<-exited
	if err := p.Run(ctx); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("dead: %v", err)
	}
}

func TestProcessPIDFile(t *testing.T) {
	dir := t.TempDir()
	pf := filepath.Join(dir, "charon.pid")
	p := &Process{PIDFile: pf}
	ctx := ctxT(t, time.Second)
	if err := p.Run(ctx); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("missing pid file: %v", err)
	}
	if err := os.WriteFile(pf, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Run(ctx); err != nil {
		t.Fatalf("own pid: %v", err)
	}
	if err := os.WriteFile(pf, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Run(ctx); err == nil {
		t.Fatal("garbage PID accepted")
	}
}

// A fake /proc stands in for states a test cannot produce on demand
// (zombie) and for names with spaces and parentheses.
func TestProcessStatParsing(t *testing.T) {
	root := t.TempDir()
	write := fakeProc(t, root)
	write(10, "char) on", "10 (char) on) S 1 10 10 0")
	write(11, "charon", "11 (charon) Z 1 11 11 0")
	write(12, "charon", "12 (charon) t 1 12 12 0")
	write(13, "charon", "13 (charon")
	ctx := ctxT(t, time.Second)
	for pid, want := range map[int]error{10: nil, 11: ErrNotRunning, 12: ErrStopped, 14: ErrNotRunning} {
		err := (&Process{Proc: root, PID: func() (int, error) { return pid, nil }}).Run(ctx)
		if want == nil && err != nil || want != nil && !errors.Is(err, want) {
			t.Errorf("pid %d: got %v, want %v", pid, err, want)
		}
	}
	if err := (&Process{Proc: root, PID: func() (int, error) { return 13, nil }}).Run(ctx); err == nil || !strings.Contains(err.Error(), "unparsable") {
		t.Errorf("truncated stat: %v", err)
	}
	if err := (&Process{Proc: root, Comm: "pluto"}).Run(ctx); !errors.Is(err, ErrNotRunning) {
		t.Errorf("scan without match: %v", err)
	}
}

// The scan remembers the PID it found and checks it first; a remembered
// PID that is now another program, or a zombie, must not pass.
func TestProcessScanRemembersAndRechecks(t *testing.T) {
	root := t.TempDir()
	proc := fakeProc(t, root)
	write := func(pid int, comm, state string) {
		proc(pid, comm, fmt.Sprintf("%d (%s) %s 1 1 1 0", pid, comm, state))
	}
	ctx := ctxT(t, time.Second)
	p := &Process{Proc: root, Comm: "charon-systemd"}
	write(100, "charon-systemd", "S")
	if err := p.Run(ctx); err != nil || p.seen.Load() != 100 {
		t.Fatalf("first scan: %v, remembered %d", err, p.seen.Load())
	}
	// PID 100 is reused by another program; charon now runs as 200.
	write(100, "bash", "S")
	write(200, "charon-systemd", "S")
	if err := p.Run(ctx); err != nil || p.seen.Load() != 200 {
		t.Fatalf("scan after PID reuse: %v, remembered %d, want 200", err, p.seen.Load())
	}
	write(200, "charon-systemd", "Z")
	if err := p.Run(ctx); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("remembered PID now a zombie: %v, want ErrNotRunning", err)
	}
}

// fakeProc returns a function that writes a process's comm and stat
// files under root, a stand-in for /proc.
func fakeProc(t *testing.T, root string) func(pid int, comm, stat string) {
	return func(pid int, comm, stat string) {
		d := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(d, "comm"), []byte(comm+"\n"), 0o644)
		_ = os.WriteFile(filepath.Join(d, "stat"), []byte(stat), 0o644)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
