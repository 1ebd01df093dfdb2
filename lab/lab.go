package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	_ "embed" // the guest's init script
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

//go:embed guest-init.sh
var guestInit []byte

// Defaults of Debian's user-mode-linux package.
const (
	DefaultKernel  = "/usr/bin/linux.uml"
	DefaultModules = "/usr/lib/uml/modules/6.1.176"
)

// Sentinel errors of a run, matched with errors.Is.
var (
	// ErrUnavailable: the UML kernel or its modules are not installed
	// (run `make lab-deps`).
	ErrUnavailable = errors.New("user-mode-linux lab unavailable")
	// ErrGuestDied: the guest ended without recording the scenario's exit
	// status (host-side timeout, kernel panic, modprobe failure).
	ErrGuestDied = errors.New("lab guest ended without a scenario exit status")
	// ErrScenarioFailed: the scenario program exited non-zero or wrote no
	// result.
	ErrScenarioFailed = errors.New("lab scenario failed")
)

// BaseModules are loaded in every guest: XFRM and ESP with AES-GCM, veth,
// bridge and dummy links, and the crypto templates the kernel would
// otherwise try to load on the first SA add (a 2–3 s stall in UML).
func BaseModules() []string {
	return []string{
		"xfrm_user", "esp4", "veth", "bridge", "dummy",
		"gcm", "ctr", "ghash-generic", "seqiv", "echainiv",
		"drbg", "hmac", "sha512_generic",
	}
}

// OptionalModules are tried in every guest, and a failure is only logged.
// jitterentropy_rng refuses to load (EFAULT, "Bad address") when its
// start-up health test finds the timer too coarse, which depends on the
// host the guest runs on; drbg works without it (seeded from
// get_random_bytes), and with modprobe blanked afterwards its absence
// costs no lookup stall.
func OptionalModules() []string { return []string{"jitterentropy_rng"} }

// Scenario is one program to run in a fresh guest.
type Scenario struct {
	// Name labels the run (scratch directory, logs).
	Name string
	// Program is the host path of a static executable (see Build). The guest
	// reaches it through hostfs at the same path.
	Program string
	// Args are the program's arguments.
	Args []string
	// Timeout bounds the scenario inside the guest; the host kills the
	// guest a little later. Default 2 minutes.
	Timeout time.Duration
	// MemMiB is the guest's memory. Default 256; the three-charon lab fits
	// in 64, 50k kernel SAs need about 1024.
	MemMiB int
	// Modules are loaded in addition to BaseModules.
	Modules []string
}

// Result is what a run brought back.
type Result struct {
	Name string
	// Dir is the scratch directory: console.log, init.log, scenario.log,
	// result.json and whatever the scenario wrote (charon logs, configs).
	Dir string
	// Umid is the UML instance id, unique per run.
	Umid string
	// Exit is the scenario's exit status (-1 when none was recorded).
	Exit int
	// Output is the scenario's result.json.
	Output json.RawMessage
	// Wall is the time from launching linux.uml until it ended.
	Wall time.Duration
}

// Decode unmarshals the scenario's result into v.
func (r *Result) Decode(v any) error {
	if len(r.Output) == 0 {
		return fmt.Errorf("decoding result of %s: %w", r.Name, ErrScenarioFailed)
	}
	if err := json.Unmarshal(r.Output, v); err != nil {
		return fmt.Errorf("decoding result of %s: %w", r.Name, err)
	}
	return nil
}

// Runner boots guests. The zero value uses Debian's paths and os.TempDir.
type Runner struct {
	// Kernel is the linux.uml binary.
	Kernel string
	// Modules is the UML kernel's module directory (lib/modules/<release>).
	Modules string
	// ScratchRoot is where each run's scratch directory is created.
	ScratchRoot string
	// Log receives progress; nil discards it.
	Log *slog.Logger
}

// Run boots a guest with the zero Runner (Debian paths, os.TempDir) and
// runs sc in it.
func Run(ctx context.Context, sc Scenario) (*Result, error) {
	return (&Runner{}).Run(ctx, sc)
}

// Available reports whether the UML kernel and its modules are installed.
func (r *Runner) Available() error {
	for _, p := range []string{r.kernel(), r.modules()} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("checking %s: %w (%v)", p, ErrUnavailable, err)
		}
	}
	return nil
}

func (r *Runner) kernel() string {
	if r.Kernel != "" {
		return r.Kernel
	}
	return DefaultKernel
}

func (r *Runner) modules() string {
	if r.Modules != "" {
		return r.Modules
	}
	return DefaultModules
}

func (r *Runner) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.New(slog.DiscardHandler)
}

// hostSlack is how much longer than the scenario's timeout the host lets
// the guest live: boot, module loading, poweroff.
const hostSlack = 20 * time.Second

// Run boots a guest, runs sc in it and returns what it brought back. The
// guest is gone when Run returns, whatever happened. The Result is returned
// with a non-nil error too when there is one (its Dir holds the logs).
func (r *Runner) Run(ctx context.Context, sc Scenario) (*Result, error) {
	if err := r.Available(); err != nil {
		return nil, err
	}
	sc, err := normalize(sc)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(r.ScratchRoot, "lab-"+sc.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("creating scratch directory: %w", err)
	}
	if strings.ContainsAny(dir, " ,\t\n") {
		return nil, fmt.Errorf("scratch directory %q: the kernel command line cannot carry spaces or commas", dir)
	}
	umid, err := newUmid()
	if err != nil {
		return nil, err
	}
	res := &Result{Name: sc.Name, Dir: dir, Umid: umid, Exit: -1}
	if err := r.prepare(dir, sc); err != nil {
		return res, err
	}

	t0 := time.Now()
	args := []string{
		"-k", "5", strconv.Itoa(int((sc.Timeout + hostSlack).Seconds())),
		r.kernel(),
		"mem=" + strconv.Itoa(sc.MemMiB) + "M",
		"root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw", "quiet",
		"uml_dir=" + filepath.Join(dir, "uml"), "umid=" + umid,
		"init=" + filepath.Join(dir, "init.sh"),
		"con0=fd:0,fd:1", "con=null",
		"LABDIR=" + dir,
		"LABMODROOT=" + filepath.Join(dir, "modroot"),
		"LABMODS=" + strings.Join(append(BaseModules(), sc.Modules...), ","),
		"LABOPTMODS=" + strings.Join(OptionalModules(), ","),
		"LABTIMEOUT=" + strconv.Itoa(int(sc.Timeout.Seconds())),
		"LABT0=" + strconv.FormatInt(t0.UnixNano(), 10),
	}
	console, err := os.Create(filepath.Join(dir, "console.log"))
	if err != nil {
		return res, fmt.Errorf("creating console log: %w", err)
	}
	defer console.Close()
	cmd := exec.CommandContext(ctx, "timeout", args...)
	cmd.Stdin = nil
	cmd.Stdout = console
	cmd.Stderr = console
	// UML runs every guest address space as a host process: put them all in
	// one process group that we can always end.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd) }
	cmd.WaitDelay = 10 * time.Second
	r.log().Info("booting lab guest", "scenario", sc.Name, "dir", dir, "umid", umid)
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("starting %s: %w", r.kernel(), err)
	}
	waitErr := cmd.Wait()
	// Stragglers of the group (none after a clean poweroff).
	_ = killGroup(cmd)
	res.Wall = time.Since(t0)
	r.log().Info("lab guest ended", "scenario", sc.Name, "wall", res.Wall.Round(time.Millisecond), "wait", waitErr)
	return res, r.collect(res, waitErr)
}

func killGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

func normalize(sc Scenario) (Scenario, error) {
	if sc.Name == "" {
		sc.Name = filepath.Base(sc.Program)
	}
	if strings.ContainsAny(sc.Name, " /,") {
		return sc, fmt.Errorf("scenario name %q: no spaces, slashes or commas", sc.Name)
	}
	if !filepath.IsAbs(sc.Program) {
		abs, err := filepath.Abs(sc.Program)
		if err != nil {
			return sc, fmt.Errorf("resolving program %q: %w", sc.Program, err)
		}
		sc.Program = abs
	}
	if fi, err := os.Stat(sc.Program); err != nil || fi.Mode()&0o111 == 0 {
		return sc, fmt.Errorf("scenario program %q is not an executable file (stat: %v)", sc.Program, err)
	}
	if sc.Timeout <= 0 {
		sc.Timeout = 2 * time.Minute
	}
	if sc.MemMiB <= 0 {
		sc.MemMiB = 256
	}
	for _, m := range sc.Modules {
		if strings.ContainsAny(m, " ,") {
			return sc, fmt.Errorf("module name %q", m)
		}
	}
	return sc, nil
}

// prepare writes what the guest's init needs into the scratch directory.
func (r *Runner) prepare(dir string, sc Scenario) error {
	if err := os.WriteFile(filepath.Join(dir, "init.sh"), guestInit, 0o755); err != nil {
		return fmt.Errorf("writing guest init: %w", err)
	}
	// modprobe -d ROOT looks in ROOT/lib/modules/<release>.
	mods := filepath.Join(dir, "modroot", "lib", "modules")
	if err := os.MkdirAll(mods, 0o755); err != nil {
		return fmt.Errorf("creating module root: %w", err)
	}
	if err := os.Symlink(r.modules(), filepath.Join(mods, filepath.Base(r.modules()))); err != nil {
		return fmt.Errorf("linking UML modules: %w", err)
	}
	var b bytes.Buffer
	b.WriteString("set --")
	for _, a := range append([]string{sc.Program}, sc.Args...) {
		b.WriteByte(' ')
		b.WriteString(shellQuote(a))
	}
	b.WriteByte('\n')
	if err := os.WriteFile(filepath.Join(dir, "scenario.sh"), b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing scenario command: %w", err)
	}
	return nil
}

// collect reads the exit status and result the guest left in res.Dir.
func (r *Runner) collect(res *Result, waitErr error) error {
	raw, err := os.ReadFile(filepath.Join(res.Dir, "exit"))
	if err != nil {
		return fmt.Errorf("running %s (wait: %v): %w\n%s", res.Name, waitErr, ErrGuestDied, tails(res.Dir))
	}
	code, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		return fmt.Errorf("reading exit status of %s %q: %w", res.Name, raw, ErrGuestDied)
	}
	res.Exit = code
	out, err := os.ReadFile(filepath.Join(res.Dir, "result.json"))
	if err == nil {
		res.Output = bytes.TrimSpace(out)
	}
	switch {
	case code == 124:
		return fmt.Errorf("running %s: timed out in the guest: %w\n%s", res.Name, ErrScenarioFailed, tails(res.Dir))
	case code != 0:
		return fmt.Errorf("running %s: exit status %d: %w\n%s", res.Name, code, ErrScenarioFailed, tails(res.Dir))
	case len(res.Output) == 0:
		return fmt.Errorf("running %s: no result.json: %w\n%s", res.Name, ErrScenarioFailed, tails(res.Dir))
	}
	return nil
}

// tails returns the ends of the run's logs for an error message.
func tails(dir string) string {
	var b strings.Builder
	for _, name := range []string{"init.log", "scenario.log", "console.log"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		fmt.Fprintf(&b, "--- %s (end) ---\n%s\n", name, tail(data, 25))
	}
	return b.String()
}

func tail(data []byte, lines int) string {
	s := strings.ReplaceAll(strings.TrimRight(string(data), "\r\n"), "\r\n", "\n")
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./:@%+,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func newUmid() (string, error) {
	var b [6]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		return "", fmt.Errorf("creating umid: %w", err)
	}
	return "hlab" + hex.EncodeToString(b[:]), nil
}
