// Command sahandoff runs the SA handoff scenario (lab/scenario/sahandoff)
// in a user-mode-linux guest and prints its JSON result as one line: it is
// what `make lab-sa-handoff` runs (see lab/sahandoff.mk).
//
//	sahandoff [-keep] [-v] [-scratch DIR] [-- scenario flags...]
//
// Scenario flags: -interval 5ms, -encap=true, -reestablish=true, -dpd 2s.
package main

import (
	"context"
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
		fmt.Fprintln(os.Stderr, "sahandoff: the lab runs as root (network namespaces, UML)")
		return 2
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
	fmt.Println(string(res.Output))
	if *keep {
		fmt.Fprintln(os.Stderr, "sahandoff: logs in", res.Dir)
	} else if err := os.RemoveAll(res.Dir); err != nil {
		fmt.Fprintln(os.Stderr, "sahandoff:", err)
	}
	return 0
}
