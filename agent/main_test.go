package agent_test

import (
	"log/slog"
	"os"
	"testing"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/internal/gotune"
)

// TestMain runs the tests' agents with the Go runtime as the agent binary
// sets it (scheduling.gc_percent and procs_per_cpu): the load tests ask
// whether the product holds, not whether Go's defaults do.
func TestMain(m *testing.M) {
	def := config.Defaults().Scheduling
	gotune.Apply(slog.New(slog.DiscardHandler), gotune.Options{GCPercent: *def.GCPercent, ProcsPerCPU: *def.ProcsPerCPU})
	os.Exit(m.Run())
}
