package perf

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/handoffvpn/handoff/lab"
)

// InstallRatePackage is the kernel lab scenario InstallLab runs.
const InstallRatePackage = "github.com/handoffvpn/handoff/lab/scenario/installrate"

// InstallLabOptions configure InstallLab.
type InstallLabOptions struct {
	// Sizes are the SA counts to measure, in order.
	Sizes []int
	// BuildDir receives the scenario executable; ScratchRoot the run's
	// scratch directory (os.TempDir if empty).
	BuildDir, ScratchRoot string
	Log                   *slog.Logger
}

// mapCountFile limits the memory mappings of one host process. UML maps
// guest pages into its host processes one by one, and a guest process
// with a large heap (the scenario at 100k SAs holds several hundred MB)
// runs out of mappings at the default of 65530: "UML ran out of memory on
// the host side".
const mapCountFile = "/proc/sys/vm/max_map_count"

// raiseMapCount raises vm.max_map_count to at least want for the run and
// returns a function that puts the old value back.
func raiseMapCount(want int, log *slog.Logger) (func(), error) {
	raw, err := os.ReadFile(mapCountFile)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", mapCountFile, err)
	}
	old := strings.TrimSpace(string(raw))
	if n, err := strconv.Atoi(old); err == nil && n >= want {
		return func() {}, nil
	}
	if err := os.WriteFile(mapCountFile, []byte(strconv.Itoa(want)), 0o644); err != nil {
		return nil, fmt.Errorf("raising %s to %d for the UML guest (needs root): %w", mapCountFile, want, err)
	}
	if log != nil {
		log.Info("raised vm.max_map_count for the UML guest", "from", old, "to", want)
	}
	return func() {
		if err := os.WriteFile(mapCountFile, []byte(old), 0o644); err != nil && log != nil {
			log.Warn("restoring vm.max_map_count", "err", err)
		}
	}, nil
}

// InstallLab boots the UML lab guest with the installrate scenario and
// returns its result. The guest's memory and time bound follow the largest
// size: the kernel needs about 6.3 KB per state and 1–2 KB per policy, and
// UML installs 1,000–15,000 objects a second. For 20k SAs and more it
// raises the host's vm.max_map_count for the run (see raiseMapCount).
func InstallLab(ctx context.Context, o InstallLabOptions) (*InstallRateResult, *lab.Result, error) {
	if len(o.Sizes) == 0 {
		return nil, nil, fmt.Errorf("kernel install benchmark: no sizes")
	}
	largest := 0
	sizes := make([]string, len(o.Sizes))
	for i, n := range o.Sizes {
		largest = max(largest, n)
		sizes[i] = strconv.Itoa(n)
	}
	bins, err := lab.Build(ctx, o.BuildDir, InstallRatePackage)
	if err != nil {
		return nil, nil, err
	}
	// Each size runs four times at most (takeover, raw, and the two
	// states-only runs up to 10k), five kernel objects per SA, at no less
	// than ~500 objects a second in the slowest case seen, plus set-up.
	var objects int
	for _, n := range o.Sizes {
		runs := 3
		if n <= 10000 {
			runs = 5
		}
		objects += 5 * n * runs
	}
	timeout := time.Minute + time.Duration(objects/500)*time.Second
	// ~7 KB of kernel memory per state and ~2 KB per policy, and the
	// scenario's heap (~5 KB per SA at its peak).
	mem := 512 + largest*(2*7+3*2+5)/1024
	if largest >= 20000 {
		restore, err := raiseMapCount(1<<20, o.Log)
		if err != nil {
			return nil, nil, err
		}
		defer restore()
	}
	r := &lab.Runner{ScratchRoot: o.ScratchRoot, Log: o.Log}
	res, err := r.Run(ctx, lab.Scenario{Name: "installrate", Program: bins[InstallRatePackage],
		Args: []string{"-sizes", strings.Join(sizes, ",")}, Timeout: timeout, MemMiB: mem})
	if err != nil {
		return nil, res, err
	}
	var out InstallRateResult
	if err := res.Decode(&out); err != nil {
		return nil, res, err
	}
	for _, n := range o.Sizes {
		if out.Run(n) == nil {
			return nil, res, fmt.Errorf("kernel install benchmark: no run of %d SAs in %s", n, res.Output)
		}
	}
	return &out, res, nil
}
