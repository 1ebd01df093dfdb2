// Command e2ebench is the failover benchmark of `make bench-failover`, run
// on the host (as root): it builds the e2e scenario, the keepalived
// baseline and the handoff binary, boots one user-mode-linux guest per run
// and alternates the two: Handoff's agents with the active killed
// (lab/scenario/e2e -fault kill) and keepalived + strongSwan with the active
// killed the same way (lab/scenario/baseline). It prints one JSON line and
// writes the per-phase breakdown, from the agents' committed timings, to a
// Markdown file (docs/failover-timings.md).
//
//	e2ebench [-n 5] [-doc docs/failover-timings.md] [-keep] [-v] [-- e2e flags...]
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
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/handoffvpn/handoff/lab"
)

// Import paths of what the benchmark builds.
const (
	E2EPackage     = "github.com/handoffvpn/handoff/lab/scenario/e2e"
	HandoffPackage = "github.com/handoffvpn/handoff/cmd/handoff"
)

// e2eResult is the part of the e2e scenario's result the benchmark reads.
type e2eResult struct {
	GapMS      float64 `json:"gap_ms"`
	ProbesLost int     `json:"probes_lost"`
	Resumed    bool    `json:"resumed"`
	NewActive  string  `json:"new_active"`
	VIPMovedMS float64 `json:"vip_moved_ms"`
	GapStartMS float64 `json:"gap_start_ms"`
	FencedMS   float64 `json:"fenced_ms"`
	LostRuns   []struct {
		AtMS float64 `json:"at_ms"`
		N    int     `json:"n"`
	} `json:"lost_runs"`
	ESPSeqReused int     `json:"esp_seq_reused"`
	SecondGapMS  float64 `json:"second_gap_ms"`
	SecondLost   int     `json:"second_lost"`
	HeartbeatMS  int64   `json:"heartbeat_ms"`
	LeaseMS      int64   `json:"lease_ms"`
	IntervalMS   float64 `json:"interval_ms"`
	Takeover     *struct {
		Term      uint64  `json:"term"`
		SAs       int     `json:"sas"`
		DetectMS  float64 `json:"detect_ms"`
		ElectMS   float64 `json:"elect_ms"`
		ClaimMS   float64 `json:"claim_ms"`
		MoveMS    float64 `json:"move_ms"`
		InstallMS float64 `json:"install_ms"`
		TotalMS   float64 `json:"total_ms"`
		AtMS      float64 `json:"at_ms"`
	} `json:"takeover"`
	TermsWithTwoActives []uint64 `json:"terms_with_two_actives"`
}

type baselineResult struct {
	GapMS        float64 `json:"gap_ms"`
	ProbesLost   int     `json:"probes_lost"`
	VIPMovedMS   float64 `json:"vip_moved_ms"`
	ESPSeqReused int     `json:"esp_seq_reused"`
}

// Summary is the benchmark's JSON line.
type Summary struct {
	Runs                int      `json:"runs"`
	HandoffGapMSMedian  float64  `json:"handoff_gap_ms_median"`
	HandoffGapMSMax     float64  `json:"handoff_gap_ms_max"`
	BaselineGapMSMedian float64  `json:"baseline_gap_ms_median"`
	Ratio               float64  `json:"ratio"`
	HandoffLostMedian   float64  `json:"handoff_lost_median"`
	DrainLost           *int     `json:"drain_lost"`
	SeqReuse            bool     `json:"seq_reuse"`
	HandoffSecondGapMS  float64  `json:"handoff_second_gap_ms_median"`
	Failed              []string `json:"failed,omitempty"`
}

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("e2ebench", flag.ContinueOnError)
	n := fs.Int("n", 5, "runs of each side")
	doc := fs.String("doc", "docs/failover-timings.md", "Markdown file for the per-phase breakdown (\"\" for none)")
	keep := fs.Bool("keep", false, "keep the scratch directories")
	verbose := fs.Bool("v", false, "log progress to stderr")
	scratch := fs.String("scratch", "", "parent of the scratch directories (default $TMPDIR)")
	skipBaseline := fs.Bool("skip-baseline", false, "run only the Handoff side (for trying scenario flags)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2ebench: the lab runs as root (network namespaces, UML)")
		return 2
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, log, *n, *doc, *keep, *skipBaseline, *scratch, fs.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "e2ebench:", err)
		return 1
	}
	return 0
}

// Scenario is the e2e scenario for the executable built from E2EPackage.
func Scenario(prog, handoff string, args ...string) lab.Scenario {
	return lab.Scenario{Name: "e2e", Program: prog, Args: append([]string{"-handoff", handoff}, args...),
		Timeout: 100 * time.Second, MemMiB: 384,
		// The linux provider opens netlink for every family the library
		// knows, netfilter included: without nfnetlink it fails to start.
		Modules: []string{"nfnetlink"}}
}

func bench(ctx context.Context, log *slog.Logger, n int, doc string, keep, skipBaseline bool, scratch string, extra []string) error {
	binDir, err := os.MkdirTemp(scratch, "e2ebench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	bins, err := lab.Build(ctx, binDir, E2EPackage, lab.BaselinePackage, HandoffPackage)
	if err != nil {
		return err
	}
	r := &lab.Runner{ScratchRoot: scratch, Log: log}
	var (
		ho    []e2eResult
		base  []baselineResult
		drain []e2eResult
		sum   = Summary{Runs: n}
	)
	runOne := func(sc lab.Scenario, v any) error {
		res, err := r.Run(ctx, sc)
		if err == nil {
			err = errors.Join(res.Decode(v), lab.CheckHostClean(res))
		}
		if res != nil && (keep || err != nil) {
			fmt.Fprintf(os.Stderr, "e2ebench: %s logs in %s\n", sc.Name, res.Dir)
		} else if res != nil {
			os.RemoveAll(res.Dir)
		}
		return err
	}
	for i := 0; i < n; i++ {
		var h e2eResult
		if err := runOne(Scenario(bins[E2EPackage], bins[HandoffPackage], append([]string{"-fault", "kill"}, extra...)...), &h); err != nil {
			sum.Failed = append(sum.Failed, fmt.Sprintf("handoff run %d: %v", i+1, firstLine(err)))
		} else {
			ho = append(ho, h)
			fmt.Fprintf(os.Stderr, "e2ebench: handoff run %d: gap %.1f ms, %d lost\n", i+1, h.GapMS, h.ProbesLost)
		}
		if skipBaseline {
			continue
		}
		var d e2eResult
		if err := runOne(Scenario(bins[E2EPackage], bins[HandoffPackage], append([]string{"-fault", "drain", "-second=false"}, extra...)...), &d); err != nil {
			sum.Failed = append(sum.Failed, fmt.Sprintf("drain run %d: %v", i+1, firstLine(err)))
		} else {
			drain = append(drain, d)
			sum.SeqReuse = sum.SeqReuse || d.ESPSeqReused > 0
			fmt.Fprintf(os.Stderr, "e2ebench: drain run %d: gap %.1f ms, %d lost\n", i+1, d.GapMS, d.ProbesLost)
		}
		var b baselineResult
		if err := runOne(lab.Baseline(bins[lab.BaselinePackage]), &b); err != nil {
			sum.Failed = append(sum.Failed, fmt.Sprintf("baseline run %d: %v", i+1, firstLine(err)))
		} else {
			base = append(base, b)
			fmt.Fprintf(os.Stderr, "e2ebench: baseline run %d: gap %.1f ms, %d lost\n", i+1, b.GapMS, b.ProbesLost)
		}
	}
	if skipBaseline {
		for _, h := range ho {
			line, _ := json.Marshal(h)
			fmt.Println(string(line))
		}
		return nil
	}
	if len(ho) == 0 || len(base) == 0 {
		return fmt.Errorf("no successful run: %v", sum.Failed)
	}
	gaps := collect(ho, func(h e2eResult) float64 { return h.GapMS })
	sum.HandoffGapMSMedian = median(gaps)
	sum.HandoffGapMSMax = slices.Max(gaps)
	sum.HandoffLostMedian = median(collect(ho, func(h e2eResult) float64 { return float64(h.ProbesLost) }))
	sum.HandoffSecondGapMS = median(collect(ho, func(h e2eResult) float64 { return h.SecondGapMS }))
	sum.BaselineGapMSMedian = median(collect(base, func(b baselineResult) float64 { return b.GapMS }))
	if sum.HandoffGapMSMedian > 0 {
		sum.Ratio = round1(sum.BaselineGapMSMedian / sum.HandoffGapMSMedian)
	}
	for _, h := range ho {
		sum.SeqReuse = sum.SeqReuse || h.ESPSeqReused > 0
	}
	if len(drain) > 0 {
		dl := int(median(collect(drain, func(d e2eResult) float64 { return float64(d.ProbesLost) })))
		sum.DrainLost = &dl
	}
	for _, b := range base {
		sum.SeqReuse = sum.SeqReuse || b.ESPSeqReused > 0
	}
	line, err := json.Marshal(sum)
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	if doc != "" {
		if err := os.WriteFile(doc, []byte(render(sum, ho, drain, base, extra)), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", doc, err)
		}
		abs, _ := filepath.Abs(doc)
		fmt.Fprintln(os.Stderr, "e2ebench: wrote", abs)
	}
	if len(sum.Failed) > 0 {
		return fmt.Errorf("%d run(s) failed: %s", len(sum.Failed), strings.Join(sum.Failed, "; "))
	}
	return nil
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func collect[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, 0, len(xs))
	for _, x := range xs {
		out = append(out, f(x))
	}
	return out
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return round1(s[len(s)/2])
	}
	return round1((s[len(s)/2-1] + s[len(s)/2]) / 2)
}

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }

// render writes the Markdown breakdown.
func render(sum Summary, ho []e2eResult, drain []e2eResult, base []baselineResult, extra []string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Failover timings (kernel lab)\n\n")
	p("Written by `make bench-failover` (lab/scenario/e2ebench) on %s. ", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	p("Each run boots a user-mode-linux guest: three gateways with charon (kernel-netlink) and `handoff agent` ")
	p("(strongSwan dataplane, linux provider), a client with a tunnel and a probe stream through it (100/s for Handoff, 200/s for the baseline); the active gateway ")
	p("dies (links down, agent and charon SIGKILLed). The baseline is keepalived (VRRPv3, 100 ms adverts) + ")
	p("strongSwan with client DPD, killed the same way. Handoff and baseline runs alternate in the same benchmark.\n\n")
	if len(extra) > 0 {
		p("Scenario flags: `%s`.\n\n", strings.Join(extra, " "))
	}
	line, _ := json.Marshal(sum)
	p("```\n%s\n```\n\n", line)
	p("## Handoff, active killed: per run\n\n")
	p("Phases are the new active's committed timings (`active` entry in the Raft log, logged by the agent): ")
	p("**detect** = last contact with the old leader → candidacy, **elect** = candidacy → leadership, ")
	p("**claim** = leadership → `claim` committed (Barrier, membership, the claim entry), **install** = replicated SAs into the kernel ")
	p("(before the move), **move** = provider claim (outside VIP, then inside VIP: owner query, address add, gratuitous ARP; then the yields). ")
	p("*last contact* (≈) is the new active's log time minus its agent total, relative to the fault. ")
	p("*client gap* is the largest gap between echoes the client saw.\n\n")
	p("| run | client gap ms | lost | last contact ms (≈) | detect | elect | claim | install | move | agent total | VIP on new active ms | active logged ms | second-phase gap ms |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	var det, el, cl, mv, in, tot, vip, at, pre []float64
	for i, h := range ho {
		t := h.Takeover
		if t == nil {
			p("| %d | %.1f | %d | – | – | – | – | – | – | – | – | – | %.1f |\n", i+1, h.GapMS, h.ProbesLost, h.SecondGapMS)
			continue
		}
		// The agent's total starts at the old leader's last contact; the
		// active line is logged at AtMS after the fault.
		lastContact := t.AtMS - t.TotalMS
		p("| %d | %.1f | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", i+1, h.GapMS, h.ProbesLost,
			-lastContact, t.DetectMS, t.ElectMS, t.ClaimMS, t.InstallMS, t.MoveMS, t.TotalMS, h.VIPMovedMS, t.AtMS, h.SecondGapMS)
		det, el, cl, mv, in, tot = append(det, t.DetectMS), append(el, t.ElectMS), append(cl, t.ClaimMS), append(mv, t.MoveMS), append(in, t.InstallMS), append(tot, t.TotalMS)
		vip, at, pre = append(vip, h.VIPMovedMS), append(at, t.AtMS), append(pre, -lastContact)
	}
	p("| **median** | **%.1f** | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n\n",
		sum.HandoffGapMSMedian, sum.HandoffLostMedian, median(pre), median(det), median(el), median(cl), median(in), median(mv), median(tot), median(vip), median(at), sum.HandoffSecondGapMS)
	if sum.DrainLost != nil {
		p("Planned handover (`handoff drain` on the active), median probes lost: **%d** (see *Planned hand-over* below). ", *sum.DrainLost)
		p("Times are from the drain request; *lost runs* are the runs of consecutive lost probes, at the first one's send time.\n\n")
		p("| run | lost | lost runs (ms: count) | VIP on successor ms | old active fenced ms | successor active ms |\n|---|---|---|---|---|---|\n")
		for i, d := range drain {
			var runs []string
			for _, r := range d.LostRuns {
				runs = append(runs, fmt.Sprintf("%.0f: %d", r.AtMS, r.N))
			}
			at := 0.0
			if d.Takeover != nil {
				at = d.Takeover.AtMS
			}
			p("| %d | %d | %s | %.1f | %.1f | %.1f |\n", i+1, d.ProbesLost, strings.Join(runs, ", "), d.VIPMovedMS, d.FencedMS, at)
		}
		p("\n")
	}
	p("## Baseline (keepalived + DPD): per run\n\n| run | client gap ms | lost | VIP moved ms |\n|---|---|---|---|\n")
	for i, bl := range base {
		p("| %d | %.1f | %d | %.1f |\n", i+1, bl.GapMS, bl.ProbesLost, bl.VIPMovedMS)
	}
	p("\n")
	if len(sum.Failed) > 0 {
		p("## Failed runs\n\n")
		for _, f := range sum.Failed {
			p("- %s\n", f)
		}
		p("\n")
	}
	p("%s", analysis)
	return b.String()
}
