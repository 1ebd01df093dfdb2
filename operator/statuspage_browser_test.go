//go:build linux

package operator_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/operator/fleet"
)

const chromiumPath = "/usr/bin/chromium"

// TestStatusPageInChromium loads the status page in headless Chromium
// after a failover and checks that the page's own script rendered the
// active node, the members and the history with phase timings: the DOM
// Chromium dumps holds them only if the JavaScript fetched and rendered
// the API's data.
func TestStatusPageInChromium(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Geteuid() != 0 {
			t.Skip("SKIP: " + chromiumPath + " missing and not root (make operator-deps installs Debian's chromium)")
		}
		t.Fatalf("%s missing: run `make operator-deps` (it installs Debian's chromium): %v", chromiumPath, err)
	}
	e := start(t, []string{"gw1", "gw2", "gw3"}, fleet.Options{})
	first := e.first.Spec.ID
	if err := e.c.Kill(first); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	next, act, err := e.c.WaitActive(ctx, e.act.Term, first)
	if err != nil {
		t.Fatal(err)
	}
	url := e.f.URL(next.Spec.ID) + "/"

	dom := dumpDOM(t, url, 1280, 40*time.Second)
	if os.Getenv("DUMP_DOM") != "" {
		t.Log(dom)
	}
	if !strings.Contains(dom, `data-state="ready"`) {
		t.Fatalf("the page's script did not finish rendering:\n%s", dom)
	}
	// Under load an election may flap again while the browser runs: the
	// page must show the active node of a moment within the dump.
	after := next.Agent.OperatorStatus()
	if got := textOf(dom, "active"); got != next.Spec.ID && got != after.Active {
		t.Errorf("page shows active %q, want %s (or %s, active after the dump)", got, next.Spec.ID, after.Active)
	}
	if got := textOf(dom, "term"); got != fmt.Sprint(act.Term) && got != fmt.Sprint(after.Term) {
		t.Errorf("page shows term %q, want %d (or %d after the dump)", got, act.Term, after.Term)
	}
	for _, id := range []string{"gw1", "gw2", "gw3"} {
		if !strings.Contains(dom, `data-node="`+id+`"`) {
			t.Errorf("members table lacks %s", id)
		}
	}
	for _, term := range []uint64{e.act.Term, act.Term} {
		row := rowOf(dom, fmt.Sprint(term))
		if row == "" {
			t.Errorf("history lacks the takeover at term %d", term)
			continue
		}
		if !strings.Contains(row, "completed") || !regexp.MustCompile(`\d+\.\d ms`).MatchString(row) {
			t.Errorf("history row of term %d lacks result or phase timings: %s", term, row)
		}
	}
	if row := rowOf(dom, fmt.Sprint(act.Term)); !strings.Contains(row, "<td>"+first+"</td><td>"+next.Spec.ID+"</td>") ||
		!strings.Contains(row, "leader silent") || !strings.Contains(row, first+" silent for") {
		t.Errorf("history row of term %d does not say %s → %s because %s went silent: %s", act.Term, first, next.Spec.ID, first, row)
	}
	// Neither a laptop's 1280 px nor a phone's 390 px scrolls the page
	// sideways: wide tables scroll in their own boxes (the page's script
	// measures it once it has rendered the data).
	for _, width := range []int{1280, 390} {
		d := dom
		if width != 1280 {
			d = dumpDOM(t, url, width, 40*time.Second)
		}
		if m := regexp.MustCompile(`data-overflow-px="(\d+)"`).FindStringSubmatch(d); m == nil || m[1] != "0" {
			t.Errorf("at %d px the page overflows sideways: %v", width, m)
		}
	}
}

// dumpDOM runs headless Chromium on url and returns the DOM after the
// page's scripts ran (virtual time lets its fetches complete). The browser
// runs in its own process group, killed by its PID when it overruns or
// when the test ends, so no renderer outlives the test.
func dumpDOM(t *testing.T, url string, width int, limit time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromiumPath, "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000", fmt.Sprintf("--window-size=%d,900", width),
		"--dump-dom", url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	pid := cmd.Process.Pid
	err := cmd.Wait()
	// Whatever the main process left behind in its group goes too.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	if ctx.Err() != nil {
		t.Fatalf("chromium did not finish within %v (killed pid %d)\nstderr:\n%s", limit, pid, tail(stderr.String()))
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("chromium: %v", err)
	}
	if err != nil || stdout.Len() == 0 {
		t.Fatalf("chromium: %v, %d bytes of DOM\nstderr:\n%s", err, stdout.Len(), tail(stderr.String()))
	}
	return stdout.String()
}

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}

// textOf returns the text of the element with id (no nested markup).
func textOf(dom, id string) string {
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)<`).FindStringSubmatch(dom)
	if m == nil {
		return ""
	}
	return m[1]
}

// rowOf returns the history row of a term.
func rowOf(dom, term string) string {
	m := regexp.MustCompile(`<tr data-term="` + regexp.QuoteMeta(term) + `">(.*?)</tr>`).FindStringSubmatch(dom)
	if m == nil {
		return ""
	}
	return m[1]
}
