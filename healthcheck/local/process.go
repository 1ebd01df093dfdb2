package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
)

// Process errors.
var (
	// ErrNotRunning: no such process, a zombie, or another program.
	ErrNotRunning = errors.New("charon not running")
	// ErrStopped: the process exists but is stopped (SIGSTOP, a
	// debugger): it answers nothing.
	ErrStopped = errors.New("charon stopped")
)

// Process checks that the charon process is alive and running. It finds
// the PID through PIDFile (charon's /var/run/charon.pid), through PID, or
// else by scanning /proc for a process named Comm (charon-systemd writes no
// PID file).
type Process struct {
	// PIDFile holds the PID as text.
	PIDFile string
	// PID returns the PID, for supervisors that know it.
	PID func() (int, error)
	// Comm is the expected process name (/proc/PID/comm), checked when
	// set; it is required for the /proc scan. Usually "charon" or
	// "charon-systemd".
	Comm string
	// Proc is the proc filesystem's root, "/proc" if empty.
	Proc string

	// seen is the PID the last scan found (0: none). A scan checks it
	// first: a full /proc walk every interval is hundreds of file reads,
	// which cost a fifth of an idle agent's CPU in the UML lab.
	seen atomic.Int64
}

// Name is "process".
func (p *Process) Name() string { return "process" }

func (p *Process) proc() string {
	if p.Proc == "" {
		return "/proc"
	}
	return p.Proc
}

// Run finds the PID and checks the process's state.
func (p *Process) Run(ctx context.Context) error {
	if p.PIDFile == "" && p.PID == nil && p.Comm != "" {
		return p.scan()
	}
	pid, err := p.findPID()
	if err != nil {
		return err
	}
	return p.checkPID(pid)
}

func (p *Process) findPID() (int, error) {
	switch {
	case p.PIDFile != "":
		b, err := os.ReadFile(p.PIDFile)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return 0, fmt.Errorf("reading PID file %s: %w: %w", p.PIDFile, ErrNotRunning, err)
			}
			return 0, fmt.Errorf("reading PID file %s: %w", p.PIDFile, err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			return 0, fmt.Errorf("reading PID file %s: bad PID %q", p.PIDFile, bytes.TrimSpace(b))
		}
		return pid, nil
	case p.PID != nil:
		pid, err := p.PID()
		if err != nil {
			return 0, fmt.Errorf("finding charon's PID: %w", err)
		}
		if pid <= 0 {
			return 0, fmt.Errorf("finding charon's PID: %w: none", ErrNotRunning)
		}
		return pid, nil
	}
	return 0, errors.New("process check: no PID file, PID function or process name")
}

// scan passes when any process named Comm is alive and running; zombies
// and stopped ones with that name do not count.
func (p *Process) scan() error {
	if pid := int(p.seen.Load()); pid > 0 {
		if comm, err := p.comm(pid); err == nil && comm == p.Comm && p.checkPID(pid) == nil {
			return nil
		}
		p.seen.Store(0)
	}
	ents, err := os.ReadDir(p.proc())
	if err != nil {
		return fmt.Errorf("scanning %s for %s: %w", p.proc(), p.Comm, err)
	}
	var first error
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, err := p.comm(pid); err != nil || comm != p.Comm {
			continue
		}
		err = p.checkPID(pid)
		if err == nil {
			p.seen.Store(int64(pid))
			return nil
		}
		if first == nil {
			first = err
		}
	}
	if first != nil {
		return first
	}
	return fmt.Errorf("scanning %s: %w: no process named %s", p.proc(), ErrNotRunning, p.Comm)
}

func (p *Process) comm(pid int) (string, error) {
	b, err := os.ReadFile(filepath.Join(p.proc(), strconv.Itoa(pid), "comm"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// checkPID reads /proc/PID/stat. Its state is the field after the
// parenthesised name, which may itself contain spaces and parentheses.
func (p *Process) checkPID(pid int) error {
	b, err := os.ReadFile(filepath.Join(p.proc(), strconv.Itoa(pid), "stat"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("checking pid %d: %w: no such process", pid, ErrNotRunning)
		}
		return fmt.Errorf("checking pid %d: %w", pid, err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return fmt.Errorf("checking pid %d: unparsable stat %q", pid, b)
	}
	if p.Comm != "" {
		if comm, err := p.comm(pid); err == nil && comm != p.Comm {
			return fmt.Errorf("checking pid %d: %w: it is %q, not %q (stale PID)", pid, ErrNotRunning, comm, p.Comm)
		}
	}
	switch state := b[i+2]; state {
	case 'Z', 'X', 'x':
		return fmt.Errorf("checking pid %d: %w: state %c (dead)", pid, ErrNotRunning, state)
	case 'T', 't':
		return fmt.Errorf("checking pid %d: %w: state %c", pid, ErrStopped, state)
	}
	return nil
}
