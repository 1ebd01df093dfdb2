package gotune

import (
	"bytes"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
)

// restore puts the runtime's knobs back as the test found them: Apply
// changes the whole test process.
func restore(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	gc := debug.SetGCPercent(100)
	debug.SetGCPercent(gc)
	limit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		runtime.GOMAXPROCS(procs)
		debug.SetGCPercent(gc)
		debug.SetMemoryLimit(limit)
	})
}

// fromDefaults clears the knobs' environment variables and starts from the
// runtime's default GOMAXPROCS (restored after the test).
func fromDefaults(t *testing.T) {
	restore(t)
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	t.Setenv("GOMAXPROCS", "")
	runtime.SetDefaultGOMAXPROCS()
}

func TestApplySetsEveryKnobAndSaysSo(t *testing.T) {
	fromDefaults(t)
	cpus := runtime.GOMAXPROCS(0)
	var out bytes.Buffer
	rep := Apply(slog.New(slog.NewTextHandler(&out, nil)), Options{GCPercent: 300, MemoryLimit: 1 << 30, ProcsPerCPU: 3})
	if rep.CPUs != cpus || rep.Procs != 3*cpus || runtime.GOMAXPROCS(0) != 3*cpus {
		t.Errorf("report %+v, GOMAXPROCS %d; want %d CPUs and %d Ps", rep, runtime.GOMAXPROCS(0), cpus, 3*cpus)
	}
	if got := debug.SetGCPercent(100); got != 300 {
		t.Errorf("GC percent %d, want 300", got)
	}
	if got := debug.SetMemoryLimit(-1); got != 1<<30 {
		t.Errorf("memory limit %d, want 1 GiB", got)
	}
	if !strings.Contains(out.String(), "gomaxprocs="+strconv.Itoa(3*cpus)) || !strings.Contains(out.String(), `procs="3 per CPU"`) {
		t.Errorf("log line %q does not say what was set", out.String())
	}
}

// A second Apply (cmd/handoff's tests run the agent and the demo many
// times in one process) sets the same Ps, not the first one's times
// ProcsPerCPU again: that ran the test binary out of threads.
func TestApplyTwiceSetsTheSame(t *testing.T) {
	restore(t)
	t.Setenv("GOMAXPROCS", "")
	first := Apply(slog.New(slog.DiscardHandler), Options{ProcsPerCPU: 8})
	second := Apply(slog.New(slog.DiscardHandler), Options{ProcsPerCPU: 8})
	if second != first || runtime.GOMAXPROCS(0) != 8*first.CPUs {
		t.Errorf("first %+v, second %+v, GOMAXPROCS %d", first, second, runtime.GOMAXPROCS(0))
	}
	if one := Apply(slog.New(slog.DiscardHandler), Options{ProcsPerCPU: 1}); one.Procs != first.CPUs {
		t.Errorf("back to one per CPU: %+v, want %d Ps", one, first.CPUs)
	}
}

func TestTheEnvironmentWins(t *testing.T) {
	restore(t)
	t.Setenv("GOGC", "150")
	t.Setenv("GOMEMLIMIT", "2GiB")
	t.Setenv("GOMAXPROCS", "1")
	runtime.GOMAXPROCS(1) // what the runtime made of the variable at start
	debug.SetGCPercent(150)
	rep := Apply(slog.New(slog.DiscardHandler), Options{GCPercent: 300, MemoryLimit: 1 << 30, ProcsPerCPU: 4})
	if rep.Procs != 1 || runtime.GOMAXPROCS(0) != 1 || !strings.Contains(rep.ProcsFrom, "environment") {
		t.Errorf("GOMAXPROCS=1 in the environment: report %+v, GOMAXPROCS %d", rep, runtime.GOMAXPROCS(0))
	}
	if got := debug.SetGCPercent(100); got != 150 {
		t.Errorf("GOGC=150 in the environment: GC percent %d", got)
	}
	if !strings.Contains(rep.GC, "environment") || !strings.Contains(rep.Limit, "environment") {
		t.Errorf("report %+v does not say the environment set GC and limit", rep)
	}
}

func TestZeroOptionsChangeNothing(t *testing.T) {
	fromDefaults(t)
	procs := runtime.GOMAXPROCS(0)
	gc := debug.SetGCPercent(77)
	rep := Apply(slog.New(slog.DiscardHandler), Options{})
	if rep.Procs != procs || runtime.GOMAXPROCS(0) != procs {
		t.Errorf("GOMAXPROCS %d → %d with zero options", procs, runtime.GOMAXPROCS(0))
	}
	if got := debug.SetGCPercent(gc); got != 77 {
		t.Errorf("GC percent changed to %d with zero options", got)
	}
}
