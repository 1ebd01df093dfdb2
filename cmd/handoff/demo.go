package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/internal/demo"
	"github.com/handoffvpn/handoff/internal/gotune"
	"github.com/handoffvpn/handoff/internal/rtsched"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the report as one JSON object on stdout, and everything else on stderr")
	nodes := fs.Int("nodes", 3, "number of gateway agents")
	tunnels := fs.Int("tunnels", 1000, "number of synthetic tunnels (CHILD_SAs)")
	heartbeat := fs.Duration("heartbeat", 150*time.Millisecond, "Raft heartbeat and election timeout; the leader lease is a third of it (the product defaults: 150ms, lease 50ms)")
	provider := fs.String("provider", "memory", "where floating resources live: memory, or aws, gcp, azure through the built-in cloud emulator")
	latency := fs.Duration("provider-latency", 0, "per-call latency of the cloud (memory or emulator)")
	verbose := fs.Bool("v", false, "log what the agents do")
	rtPriority := fs.Int("realtime-priority", 0, "run the demo's threads at this SCHED_RR priority with memory locked, as the agent's scheduling.realtime_priority does (needs root or CAP_SYS_NICE; 0, the default as for the agent, leaves normal scheduling)")
	serve := addOperatorFlags(fs, true)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if err := serve.token.check("token-file"); err != nil {
		return err
	}
	if *nodes < 2 || *nodes > 9 {
		return usageError{fmt.Sprintf("demo: -nodes %d is outside 2..9", *nodes)}
	}
	if *tunnels < 1 || *tunnels > 200000 {
		return usageError{fmt.Sprintf("demo: -tunnels %d is outside 1..200000", *tunnels)}
	}
	if *rtPriority < 0 || *rtPriority > rtsched.MaxPriority {
		return usageError{fmt.Sprintf("demo: -realtime-priority %d is outside 0..%d", *rtPriority, rtsched.MaxPriority)}
	}
	// The demo's agents detect failures the way the real ones do, so they
	// get the same scheduling; without the privilege it warns and runs on.
	slogger := slog.New(slog.NewTextHandler(stderr, nil))
	applyScheduling(slogger, rtsched.Request{Policy: rtsched.RR, Priority: *rtPriority, LockMemory: *rtPriority > 0}, demoHints(), rtsched.Apply)
	// The agent's runtime defaults too (scheduling.gc_percent and
	// procs_per_cpu); the nodes' shared bulk lane is sized from the CPUs.
	def := config.Defaults().Scheduling
	gotune.Apply(slogger, gotune.Options{GCPercent: *def.GCPercent, ProcsPerCPU: *def.ProcsPerCPU})
	opts := demo.Options{Nodes: *nodes, Tunnels: *tunnels, HeartbeatTimeout: *heartbeat, ProviderLatency: *latency, Progress: stderr}
	if *verbose {
		opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	fx, err := demoProvider(*provider, *latency)
	if err != nil {
		return err
	}
	opts.Provider = fx
	// With -json, stdout is the report alone: a script reads it whole.
	narration := stdout
	if *asJSON {
		narration = stderr
	}
	if serve.webhookURL != "" && serve.apiAddr == "" {
		return usageError{"demo: -webhook-url works with -serve (the demo otherwise ends before a delivery could be retried)"}
	}
	if serve.apiAddr != "" {
		closeFleet, err := serve.demoServe(&opts, *nodes, narration, os.Getenv)
		if err != nil {
			return err
		}
		defer closeFleet()
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
	}
	rep, err := demo.Run(ctx, opts)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if serve.apiAddr == "" {
		rep.Timeline(narration) // with -serve, printed before serving
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(rep)
	}
	return nil
}
