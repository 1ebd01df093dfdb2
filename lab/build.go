package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"time"
)

// Import paths of the scenario programs in this module.
const (
	SmokePackage    = "github.com/handoffvpn/handoff/lab/scenario/smoke"
	BaselinePackage = "github.com/handoffvpn/handoff/lab/scenario/baseline"
)

// Build compiles main packages into static executables in outDir (one go
// build for all of them) and returns each package's executable path. The
// guest runs them through hostfs: static, because every dynamic loader
// start costs system calls, and UML is slow at those.
func Build(ctx context.Context, outDir string, pkgs ...string) (map[string]string, error) {
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("building scenario programs: no packages")
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", outDir, err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	args := append([]string{"build", "-trimpath", "-o", outDir + string(filepath.Separator)}, pkgs...)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building %v: %w\n%s", pkgs, err, out)
	}
	bins := make(map[string]string, len(pkgs))
	for _, p := range pkgs {
		bin := filepath.Join(outDir, path.Base(p))
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("building %s: no executable: %w", p, err)
		}
		bins[p] = bin
	}
	return bins, nil
}

// Smoke is the smoke scenario for the executable built from SmokePackage:
// one client, one gateway, an IKEv2 tunnel with kernel ESP and a probe
// stream through it.
func Smoke(prog string, args ...string) Scenario {
	return Scenario{Name: "smoke", Program: prog, Args: args, Timeout: 90 * time.Second, MemMiB: 256}
}

// Baseline is the keepalived + DPD failover scenario for the executable
// built from BaselinePackage: the yardstick for Handoff's own failover.
func Baseline(prog string, args ...string) Scenario {
	return Scenario{Name: "baseline", Program: prog, Args: args, Timeout: 120 * time.Second, MemMiB: 256}
}
