// Package hostlab is a test fixture that builds small IPsec labs on the host
// kernel: network namespaces joined by veth pairs, and charon-systemd
// instances (userspace ESP through kernel-libipsec, since the host kernel has
// no ESP) each with its own strongswan.conf, VICI socket and log file.
//
// Everything a Lab creates is removed in t.Cleanup, also when the test fails
// or panics: processes are killed by PID, namespaces deleted by name. Names
// start with "ho-<pid>-" so a later run can remove what a killed test process
// left behind without touching a lab another process still uses.
//
// Tests that use it call New (or Require) first: it skips with one SKIP line
// when not root, and fails when root but strongSwan or iproute2 is missing
// (CI installs them before running the tests).
package hostlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Prefix starts the name of every namespace a Lab creates.
const Prefix = "ho-"

// Binaries the lab needs on a root host.
var requiredBinaries = []string{"ip", "charon-systemd", "swanctl"}

// CharonBinary is where the lab looks for charon-systemd when it is not on
// PATH (Debian installs it in /usr/sbin, which a test's PATH may lack).
const CharonBinary = "/usr/sbin/charon-systemd"

// Require skips the test with one SKIP line when it does not run as root, and
// fails it when it does but a binary the lab needs is missing: as root the
// lab tests must run, never skip.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root to create network namespaces and run charon")
	}
	missing := missingTools(lookPath, os.Stat)
	if len(missing) > 0 {
		t.Fatalf("running as root but the host lab lacks %s: install iproute2 charon-systemd strongswan-swanctl libcharon-extra-plugins (make test does)", strings.Join(missing, ", "))
	}
}

// missingTools lists what the lab needs and the host lacks.
func missingTools(look func(string) (string, error), stat func(string) (os.FileInfo, error)) []string {
	var missing []string
	for _, b := range requiredBinaries {
		if _, err := look(b); err != nil {
			missing = append(missing, b)
		}
	}
	if _, err := stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun (kernel-libipsec needs a TUN device)")
	}
	return missing
}

// lookPath finds a binary on PATH or in the sbin directories root's PATH
// usually has.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("finding %s: %w", name, exec.ErrNotFound)
}

// Lab owns the namespaces and processes of one test.
type Lab struct {
	t   testing.TB
	id  string // unique per Lab: "ho-<pid>-<hex>"
	dir string // private scratch directory: configs, sockets, logs

	mu sync.Mutex // guards the following fields
	// namespaces are deleted in reverse order of creation; each first
	// stops the charons started in it.
	namespaces []*Netns
}

// New checks the host (see Require), removes what dead test processes left
// behind and returns an empty lab whose contents are removed in t.Cleanup.
func New(t testing.TB) *Lab {
	t.Helper()
	Require(t)
	sweepStale(t)
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("reading random lab id: %v", err)
	}
	// The socket paths must stay under 108 bytes (sun_path), so the lab
	// directory is short and not under t.TempDir's long test-name path.
	dir, err := os.MkdirTemp("", "hostlab-")
	if err != nil {
		t.Fatalf("creating lab directory: %v", err)
	}
	l := &Lab{
		t:   t,
		id:  fmt.Sprintf("%s%d-%s", Prefix, os.Getpid(), hex.EncodeToString(b[:])),
		dir: dir,
	}
	t.Cleanup(l.cleanup)
	return l
}

// Dir is the lab's scratch directory.
func (l *Lab) Dir() string { return l.dir }

func (l *Lab) cleanup() {
	l.mu.Lock()
	nss := l.namespaces
	l.namespaces = nil
	l.mu.Unlock()
	if l.t.Failed() {
		// The lab directory goes away below: show the charon logs now.
		for _, n := range nss {
			n.mu.Lock()
			charons := n.charons
			n.mu.Unlock()
			for _, c := range charons {
				l.t.Logf("charon %s in %s (lab %s) log tail:\n%s", c.name, n.Tag, l.id, c.LogTail(30))
			}
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if err := nss[i].delete(); err != nil {
			l.t.Errorf("cleaning up: %v", err)
		}
	}
	if err := os.RemoveAll(l.dir); err != nil {
		l.t.Errorf("removing lab directory: %v", err)
	}
}

// run runs a command with a bounded time and returns its combined output;
// the error names the command and carries its output.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	path, err := lookPath(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("running %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// sweepStale deletes namespaces named by this package whose owning test
// process is gone (a test killed by a timeout never runs its cleanups).
func sweepStale(t testing.TB) {
	out, err := run(context.Background(), "ip", "netns", "list")
	if err != nil {
		t.Logf("listing namespaces for stale lab leftovers: %v", err)
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], Prefix) {
			continue
		}
		name := f[0]
		rest := strings.TrimPrefix(name, Prefix)
		pidStr, _, ok := strings.Cut(rest, "-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || processExists(pid) {
			continue
		}
		killNamespacePids(name)
		if _, err := run(context.Background(), "ip", "netns", "del", name); err != nil {
			t.Logf("removing stale namespace %s: %v", name, err)
		} else {
			t.Logf("removed stale namespace %s (its test process %d is gone)", name, pid)
		}
	}
}

func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killNamespacePids kills the processes still running in a namespace, by
// PID, before it is deleted: charon would otherwise outlive its network.
func killNamespacePids(ns string) {
	out, err := run(context.Background(), "ip", "netns", "pids", ns)
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGCONT)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
