// Package guest is the inside half of the lab harness: what a scenario
// program running in the user-mode-linux guest uses to find its scratch
// directory (shared with the host through hostfs), learn when the host
// launched the guest, log, and hand its JSON result back.
//
// A scenario's main is usually just:
//
//	func main() {
//		fs := flag.NewFlagSet("smoke", flag.ExitOnError)
//		probes := fs.Int("probes", 1000, "probes to send")
//		guest.Main(fs, func(ctx context.Context, env *guest.Env) (any, error) {
//			...
//		})
//	}
package guest

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrNotInGuest: the program was started outside a lab guest (no LABDIR).
var ErrNotInGuest = errors.New("not running in a lab guest (LABDIR unset)")

// Env is a scenario's view of its run.
type Env struct {
	// Dir is the run's scratch directory on the host, seen through hostfs:
	// logs and configs written here come back to the host.
	Dir string
	// RunDir is a private tmpfs directory for sockets and pid files (a
	// hostfs directory cannot hold working unix sockets).
	RunDir string
	// Launched is when the host started linux.uml (the guest's clock is the
	// host's), zero when unknown.
	Launched time.Time
	// Started is when this program started.
	Started time.Time
	// Log writes to the program's stderr, which the guest init saves as
	// scenario.log.
	Log *slog.Logger
}

// FromEnviron builds the Env from the variables the guest init passes on:
// LABDIR, LABT0 (launch time, Unix ns) and optionally LABRUNDIR.
func FromEnviron(started time.Time) (*Env, error) {
	dir := os.Getenv("LABDIR")
	if dir == "" {
		return nil, ErrNotInGuest
	}
	runDir := os.Getenv("LABRUNDIR")
	if runDir == "" {
		runDir = "/run/lab" // the guest's private tmpfs /run
	}
	env := &Env{
		Dir:     dir,
		RunDir:  runDir,
		Started: started,
		Log:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if t0 := os.Getenv("LABT0"); t0 != "" {
		ns, err := strconv.ParseInt(t0, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("parsing LABT0 %q: %w", t0, err)
		}
		env.Launched = time.Unix(0, ns)
	}
	if err := os.MkdirAll(env.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", env.RunDir, err)
	}
	return env, nil
}

// BootTime is the time from the host's launch of linux.uml until this
// program started: kernel boot, init, module loading.
func (e *Env) BootTime() time.Duration {
	if e.Launched.IsZero() {
		return 0
	}
	return e.Started.Sub(e.Launched)
}

// Path joins elem onto the scratch directory.
func (e *Env) Path(elem ...string) string {
	return filepath.Join(append([]string{e.Dir}, elem...)...)
}

// WriteResult stores v as the run's result.json.
func (e *Env) WriteResult(v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding result: %w", err)
	}
	tmp := e.Path("result.json.tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing result: %w", err)
	}
	if err := os.Rename(tmp, e.Path("result.json")); err != nil {
		return fmt.Errorf("writing result: %w", err)
	}
	return nil
}

// NoteNamespaces records the namespaces the scenario created, so that the
// host can check none of them leaked into its own /run/netns.
func (e *Env) NoteNamespaces(names []string) error {
	if err := os.WriteFile(e.Path("namespaces"), []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("noting namespaces: %w", err)
	}
	return nil
}

// KernelRelease is the running kernel's release (uname -r).
func KernelRelease() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return ""
	}
	var b strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return b.String()
}

// Main parses fs from the command line, runs fn with a context that ends
// on SIGTERM (the guest-side timeout) and writes fn's result. It exits 0
// after a written result, 1 on any error, 2 on bad flags.
func Main(fs *flag.FlagSet, fn func(ctx context.Context, env *Env) (any, error)) {
	started := time.Now()
	if fs != nil {
		if err := fs.Parse(os.Args[1:]); err != nil {
			os.Exit(2)
		}
	}
	os.Exit(run(started, fn))
}

func run(started time.Time, fn func(ctx context.Context, env *Env) (any, error)) int {
	env, err := FromEnviron(started)
	if err != nil {
		fmt.Fprintln(os.Stderr, "scenario:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	env.Log.Info("scenario start", "boot", env.BootTime().Round(time.Millisecond), "kernel", KernelRelease(), "cpus", runtime.NumCPU())
	v, err := fn(ctx, env)
	if err != nil {
		env.Log.Error("scenario failed", "err", err)
		return 1
	}
	if err := env.WriteResult(v); err != nil {
		env.Log.Error("scenario result", "err", err)
		return 1
	}
	env.Log.Info("scenario done", "elapsed", time.Since(started).Round(time.Millisecond))
	return 0
}
