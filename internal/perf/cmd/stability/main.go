// Command stability is Handoff's stability benchmark (`make
// bench-stability`): the in-process cluster at the product's Raft timings
// for a bounded time under CPU saturation, a replication storm with
// traffic and rekey churn, and jitter on every Raft link, with the active
// killed every few minutes. It counts the leader changes and fences no
// kill caused and times each kill's takeover, prints a table, then one JSON
// line as its last line. It exits non-zero only when the run itself fails
// (no cluster, no active, an interrupt): spurious changes are reported,
// not failed on.
//
//	go run ./internal/perf/cmd/stability                  # 10 minutes, 100k tunnels
//	STABILITY_MINUTES=2 go run ./internal/perf/cmd/stability
//	go run ./internal/perf/cmd/stability -minutes 0.5 -tunnels 10000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/internal/gotune"
	"github.com/handoffvpn/handoff/internal/perf"
	"github.com/handoffvpn/handoff/internal/rtsched"
)

func main() {
	minutesDefault := 10.0
	if v := os.Getenv("STABILITY_MINUTES"); v != "" {
		m, err := strconv.ParseFloat(v, 64)
		if err != nil || m <= 0 {
			fmt.Fprintf(os.Stderr, "stability: STABILITY_MINUTES=%q: want a positive number of minutes\n", v)
			os.Exit(2)
		}
		minutesDefault = m
	}
	var o perf.StabilityOptions
	minutes := flag.Float64("minutes", minutesDefault, "length of the measured run in minutes, fractions allowed (default: $STABILITY_MINUTES, else 10)")
	flag.IntVar(&o.Nodes, "nodes", 3, "gateways in the cluster")
	flag.IntVar(&o.Tunnels, "tunnels", 100_000, "synthetic tunnels appearing at once on the active")
	flag.DurationVar(&o.HeartbeatTimeout, "heartbeat", 150*time.Millisecond, "Raft heartbeat/election timeout; the lease is a third of it, suspect_after twice the lease (the product's defaults)")
	flag.IntVar(&o.BusyLoops, "busy-loops", 2*runtime.NumCPU(), "busy-loop processes at normal priority saturating the CPUs (0: none)")
	flag.DurationVar(&o.Jitter, "jitter", 2*time.Millisecond, "each write on every Raft link (every TLS record) is delayed by a random 0..jitter (0: none)")
	flag.DurationVar(&o.Delay, "delay", 0, "fixed delay added to every write on every Raft link")
	flag.DurationVar(&o.KillEvery, "kill-every", 2*time.Minute, "interval between kills of the active (negative: no kills)")
	flag.DurationVar(&o.RekeyEvery, "rekey-every", 30*time.Second, "interval between rekey rounds on the active (negative: none)")
	flag.Float64Var(&o.RekeyFraction, "rekey-fraction", 0.05, "share of the active's SAs each rekey round replaces")
	flag.DurationVar(&o.Settle, "settle", time.Second, "after a kill's new active is committed, how long changes are still the kill's")
	flag.IntVar(&o.RealtimePriority, "realtime-priority", 0, "as root, run the process under SCHED_RR at this priority with memory locked, as scheduling.realtime_priority does (0, the agent's default, leaves normal scheduling)")
	flag.BoolVar(&o.Reconnect, "reconnect", false, "re-establish the tunnels a takeover dropped (not replicated yet) on the new active, all at once, as their clients would")
	flag.BoolVar(&o.NoSync, "nosync", false, "skip fsync of the Raft logs (the product syncs)")
	procsPerCPU := flag.Int("procs-per-cpu", config.DefaultProcsPerCPU, "Go Ps (GOMAXPROCS) per CPU, as scheduling.procs_per_cpu sets for the agent (GOMAXPROCS in the environment wins)")
	verbose := flag.Bool("v", false, "log the agents' and Raft's warnings and the driver's progress to stderr")
	flag.Parse()
	if *procsPerCPU < 1 {
		fmt.Fprintln(os.Stderr, "stability: -procs-per-cpu must be at least 1")
		os.Exit(2)
	}
	if *minutes <= 0 {
		fmt.Fprintln(os.Stderr, "stability: -minutes must be positive")
		os.Exit(2)
	}
	if o.RealtimePriority < 0 || o.RealtimePriority > rtsched.MaxPriority {
		fmt.Fprintf(os.Stderr, "stability: -realtime-priority %d is outside 0..%d\n", o.RealtimePriority, rtsched.MaxPriority)
		os.Exit(2)
	}
	o.Duration = time.Duration(*minutes * float64(time.Minute))
	level := slog.LevelError
	if *verbose {
		level = slog.LevelWarn
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// The agent's runtime settings (scheduling.gc_percent, procs_per_cpu):
	// the run measures what the product does.
	def := config.Defaults().Scheduling
	gotune.Apply(slog.New(slog.NewTextHandler(os.Stderr, nil)), gotune.Options{GCPercent: *def.GCPercent, ProcsPerCPU: *procsPerCPU})
	o.Progress = os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "stability:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, o perf.StabilityOptions) error {
	res, err := perf.Stability(ctx, o)
	if res != nil && !res.Start.IsZero() {
		// What was measured before a failure is still worth the table.
		if werr := res.WriteReport(os.Stdout); werr != nil {
			err = errors.Join(err, fmt.Errorf("writing the report: %w", werr))
		}
	}
	if err != nil {
		return fmt.Errorf("stability run: %w", err)
	}
	return nil
}
