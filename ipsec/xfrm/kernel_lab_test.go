package xfrm

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/lab"
)

// kernelChecks mirrors the result of lab/scenario/xfrmkernel.
type kernelChecks struct {
	Checks []struct {
		Name   string `json:"name"`
		OK     bool   `json:"ok"`
		Detail string `json:"detail"`
	} `json:"checks"`
	HZ              uint32  `json:"hz"`
	InstallPerSec   float64 `json:"install_per_sec"`
	DumpPerSec      float64 `json:"dump_per_sec"`
	Installed       int     `json:"installed"`
	DumpedDuringAdd int     `json:"dumped_during_adds"`
}

// TestPrivilegedKernel runs this package against a real kernel with ESP:
// the host kernels have none, so it boots the UML lab guest with
// lab/scenario/xfrmkernel and checks every assertion that scenario made.
func TestPrivilegedKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: -short runs no lab")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: the kernel XFRM test boots the UML lab, which needs root; CI runs it as root")
	}
	r := &lab.Runner{ScratchRoot: t.TempDir(), Log: slog.New(slog.NewTextHandler(testLog{t}, nil))}
	if err := r.Available(); err != nil {
		t.Fatalf("%v: run `make lab-deps`", err)
	}
	const pkg = "github.com/handoffvpn/handoff/lab/scenario/xfrmkernel"
	// No deadline on the build: a busy machine may take long to compile,
	// and `go test -timeout` bounds the run anyway.
	bins, err := lab.Build(t.Context(), t.TempDir(), pkg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := r.Run(ctx, lab.Scenario{Name: "xfrmkernel", Program: bins[pkg], Args: []string{"-bulk", "2000"}, Timeout: 2 * time.Minute, MemMiB: 256,
		// cipher+integrity states need the CBC and authenc templates.
		Modules: []string{"cbc", "authenc", "aes_ti"}})
	if err != nil {
		t.Fatal(err)
	}
	var kc kernelChecks
	if err := res.Decode(&kc); err != nil {
		t.Fatal(err)
	}
	if len(kc.Checks) < 10 {
		t.Fatalf("only %d checks ran: %s", len(kc.Checks), res.Output)
	}
	ran := map[string]bool{}
	for _, c := range kc.Checks {
		ran[c.Name] = true
	}
	for _, name := range []string{"dump round trip", "policies round trip", "batched install", "delete twice"} {
		if !ran[name] {
			t.Errorf("kernel check %q did not run", name)
		}
	}
	for _, c := range kc.Checks {
		if !c.OK {
			t.Errorf("kernel check %q failed: %s", c.Name, c.Detail)
		}
	}
	if kc.HZ != 100 {
		t.Errorf("calibrated HZ %d, UML runs at 100", kc.HZ)
	}
	t.Logf("UML kernel: %d states installed at %.0f/s, dumped at %.0f/s; %d dumped while adding", kc.Installed, kc.InstallPerSec, kc.DumpPerSec, kc.DumpedDuringAdd)
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
