package main

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/lab"
)

func requireLab(t testing.TB) *lab.Runner {
	t.Helper()
	if testing.Short() {
		t.Skip("SKIP: -short runs no lab")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: the SA handoff lab needs root (network namespaces, user-mode-linux); CI runs it as root")
	}
	r := &lab.Runner{ScratchRoot: t.TempDir(), Log: slog.New(slog.NewTextHandler(testLog{t}, nil))}
	if err := r.Available(); err != nil {
		t.Fatalf("%v: run `make lab-deps`", err)
	}
	return r
}

func runHandoff(t testing.TB, r *lab.Runner, args ...string) Result {
	t.Helper()
	// The build has no deadline of its own (a busy machine compiles
	// slowly; `go test -timeout` bounds the run); the guest has five minutes.
	bins, err := lab.Build(context.Background(), t.TempDir(), Package)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := r.Run(ctx, Scenario(bins[Package], args...))
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.CheckHostClean(res); err != nil {
		t.Errorf("after the scenario: %v", err)
	}
	t.Logf("sahandoff %v: %s", args, res.Output)
	var hr Result
	if err := res.Decode(&hr); err != nil {
		t.Fatal(err)
	}
	return hr
}

// TestPrivilegedSAHandoff runs the handoff with the real dataplane and
// checks what the wire and the client saw: no replay error, no sequence
// number sent twice, nothing lost once gw2 carries the tunnel, and no
// second outage across the client's next rekeys and DPD.
func TestPrivilegedSAHandoff(t *testing.T) {
	r := requireLab(t)
	hr := runHandoff(t, r)
	for _, err := range hr.Check() {
		t.Error(err)
	}
}

// Check fails on every broken promise, and only then.
func TestCheck(t *testing.T) {
	good := Result{SAs: 1, Gw1OSeqRead: 600, Gw2OSeqStart: 1_100_600, WireMaxSeq: 1_100_900}
	if errs := good.Check(); len(errs) != 0 {
		t.Fatalf("a good result fails: %v", errs)
	}
	for name, mut := range map[string]func(*Result){
		"no SA":         func(r *Result) { r.SAs = 0 },
		"replay errors": func(r *Result) { r.ClientReplayErrors = 1 },
		"reuse":         func(r *Result) { r.SeqReuse = 2 },
		"lost after":    func(r *Result) { r.ProbesLostAfterTakeover = 1 },
		"no jump":       func(r *Result) { r.Gw2OSeqStart = r.Gw1OSeqRead },
		"nothing sent":  func(r *Result) { r.WireMaxSeq = 700 },
		"reestablish":   func(r *Result) { r.ReestablishErr = "timeout" },
		"second outage": func(r *Result) { r.SecondPhaseLost = 3 },
	} {
		r := good
		mut(&r)
		if errs := r.Check(); len(errs) != 1 {
			t.Errorf("%s: %d errors (%v), want 1", name, len(errs), errs)
		}
	}
}

// BenchmarkPrivilegedSAHandoff reports the handoff's gaps over repeated
// guests (timing figures belong here, not in tests).
func BenchmarkPrivilegedSAHandoff(b *testing.B) {
	r := requireLab(b)
	var gap, second float64
	for i := 0; i < b.N; i++ {
		hr := runHandoff(b, r)
		gap, second = max(gap, hr.GapMS), max(second, hr.SecondGapMS)
	}
	b.ReportMetric(gap, "max-gap-ms")
	b.ReportMetric(second, "max-second-gap-ms")
}

type testLog struct{ t testing.TB }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
