package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrLeftover: a run left something on the host.
var ErrLeftover = errors.New("lab run left residue on the host")

// CheckHostClean verifies that a finished run left nothing running or
// mounted on the host: no process whose command line carries the run's umid
// (UML runs every guest process as a host process with the kernel's command
// line), no UML instance directory, and none of the namespaces the scenario
// created inside the guest (see guest.Env.NoteNamespaces) among the host's
// named network namespaces: they live in the guest's private /run and must
// never show up in the host's.
func CheckHostClean(res *Result) error {
	guestNetns, err := res.GuestNamespaces()
	if err != nil {
		return err
	}
	var problems []error
	marker := []byte("umid=" + res.Umid)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("listing /proc: %w", err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue // gone meanwhile
		}
		if bytes.Contains(cmdline, marker) {
			problems = append(problems, fmt.Errorf("process %d still runs: %w", pid, ErrLeftover))
		}
	}
	if _, err := os.Stat(filepath.Join(res.Dir, "uml", res.Umid)); err == nil {
		problems = append(problems, fmt.Errorf("UML instance directory %s still exists: %w", filepath.Join(res.Dir, "uml", res.Umid), ErrLeftover))
	}
	for _, ns := range guestNetns {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			problems = append(problems, fmt.Errorf("network namespace %q exists on the host: %w", ns, ErrLeftover))
		}
	}
	return errors.Join(problems...)
}

// NamespacesFile is where a scenario notes the namespaces it created.
const NamespacesFile = "namespaces"

// GuestNamespaces returns the namespace names the scenario noted.
func (r *Result) GuestNamespaces() ([]string, error) {
	data, err := os.ReadFile(filepath.Join(r.Dir, NamespacesFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading guest namespaces: %w", err)
	}
	return strings.Fields(string(data)), nil
}
