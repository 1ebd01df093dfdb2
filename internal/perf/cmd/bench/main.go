// Command bench is Handoff's performance driver (`make bench`): it
// measures replication throughput and lag through a three-node Raft
// cluster with mutual TLS and fsync, the heap cost of a replicated SA, the
// snapshot of 100k SAs, and (as root, with the UML lab installed) the
// takeover install time against the kernel's raw netlink rate. It prints a
// table, then one JSON line with the headline figures as its last line.
//
//	go run ./internal/perf/cmd/bench                       # everything
//	go run ./internal/perf/cmd/bench -kernel=off           # no UML lab
//	go run ./internal/perf/cmd/bench -kernel-sizes 1000,10000
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/internal/gotune"
	"github.com/handoffvpn/handoff/internal/perf"
	"github.com/handoffvpn/handoff/internal/profiling"
	"github.com/handoffvpn/handoff/lab"
)

// summary is the final JSON line. Figures not measured are null.
type summary struct {
	UpsertsPerS       *float64 `json:"upserts_per_s"`
	LagP50MS          *float64 `json:"lag_p50_ms"`
	LagP99MS          *float64 `json:"lag_p99_ms"`
	Install10kMS      *float64 `json:"install_10k_ms"`
	Install100kMS     *float64 `json:"install_100k_ms"`
	RawNetlink10kMS   *float64 `json:"raw_netlink_10k_ms"`
	InstallRatio10k   *float64 `json:"install_ratio_10k"`
	BytesPerSA        *float64 `json:"bytes_per_sa"`
	Snapshot100kBytes *int     `json:"snapshot_100k_bytes"`
	Restore100kMS     *float64 `json:"restore_100k_ms"`
}

type options struct {
	storm, rateSAs, heapSAs, snapSAs int
	rate                             float64
	heartbeat                        time.Duration
	batchWindow, commitTimeout       time.Duration
	maxBatch                         int
	variants                         bool
	kernel                           string
	kernelSizes                      []int
	verbose                          bool
}

func main() {
	var o options
	var sizes string
	flag.IntVar(&o.storm, "storm", 50000, "SAs offered at once for the throughput figure")
	flag.IntVar(&o.rateSAs, "rate-sas", 20000, "SAs offered at -rate for the lag figures")
	flag.Float64Var(&o.rate, "rate", 10000, "steady offered load, upserts per second")
	flag.DurationVar(&o.heartbeat, "heartbeat", 150*time.Millisecond, "Raft heartbeat/election timeout (lease a third of it); the agent's default is 150ms")
	var def agent.Config
	def.Defaults()
	flag.DurationVar(&o.batchWindow, "batch-window", def.BatchWindow, "replication.batch_window of the first variant (default: the agent's)")
	flag.DurationVar(&o.commitTimeout, "commit-timeout", 5*time.Millisecond, "raft.commit_timeout of the first variant (default: the configuration's)")
	flag.IntVar(&o.maxBatch, "max-batch", def.MaxBatch, "replication.max_batch of the first variant (default: the agent's)")
	flag.BoolVar(&o.variants, "variants", true, "also measure without fsync, and with commit_timeout 1ms")
	flag.IntVar(&o.heapSAs, "heap-sas", 100000, "SAs in the FSM for the heap figure")
	flag.IntVar(&o.snapSAs, "snapshot-sas", 100000, "SAs in the snapshot")
	flag.StringVar(&o.kernel, "kernel", "auto", "kernel install benchmark in the UML lab: on, off, or auto (on when root and the lab is installed)")
	flag.StringVar(&sizes, "kernel-sizes", "1000,10000,100000", "SA counts for the kernel install benchmark")
	flag.BoolVar(&o.verbose, "v", false, "log progress to stderr")
	procsPerCPU := flag.Int("procs-per-cpu", config.DefaultProcsPerCPU, "Go Ps (GOMAXPROCS) per CPU, as scheduling.procs_per_cpu sets for the agent (GOMAXPROCS in the environment wins)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *procsPerCPU < 1 {
		fmt.Fprintln(os.Stderr, "bench: -procs-per-cpu must be at least 1")
		os.Exit(2)
	}
	// The agent's runtime settings: the figures are the product's.
	sched := config.Defaults().Scheduling
	gotune.Apply(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), gotune.Options{GCPercent: *sched.GCPercent, ProcsPerCPU: *procsPerCPU})
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || n > perf.MaxSAs {
			fmt.Fprintf(os.Stderr, "bench: kernel size %q: want 1..%d\n", f, perf.MaxSAs)
			os.Exit(2)
		}
		o.kernelSizes = append(o.kernelSizes, n)
	}
	stopProfile := func() {}
	if *cpuProfile != "" {
		var err error
		if stopProfile, err = profiling.StartCPU(*cpuProfile); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	stopProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	var t perf.Table
	var s summary
	var failed []error
	host, _ := os.Hostname()
	t.Section(fmt.Sprintf("machine: %s, %d CPUs (GOMAXPROCS %d), %s, %s; load average %s", host, runtime.NumCPU(),
		runtime.GOMAXPROCS(0), runtime.Version(), time.Now().UTC().Format(time.RFC3339), loadavg()))

	// Replication through Raft, production settings first.
	base := perf.ReplicationOptions{StormSAs: o.storm, RateSAs: o.rateSAs, Rate: o.rate, BatchWindow: o.batchWindow,
		CommitTimeout: o.commitTimeout, HeartbeatTimeout: o.heartbeat, MaxBatch: o.maxBatch, Logger: log}
	type variant struct {
		name string
		opt  perf.ReplicationOptions
	}
	variants := []variant{{fmt.Sprintf("fsync, batch_window %v, commit_timeout %v, max_batch %d", o.batchWindow, o.commitTimeout, o.maxBatch), base}}
	if o.variants {
		v := base
		v.NoSync = true
		variants = append(variants, variant{"no fsync, otherwise agent defaults", v})
		v = base
		v.CommitTimeout = time.Millisecond
		variants = append(variants, variant{"fsync, commit_timeout 1ms (lower lag; an idle leader then sends 1,000 commit-index updates a second per follower)", v})
	}
	for i, v := range variants {
		log.Info("replication", "variant", v.name)
		t.Section("replication, 3 nodes in one process, mTLS over loopback, " + v.name)
		// A leader that loses its lease mid-run (a starved heartbeat) ends
		// the run: it is counted and the run repeated, at most three times.
		var r *perf.ReplicationResult
		var err error
		attempts := 0
		for attempts < 3 && ctx.Err() == nil {
			attempts++
			if r, err = perf.Replication(ctx, v.opt); err == nil {
				break
			}
			log.Warn("replication run failed", "variant", v.name, "attempt", attempts, "err", err)
		}
		if err != nil {
			t.Add("error", err.Error(), fmt.Sprintf("after %d attempts", attempts))
			failed = append(failed, fmt.Errorf("replication (%s): %w", v.name, err))
			continue
		}
		st, sd := r.Storm, r.Steady
		t.Add("storm: upserts/s", round(st.PerSec, 0), fmt.Sprintf("%d SAs offered at once, %d entries, %v", st.Upserts, st.Entries, st.Elapsed.Round(time.Millisecond)))
		t.Add("storm: commit p50 / p99 ms", fmt.Sprintf("%.1f / %.1f", perf.MS(st.Commit.Quantile(.5)), perf.MS(st.Commit.Quantile(.99))), "seen on the active → committed on the leader (queueing included)")
		t.Add("storm: lag p50 / p99 ms", fmt.Sprintf("%.1f / %.1f", perf.MS(st.Lag.Quantile(.5)), perf.MS(st.Lag.Quantile(.99))), "seen on the active → applied by a follower (queueing included)")
		t.Add("steady: lag p50 / p99 / max ms", fmt.Sprintf("%.2f / %.2f / %.2f", perf.MS(sd.Lag.Quantile(.5)), perf.MS(sd.Lag.Quantile(.99)), perf.MS(sd.Lag.Max())),
			fmt.Sprintf("%d SAs at %.0f/s, %d entries", sd.Upserts, o.rate, sd.Entries))
		t.Add("steady: commit p50 / p99 ms", fmt.Sprintf("%.2f / %.2f", perf.MS(sd.Commit.Quantile(.5)), perf.MS(sd.Commit.Quantile(.99))), "")
		t.Add("runs", attempts, fmt.Sprintf("%d ended by a leader losing its lease; %d leadership changes in the run kept", attempts-1, r.LeaderChanges))
		if i == 0 {
			s.UpsertsPerS = ptr(round(st.PerSec, 0))
			s.LagP50MS = ptr(perf.MS(sd.Lag.Quantile(.5)))
			s.LagP99MS = ptr(perf.MS(sd.Lag.Quantile(.99)))
		}
	}

	// CPU per SA on the replication path, heap, snapshot.
	t.Section("CPU per SA (one core, no Raft)")
	if c, err := perf.MeasureCPU(20000, 4096); err != nil {
		failed = append(failed, err)
		t.Add("error", err.Error(), "")
	} else {
		t.Add("feed: marshal+hash+seal µs", float64(c.Feed)/1e3, fmt.Sprintf("sealed SA %d bytes", c.SealedBytes))
		t.Add("entry encode µs", float64(c.Encode)/1e3, "")
		t.Add("FSM decode+apply µs", float64(c.Apply)/1e3, "on every node")
		t.Add("takeover unseal+decode µs", float64(c.Takeover)/1e3, "")
	}
	t.Section("memory and snapshots")
	if per, err := perf.HeapPerSA(o.heapSAs); err != nil {
		failed = append(failed, err)
		t.Add("error", err.Error(), "")
	} else {
		t.Add("heap bytes per SA", round(per, 0), fmt.Sprintf("FSM with %d sealed SAs + replay state", o.heapSAs))
		s.BytesPerSA = ptr(round(per, 0))
	}
	if snap, err := perf.Snapshot(o.snapSAs); err != nil {
		failed = append(failed, err)
		t.Add("error", err.Error(), "")
	} else {
		t.Add("snapshot bytes", snap.Bytes, fmt.Sprintf("%d SAs (%d bytes per SA)", snap.SAs, snap.Bytes/snap.SAs))
		t.Add("snapshot take / persist ms", fmt.Sprintf("%.1f / %.1f", perf.MS(snap.Take), perf.MS(snap.Persist)), "copy under the lock / write")
		t.Add("restore ms", perf.MS(snap.Restore), "FSM.Restore (read, validate, rebuild)")
		if o.snapSAs == 100000 {
			s.Snapshot100kBytes = ptr(snap.Bytes)
			s.Restore100kMS = ptr(perf.MS(snap.Restore))
		}
	}

	// Kernel install in the UML lab.
	t.Section("takeover install into a real kernel (UML guest, ipsec.Dataplane over ipsec/xfrm; 2 states + 3 policies per SA)")
	switch ok, why := kernelWanted(o.kernel); {
	case !ok:
		t.Add("skipped", why, "")
	default:
		dir, err := os.MkdirTemp("", "handoff-bench-lab-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		r, lr, err := perf.InstallLab(ctx, perf.InstallLabOptions{Sizes: o.kernelSizes, BuildDir: dir, ScratchRoot: dir, Log: log})
		if err == nil && lr != nil {
			err = lab.CheckHostClean(lr)
		}
		if err != nil {
			failed = append(failed, fmt.Errorf("kernel install benchmark: %w", err))
			t.Add("error", firstLine(err.Error()), "")
			break
		}
		t.Add("guest", r.Kernel, fmt.Sprintf("boot %.0f ms, wall %v, hthresh4 %s", r.BootMS, lr.Wall.Round(time.Second), r.HThresh))
		for _, run := range r.Runs {
			k := fmt.Sprintf("%dk SAs", run.SAs/1000)
			t.Add(k+": takeover install ms", run.HandoffMS, fmt.Sprintf("%.0f SAs/s; unseal+decode %.0f ms; kernel holds %d states, %d policies", float64(run.SAs)/run.HandoffMS*1000, run.DecodeMS, run.States, run.Policies))
			t.Add(k+": raw netlink ms", run.RawMS, "same messages, one blocking sendto+recvfrom each")
			t.Add(k+": raw batched ms", run.RawBatchedMS, "same messages, 64 per sendto, one ack per batch")
			t.Add(k+": ratio raw/takeover", run.Ratio, "target ≥ 0.8")
			if run.RawStatesMS > 0 {
				t.Add(k+": states only raw / ipsec/xfrm ms", fmt.Sprintf("%.0f / %.0f", run.RawStatesMS, run.XFRMStatesMS), "per-message overhead of the library path")
			}
			switch run.SAs {
			case 10000:
				s.Install10kMS, s.RawNetlink10kMS, s.InstallRatio10k = ptr(run.HandoffMS), ptr(run.RawMS), ptr(run.Ratio)
			case 100000:
				s.Install100kMS = ptr(run.HandoffMS)
			}
		}
	}
	if err := t.Write(os.Stdout); err != nil {
		return err
	}
	line, err := json.Marshal(s)
	if err != nil {
		return err
	}
	fmt.Println()
	fmt.Println(string(line))
	return errors.Join(failed...)
}

func kernelWanted(mode string) (bool, string) {
	switch mode {
	case "off":
		return false, "-kernel=off"
	case "on":
		return true, ""
	}
	if os.Geteuid() != 0 {
		return false, "not root (the UML lab needs root)"
	}
	if err := (&lab.Runner{}).Available(); err != nil {
		return false, "UML lab not installed (make lab-deps)"
	}
	return true, ""
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func ptr[T any](v T) *T { return &v }

func round(v float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}
