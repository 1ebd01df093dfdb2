package topo

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
)

// HostPrefix is a namespace prefix for a run on a shared host: stem, this
// process's id, a dash ("tt1234-"). SweepStale recognises it later.
func HostPrefix(stem string) string {
	return stem + strconv.Itoa(os.Getpid()) + "-"
}

// SweepStale deletes the namespaces a killed run with HostPrefix(stem) left
// behind: those whose process id no longer exists. Namespaces of live
// processes (a concurrent run) are left alone, and so is every name that
// does not follow the pattern.
func SweepStale(stem string) error {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing namespaces: %w", err)
	}
	var errs []error
	for _, e := range ents {
		pid, ok := stalePID(e.Name(), stem)
		if !ok || pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		if err := netns.DeleteNamed(e.Name()); err != nil {
			errs = append(errs, fmt.Errorf("deleting stale namespace %s: %w", e.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// stalePID parses "<stem><pid>-<rest>".
func stalePID(name, stem string) (int, bool) {
	rest, ok := strings.CutPrefix(name, stem)
	if !ok {
		return 0, false
	}
	digits, _, ok := strings.Cut(rest, "-")
	if !ok || digits == "" {
		return 0, false
	}
	pid, err := strconv.Atoi(digits)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}
