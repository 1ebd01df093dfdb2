// Command sahandoff runs the SA handoff scenario (lab/scenario/sahandoff)
// in a user-mode-linux guest and prints one JSON line with the six figures
// of its contract ({"sas","gap_ms","probes_lost_after_takeover",
// "client_replay_errors","seq_reuse","second_gap_ms"}; -v prints the whole
// result to stderr). It exits 1 when the result breaks a promise (Check):
// it is what `make lab-sa-handoff` runs (see lab/sahandoff.mk).
//
//	sahandoff [-keep] [-v] [-scratch DIR] [-- scenario flags...]
//
// Scenario flags: -interval 5ms, -encap=true, -reestablish=true, -dpd 2s.
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
	"syscall"
	"time"

	"github.com/handoffvpn/handoff/lab"
)

// Package is the scenario program's import path.
const Package = "github.com/handoffvpn/handoff/lab/scenario/sahandoff"

// Scenario is the SA handoff scenario for the executable built from
// Package: three charons fit in a small guest; the phases take ~20 s.
func Scenario(prog string, args ...string) lab.Scenario {
	return lab.Scenario{Name: "sahandoff", Program: prog, Args: args, Timeout: 2 * time.Minute, MemMiB: 256}
}

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("sahandoff", flag.ContinueOnError)
	keep := fs.Bool("keep", false, "keep the scratch directory (logs, configs) after a successful run")
	verbose := fs.Bool("v", false, "log progress to stderr")
	scratch := fs.String("scratch", "", "parent directory of the run's scratch directory (default $TMPDIR)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Println("SKIP: sahandoff: the kernel lab needs root (network namespaces, user-mode-linux)")
		return 0
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	binDir, err := os.MkdirTemp(*scratch, "sahandoff-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "sahandoff:", err)
		return 1
	}
	defer os.RemoveAll(binDir)
	bins, err := lab.Build(ctx, binDir, Package)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sahandoff:", err)
		return 1
	}
	r := &lab.Runner{ScratchRoot: *scratch, Log: log}
	res, err := r.Run(ctx, Scenario(bins[Package], fs.Args()...))
	if err != nil {
		fmt.Fprintln(os.Stderr, "sahandoff:", err)
		if res != nil {
			fmt.Fprintln(os.Stderr, "sahandoff: logs kept in", res.Dir)
		}
		return 1
	}
	if err := lab.CheckHostClean(res); err != nil {
		fmt.Fprintln(os.Stderr, "sahandoff:", err)
		return 1
	}
	var hr Result
	if err := res.Decode(&hr); err != nil {
		fmt.Fprintln(os.Stderr, "sahandoff:", err)
		return 1
	}
	line, _ := json.Marshal(hr.Contract())
	fmt.Println(string(line))
	if *verbose {
		fmt.Fprintln(os.Stderr, "sahandoff: full result:", string(res.Output))
	}
	if errs := hr.Check(); len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintln(os.Stderr, "sahandoff:", e)
		}
		fmt.Fprintln(os.Stderr, "sahandoff: logs kept in", res.Dir)
		return 1
	}
	if *keep {
		fmt.Fprintln(os.Stderr, "sahandoff: logs in", res.Dir)
	} else if err := os.RemoveAll(res.Dir); err != nil {
		fmt.Fprintln(os.Stderr, "sahandoff:", err)
	}
	return 0
}

// Result is the part of the scenario's result the command and its test
// read.
type Result struct {
	SAs                     int     `json:"sas"`
	GapMS                   float64 `json:"gap_ms"`
	ProbesLostAfterTakeover int     `json:"probes_lost_after_takeover"`
	ClientReplayErrors      int     `json:"client_replay_errors"`
	SeqReuse                int     `json:"seq_reuse"`
	SecondGapMS             float64 `json:"second_gap_ms"`
	ProbesSent              int     `json:"probes_sent"`
	Gw1OSeqRead             uint64  `json:"gw1_oseq_read"`
	Gw2OSeqStart            uint64  `json:"gw2_oseq_start"`
	WireMaxSeq              uint32  `json:"wire_max_seq"`
	SecondPhaseLost         int     `json:"second_phase_probes_lost"`
	ReestablishErr          string  `json:"reestablish_error"`
}

// Contract is the printed line: the six figures, in order.
func (r Result) Contract() any {
	return struct {
		SAs                     int     `json:"sas"`
		GapMS                   float64 `json:"gap_ms"`
		ProbesLostAfterTakeover int     `json:"probes_lost_after_takeover"`
		ClientReplayErrors      int     `json:"client_replay_errors"`
		SeqReuse                bool    `json:"seq_reuse"`
		SecondGapMS             float64 `json:"second_gap_ms"`
	}{r.SAs, r.GapMS, r.ProbesLostAfterTakeover, r.ClientReplayErrors, r.SeqReuse > 0, r.SecondGapMS}
}

// Check returns every promise the handoff broke: an SA handed off, no
// replay error at the client, no ESP sequence number twice on the wire,
// nothing lost once gw2 carried the tunnel, gw2 starting above gw1's last
// number and sending above it, re-establishment without error, and no
// probe lost across the client's next rekeys and DPD.
func (r Result) Check() []error {
	var errs []error
	if r.SAs < 1 {
		errs = append(errs, errors.New("no SA handed off"))
	}
	if r.ClientReplayErrors != 0 {
		errs = append(errs, fmt.Errorf("client counted %d replay errors", r.ClientReplayErrors))
	}
	if r.SeqReuse != 0 {
		errs = append(errs, fmt.Errorf("%d ESP sequence numbers seen twice on the wire", r.SeqReuse))
	}
	if r.ProbesLostAfterTakeover != 0 {
		errs = append(errs, fmt.Errorf("%d probes lost while gw2 carried the tunnel", r.ProbesLostAfterTakeover))
	}
	if r.Gw2OSeqStart <= r.Gw1OSeqRead || uint64(r.WireMaxSeq) <= r.Gw2OSeqStart {
		errs = append(errs, fmt.Errorf("sequence numbers: gw1 read %d, gw2 started after %d, wire max %d", r.Gw1OSeqRead, r.Gw2OSeqStart, r.WireMaxSeq))
	}
	if r.ReestablishErr != "" {
		errs = append(errs, fmt.Errorf("reestablish: %s", r.ReestablishErr))
	}
	if r.SecondPhaseLost != 0 {
		errs = append(errs, fmt.Errorf("%d probes lost across the client's rekeys and DPD after reestablish", r.SecondPhaseLost))
	}
	return errs
}
