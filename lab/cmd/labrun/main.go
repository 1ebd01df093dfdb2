// Command labrun builds a lab scenario program, boots a user-mode-linux
// guest that runs it, prints the scenario's JSON result as one line on
// stdout and checks that the run left nothing behind on the host. It is
// what `make lab-smoke` and `make lab-baseline` run.
//
//	labrun [-keep] [-v] smoke|baseline [scenario flags...]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/handoffvpn/handoff/lab"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("labrun", flag.ContinueOnError)
	keep := fs.Bool("keep", false, "keep the scratch directory (logs, configs) after a successful run")
	verbose := fs.Bool("v", false, "log progress to stderr")
	scratch := fs.String("scratch", "", "parent directory of the run's scratch directory (default $TMPDIR)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: labrun [-keep] [-v] [-scratch DIR] smoke|baseline [scenario flags...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil || fs.NArg() < 1 {
		fs.Usage()
		return 2
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	var pkg string
	var mk func(string, ...string) lab.Scenario
	switch fs.Arg(0) {
	case "smoke":
		pkg, mk = lab.SmokePackage, lab.Smoke
	case "baseline":
		pkg, mk = lab.BaselinePackage, lab.Baseline
	default:
		fmt.Fprintf(os.Stderr, "labrun: unknown scenario %q\n", fs.Arg(0))
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "labrun: the lab runs as root (network namespaces, UML)")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	binDir, err := os.MkdirTemp(*scratch, "labrun-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "labrun:", err)
		return 1
	}
	defer os.RemoveAll(binDir)
	bins, err := lab.Build(ctx, binDir, pkg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "labrun:", err)
		return 1
	}
	r := &lab.Runner{ScratchRoot: *scratch, Log: log}
	res, err := r.Run(ctx, mk(bins[pkg], fs.Args()[1:]...))
	if err != nil {
		fmt.Fprintln(os.Stderr, "labrun:", err)
		if res != nil {
			fmt.Fprintln(os.Stderr, "labrun: logs kept in", res.Dir)
		}
		return 1
	}
	if err := lab.CheckHostClean(res); err != nil {
		fmt.Fprintln(os.Stderr, "labrun:", err)
		return 1
	}
	fmt.Println(string(res.Output))
	if *keep {
		fmt.Fprintln(os.Stderr, "labrun: logs in", res.Dir)
	} else if err := os.RemoveAll(res.Dir); err != nil {
		fmt.Fprintln(os.Stderr, "labrun:", err)
	}
	return 0
}
