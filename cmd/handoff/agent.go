package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/internal/bulk"
	"github.com/handoffvpn/handoff/internal/gotune"
	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/internal/profiling"
	"github.com/handoffvpn/handoff/internal/rtsched"
	"github.com/handoffvpn/handoff/ipsec"
	"github.com/handoffvpn/handoff/ipsec/egress"
	"github.com/handoffvpn/handoff/ipsec/hasync"
	"github.com/handoffvpn/handoff/ipsec/memdp"
	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/ipsec/xfrm"
	"github.com/handoffvpn/handoff/operator/notify"
	"github.com/handoffvpn/handoff/raftstore"
)

// loadConfig layers defaults, the file and the flags, then validates.
func loadConfig(fs *flag.FlagSet, args []string, stdout io.Writer) (*config.Config, error) {
	path := fs.String("config", "", "configuration file (.hcl, .yaml or .yml)")
	var over config.File
	fs.StringVar(&over.NodeID, "node-id", "", "node ID (overrides node_id)")
	fs.StringVar(&over.BindAddr, "bind", "", "Raft listen address (overrides bind_addr)")
	fs.StringVar(&over.AdvertiseAddr, "advertise", "", "address peers dial (overrides advertise_addr)")
	fs.StringVar(&over.DataDir, "data-dir", "", "data directory (overrides data_dir)")
	fs.StringVar(&over.LogLevel, "log-level", "", "debug, info, warn or error (overrides log_level)")
	join := fs.String("join", "", "comma-separated addresses of cluster members to join (overrides join)")
	bootstrap := fs.Bool("bootstrap", false, "bootstrap a new cluster with this node (overrides bootstrap)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return nil, err
	}
	file := config.Defaults()
	if *path != "" {
		loaded, err := config.Load(*path)
		if err != nil {
			return nil, err
		}
		file = loaded
	}
	if *join != "" {
		over.Join = strings.Split(*join, ",")
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "bootstrap" {
			over.Bootstrap = bootstrap
		}
	})
	config.Merge(&file, over)
	return config.Resolve(file)
}

// runValidate runs the agent's preflight on the configuration and flags
// the agent would be started with, and stops there (with -check-cloud,
// after asking the cloud what the provider may do). Warnings go to stderr.
func runValidate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	af := addAgentFlags(fs)
	checkCloud := fs.Bool("check-cloud", false, "also build the provider and run its permission check and a read of every resource (calls the cloud's API; changes nothing)")
	cfg, err := loadConfig(fs, args, stdout)
	if err != nil {
		return err
	}
	af.op.noteGiven(fs)
	if _, err := preflight(cfg, af, os.Getenv); err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	fmt.Fprintf(stdout, "configuration valid: node %s (%s, priority %d), provider %s with %d resources, dataplane %s\n",
		cfg.NodeID, cfg.Role, cfg.Priority, cfg.ProviderType, len(cfg.Resources), cfg.DataplaneType)
	if *checkCloud {
		return reportCloudCheck(ctx, cfg, stdout)
	}
	return nil
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	af := addAgentFlags(fs)
	opf := af.op
	cfg, err := loadConfig(fs, args, stdout)
	if err != nil {
		return err
	}
	opf.noteGiven(fs)
	// Everything it reads and checks before Raft opens, as handoff
	// validate does: a mistake stops it here, naming the key.
	ready, err := preflight(cfg, af, os.Getenv)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	for _, w := range cfg.Warnings {
		log.Warn("configuration: " + w)
	}
	// First, before Raft opens: every thread started later (Raft's, the
	// transport's) inherits the policy from a thread already set.
	applyScheduling(log, cfg.Scheduling, agentHints(cfg.Scheduling), rtsched.Apply)
	tuned := gotune.Apply(log, gotune.Options{GCPercent: cfg.GCPercent, MemoryLimit: cfg.MemoryLimit, ProcsPerCPU: cfg.ProcsPerCPU})
	if af.cpuProfile != "" {
		stop, err := profiling.StartCPU(af.cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	mat, sealer, denied := ready.tls, ready.sealer, ready.denied
	// The provider, and what its credentials may do, before Raft opens: a
	// node that could never move its resources stops here.
	resources := resourcesOf(cfg)
	prov, err := buildProvider(ctx, cfg, log)
	if err != nil {
		return err
	}
	if err := startupPermissionCheck(ctx, cfg, prov, resources, log); err != nil {
		return err
	}
	// allowed_nodes narrows who may connect; what a node that connects may
	// do is its membership's business (raftstore).
	var authorize pki.Authorize
	if allowed := cfg.TLS.AllowedNodes; len(allowed) > 0 {
		authorize = func(id string) error {
			if slices.Contains(allowed, id) {
				return nil
			}
			return errors.New("not in tls.allowed_nodes")
		}
	}
	// The agent's bulk work (sealing, staging, installs) takes turns in a
	// lane sized from the CPUs, not the oversubscribed Ps. The store's
	// FSM stays unpaced here: Raft answers heartbeats on the path that
	// applies, and in the one-CPU kernel lab FSM applies waiting for the
	// agent's seat coincided with lost leases (two CI runs of four).
	lane := bulk.NewLane(bulk.WorkersFor(tuned.CPUs), 0)
	store, err := raftstore.Open(raftstore.Config{
		NodeID: cfg.NodeID, BindAddr: cfg.BindAddr, AdvertiseAddr: cfg.AdvertiseAddr, DataDir: cfg.DataDir,
		TLS: mat, Authorize: authorize, Denied: denied, HeartbeatTimeout: cfg.Heartbeat, ElectionTimeout: cfg.Election,
		LeaderLeaseTimeout: cfg.LeaderLease, CommitTimeout: cfg.Commit, SnapshotInterval: cfg.SnapInterval,
		SnapshotThreshold: cfg.SnapThreshold, TrailingLogs: cfg.TrailingLogs, Logger: log,
	})
	if err != nil {
		return err
	}
	defer store.Close()
	surface, apiCfg, err := opf.agentSurface(cfg.NodeID, ready.op, log)
	if err != nil {
		return err
	}
	defer surface.Close()
	events := surface.Event
	notifier, err := newNotifier(cfg, log)
	if err != nil {
		return err
	}
	if notifier != nil {
		defer notifier.Close()
		events = func(e agent.Event) {
			surface.Event(e)
			notifier.Event(e)
		}
	}
	prov = surface.Metrics.InstrumentProvider(prov)
	dp, closeDP, err := buildDataplane(cfg, log)
	if err != nil {
		return err
	}
	defer closeDP()
	own, observe, stopChecks, err := buildCheckers(cfg, log)
	if err != nil {
		return err
	}
	defer stopChecks()
	opts := []agent.Option{agent.WithLogger(log), agent.WithEvents(events), agent.WithBulkLane(lane)}
	if own != nil {
		opts = append(opts, agent.WithHealth(checkerVerdict{own}))
	}
	if observe != nil {
		opts = append(opts, agent.WithActiveObserver(checkerVerdict{observe}))
	}
	if cfg.HAListen.IsValid() {
		// IKE continuity: Handoff is the peer of charon's ha plugin.
		// Bound before the agent runs, so that charon's first reports
		// (its restart signal among them) are not refused.
		ha, err := hasync.Listen(cfg.HAListen, cfg.HACharon, 0)
		if err != nil {
			return fmt.Errorf("IKE continuity (dataplane.ha_listen): %w", err)
		}
		defer ha.Close()
		// A standby's charon holds the carried CHILD_SAs installed: the
		// node sends no ESP until a takeover jumped their counters.
		opts = append(opts, agent.WithIKEChannel(ha), agent.WithEgressFence(egress.New(-1)))
		// Its own VICI client: the reconciler follows charon's log on a
		// session of its own, apart from the dataplane's.
		mid := vici.New(vici.Config{Socket: cfg.ViciSocket, Logger: log})
		defer mid.Close()
		opts = append(opts, agent.WithIKEReconciler(mid))
		log.Info("IKE continuity on: carrying IKE_SAs through charon's ha plugin", "listen", cfg.HAListen, "charon", cfg.HACharon)
	}
	ag, err := agent.New(agent.Config{
		NodeID: cfg.NodeID, Role: raftstore.Role(cfg.Role), Priority: cfg.Priority, Resources: resources,
		BatchWindow: cfg.BatchWindow, MaxBatch: cfg.MaxBatch, ReplayInterval: cfg.ReplayInterval,
		ReplayBudget: cfg.ReplayBudget, StageInterval: cfg.StageInterval, StageInbound: cfg.StageInbound,
		MinSeqJump: cfg.MinSeqJump, MaxPacketRate: cfg.MaxPacketRate, BarrierTimeout: cfg.BarrierTimeout,
		ClaimTimeout: cfg.ClaimTimeout, InstallTimeout: cfg.InstallTimeout, FenceTimeout: cfg.FenceTimeout,
		HandoverGrace: cfg.HandoverGrace, SuspectAfter: cfg.SuspectAfter, SuspectStagger: cfg.SuspectStagger,
		ReportInterval: cfg.Health.ReportInterval,
	}, store, dp, prov, sealer, opts...)
	if err != nil {
		return err
	}
	if notifier != nil {
		notifier.Attach(ag)
	}
	if cfg.Bootstrap {
		if err := store.Bootstrap([]raftstore.Server{{ID: cfg.NodeID, Address: store.Addr()}}); err != nil {
			return err
		}
	}
	if apiCfg.Addr != "" {
		// The operator surface is not worth a failover agent that does not
		// start: a port in use is logged, and the agent runs without it.
		if err := surface.Serve(ag, store, apiCfg); err != nil {
			log.Error("operator API not started", "err", err)
		}
	}
	// A node that already holds Raft state was a member before this
	// start: a join that fails only leaves its metadata stale. A new node
	// that cannot join carries nothing.
	member, err := store.HasState()
	if err != nil {
		return err
	}
	runCtx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	done := make(chan error, 1)
	go func() { done <- ag.Run(runCtx) }()
	if len(cfg.Join) > 0 {
		if err := joinCluster(ctx, store, cfg, af.joinTimeout, member, log); err != nil {
			stopAgent()
			<-done
			return err
		}
	}
	log.Info("agent running", "node", cfg.NodeID, "addr", store.Addr(), "role", cfg.Role)
	err = <-done
	log.Info("agent stopped")
	return err
}

// joinCluster joins the cluster through cfg.Join (the store logs every
// attempt). A node new to the cluster that has not joined within timeout
// gets an error back, and the agent exits non-zero: left running outside
// the cluster it would never take over, and its service manager's
// Restart= would never try again. A node that was a member already
// (member) runs on: Raft reconnects it once its peers answer.
func joinCluster(ctx context.Context, store *raftstore.Store, cfg *config.Config, timeout time.Duration, member bool, log *slog.Logger) error {
	jctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := store.JoinCluster(jctx, cfg.Join, raftstore.Role(cfg.Role), cfg.Priority)
	switch {
	case err == nil:
		log.Info("joined the cluster", "via", cfg.Join)
		return nil
	case ctx.Err() != nil:
		return nil // stopping
	case member:
		log.Error("refreshing this member's entry through join failed; running on as the member it is", "join", cfg.Join, "err", err)
		return nil
	}
	return fmt.Errorf("joining the cluster via %s: gave up after %s (-join-timeout): %w", strings.Join(cfg.Join, ", "), timeout, err)
}

func buildDataplane(cfg *config.Config, log *slog.Logger) (agent.Dataplane, func(), error) {
	switch cfg.DataplaneType {
	case "memory":
		return memdp.New(cfg.NodeID, memdp.NewWire()), func() {}, nil
	case "strongswan":
		vc := vici.New(vici.Config{Socket: cfg.ViciSocket, Logger: log})
		xh, err := xfrm.Open(xfrm.Options{Logger: log})
		if err != nil {
			vc.Close()
			return nil, nil, fmt.Errorf("dataplane: opening XFRM: %w", err)
		}
		dp, err := ipsec.New(ipsec.Config{VICI: vc, XFRM: xh, Logger: log,
			Reestablish: ipsec.ReestablishConfig{Template: cfg.Reestablish}})
		if err != nil {
			vc.Close()
			xh.Close()
			return nil, nil, err
		}
		return dp, func() { vc.Close(); xh.Close() }, nil
	}
	return nil, nil, fmt.Errorf("dataplane.type %q: not available in this build", cfg.DataplaneType)
}

// newNotifier starts the notify block's runner; nil when the block names
// no command.
func newNotifier(cfg *config.Config, log *slog.Logger) (*notify.Notifier, error) {
	if len(cfg.Notify.Commands) == 0 {
		return nil, nil
	}
	n, err := notify.New(notify.Config{Node: cfg.NodeID, Commands: cfg.Notify.Commands, Timeout: cfg.Notify.Timeout, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("notify: %w", err)
	}
	return n, nil
}
