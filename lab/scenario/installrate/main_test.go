package main

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/perf"
	"github.com/handoffvpn/handoff/lab"
)

func runLab(tb testing.TB, sizes ...int) *perf.InstallRateResult {
	tb.Helper()
	if testing.Short() {
		tb.Skip("SKIP: -short runs no lab")
	}
	if os.Geteuid() != 0 {
		tb.Skip("SKIP: the kernel install benchmark boots the UML lab, which needs root; CI runs it as root")
	}
	if err := (&lab.Runner{}).Available(); err != nil {
		tb.Fatalf("%v: run `make lab-deps`", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := tb.TempDir()
	r, res, err := perf.InstallLab(ctx, perf.InstallLabOptions{Sizes: sizes, BuildDir: dir, ScratchRoot: dir,
		Log: slog.New(slog.NewTextHandler(testLog{tb}, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	if err := lab.CheckHostClean(res); err != nil {
		tb.Fatal(err)
	}
	return r
}

// TestPrivilegedInstallRate runs the scenario at 1,000 SAs: the takeover
// install and the raw loop both leave exactly two states and three
// policies per SA in a real kernel, and the sampled outbound states start
// at the takeover's jumped sequence numbers (the scenario checks both and
// fails otherwise). Its timings are benchmarks, not asserted here.
func TestPrivilegedInstallRate(t *testing.T) {
	r := runLab(t, 1000)
	run := r.Run(1000)
	if run.States != 2000 || run.Policies != 3000 {
		t.Fatalf("kernel holds %d states and %d policies after the takeover install, want 2000 and 3000", run.States, run.Policies)
	}
	if run.HandoffMS <= 0 || run.RawMS <= 0 || run.RawBatchedMS <= 0 {
		t.Fatalf("a run did not happen: %+v", run)
	}
	if !strings.HasPrefix(r.Kernel, "6.1") {
		t.Errorf("guest kernel %q, want the UML 6.1 kernel", r.Kernel)
	}
	t.Logf("1k SAs: takeover install %.0f ms, raw netlink %.0f ms (ratio %.2f), batched %.0f ms", run.HandoffMS, run.RawMS, run.Ratio, run.RawBatchedMS)
}

// BenchmarkPrivilegedInstallRate reports the takeover install time and the
// ratio to the raw netlink loop at 1,000 and 10,000 SAs (the driver in
// internal/perf/cmd/bench adds 100,000).
func BenchmarkPrivilegedInstallRate(b *testing.B) {
	var r *perf.InstallRateResult
	for b.Loop() {
		r = runLab(b, 1000, 10000)
	}
	for _, run := range r.Runs {
		k := strconv.Itoa(run.SAs)
		b.ReportMetric(run.HandoffMS, "install-"+k+"-ms")
		b.ReportMetric(run.RawMS, "raw-"+k+"-ms")
		b.ReportMetric(run.Ratio, "ratio-"+k)
	}
}

type testLog struct{ tb testing.TB }

func (w testLog) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
