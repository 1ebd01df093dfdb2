// Command labrun builds a lab scenario program, boots a user-mode-linux
// guest that runs it, prints the scenario's JSON result as one line on
// stdout and checks that the run left nothing behind on the host. It is
// what `make lab-smoke` and `make lab-baseline` run.
//
//	labrun [-keep] [-v] smoke|baseline [scenario flags...]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
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
		fmt.Printf("SKIP: labrun %s: the kernel lab needs root (network namespaces, user-mode-linux)\n", fs.Arg(0))
		return 0
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
	line, err := report(fs.Arg(0), res.Output)
	if line != "" {
		fmt.Println(line)
	}
	if *verbose || err != nil {
		fmt.Fprintln(os.Stderr, "labrun: full result:", string(res.Output))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "labrun:", err)
		fmt.Fprintln(os.Stderr, "labrun: logs kept in", res.Dir)
		return 1
	}
	if *keep {
		fmt.Fprintln(os.Stderr, "labrun: logs in", res.Dir)
	} else if err := os.RemoveAll(res.Dir); err != nil {
		fmt.Fprintln(os.Stderr, "labrun:", err)
	}
	return 0
}

// smokeFields are the smoke line's fields, in order (issue 3's contract);
// -v prints the whole result (ESP states, capture, timings) to stderr.
var smokeFields = []string{"boot_ms", "tunnel_up_ms", "probes_sent", "probes_lost", "kernel"}

// report turns a scenario's result into its one-line summary, and fails a
// smoke run that lost a probe or sent fewer than 1,000.
func report(scenario string, out []byte) (string, error) {
	if scenario != "smoke" {
		return string(out), nil
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(out, &all); err != nil {
		return "", fmt.Errorf("reading the smoke result: %w", err)
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range smokeFields {
		v, ok := all[k]
		if !ok {
			return "", fmt.Errorf("smoke result has no %q", k)
		}
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%s", k, v)
	}
	b.WriteByte('}')
	var n struct {
		Sent int `json:"probes_sent"`
		Lost int `json:"probes_lost"`
	}
	if err := json.Unmarshal(out, &n); err != nil {
		return b.String(), fmt.Errorf("reading the smoke counts: %w", err)
	}
	switch {
	case n.Sent < 1000:
		return b.String(), fmt.Errorf("smoke sent %d probes, want at least 1000", n.Sent)
	case n.Lost != 0:
		return b.String(), fmt.Errorf("smoke lost %d of %d probes through the tunnel", n.Lost, n.Sent)
	}
	return b.String(), nil
}
