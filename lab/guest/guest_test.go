package guest

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestFromEnvironOutsideGuest(t *testing.T) {
	t.Setenv("LABDIR", "")
	if _, err := FromEnviron(time.Now()); !errors.Is(err, ErrNotInGuest) {
		t.Fatalf("FromEnviron without LABDIR: %v, want ErrNotInGuest", err)
	}
}

func TestEnvResultAndBootTime(t *testing.T) {
	dir := t.TempDir()
	launched := time.Now().Add(-2 * time.Second)
	t.Setenv("LABDIR", dir)
	t.Setenv("LABRUNDIR", filepath.Join(dir, "run"))
	t.Setenv("LABT0", strconv.FormatInt(launched.UnixNano(), 10))
	started := launched.Add(1500 * time.Millisecond)
	env, err := FromEnviron(started)
	if err != nil {
		t.Fatal(err)
	}
	if got := env.BootTime(); got != 1500*time.Millisecond {
		t.Errorf("BootTime = %v, want 1.5s", got)
	}
	if fi, err := os.Stat(env.RunDir); err != nil || !fi.IsDir() {
		t.Errorf("RunDir %s not created: %v", env.RunDir, err)
	}
	if err := env.WriteResult(map[string]int{"probes_lost": 0, "probes_sent": 1000}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "result.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]int
	if err := json.Unmarshal(data, &got); err != nil || got["probes_sent"] != 1000 {
		t.Errorf("result.json = %s (%v)", data, err)
	}
	if err := env.NoteNamespaces([]string{"net", "client"}); err != nil {
		t.Fatal(err)
	}
	ns, _ := os.ReadFile(filepath.Join(dir, "namespaces"))
	if strings.Fields(string(ns))[1] != "client" {
		t.Errorf("namespaces file = %q", ns)
	}
}

func TestFromEnvironRejectsBadLaunchTime(t *testing.T) {
	t.Setenv("LABDIR", t.TempDir())
	t.Setenv("LABRUNDIR", t.TempDir())
	t.Setenv("LABT0", "yesterday")
	if _, err := FromEnviron(time.Now()); err == nil {
		t.Fatal("accepted LABT0=yesterday")
	}
}

func TestKernelRelease(t *testing.T) {
	if KernelRelease() == "" {
		t.Fatal("empty kernel release")
	}
}
