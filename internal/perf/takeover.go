package perf

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/raftstore"
)

// Installer is the dataplane's install call (agent.Dataplane.Install):
// *ipsec.Dataplane over the kernel, *memdp.Dataplane in memory.
type Installer interface {
	Install(ctx context.Context, sas []sa.Install) error
}

// TakeoverTiming is what TakeoverInstall measured.
type TakeoverTiming struct {
	SAs int
	// Decode is the CPU part: copying the entries out of the FSM,
	// unsealing, decoding, hashing and computing the sequence jumps.
	Decode time.Duration
	// Install is the dataplane's Install of every SA.
	Install time.Duration
	// Starts holds each SA's outbound starting sequence number, by ID.
	Starts map[string]uint64
}

// Total is the whole install phase of a takeover.
func (t *TakeoverTiming) Total() time.Duration { return t.Decode + t.Install }

// TakeoverInstall does the install phase of a takeover the way the agent
// does (its installReplicated needs a whole agent): agent.PrepareInstall
// with the agent's default jump settings, then every SA handed to
// dp.Install in one call. Unlike the agent it fails when any SA cannot be
// opened: the benchmark's SAs all can.
func TakeoverInstall(ctx context.Context, fsm *raftstore.FSM, sealer *raftstore.Sealer, dp Installer) (*TakeoverTiming, error) {
	t0 := time.Now()
	var cfg agent.Config
	cfg.Defaults()
	p := agent.PrepareInstall(fsm, sealer, cfg, t0)
	if len(p.Errs) > 0 {
		return nil, fmt.Errorf("opening %d replicated SAs: %w", len(p.Errs), errors.Join(p.Errs...))
	}
	starts := make(map[string]uint64, len(p.Installs))
	for _, in := range p.Installs {
		starts[in.SA.ID] = in.OSeq
	}
	t := &TakeoverTiming{SAs: len(p.Installs), Decode: time.Since(t0), Starts: starts}
	t1 := time.Now()
	if err := dp.Install(ctx, p.Installs); err != nil {
		return t, fmt.Errorf("installing %d replicated SAs: %w", len(p.Installs), err)
	}
	t.Install = time.Since(t1)
	return t, nil
}

// InstallRun is one size of the kernel install benchmark (the installrate
// lab scenario). Every figure is from one guest and one kernel, run after
// run, each run in a fresh network namespace.
type InstallRun struct {
	SAs int `json:"sas"`
	// HandoffMS is TakeoverInstall through ipsec.Dataplane and
	// ipsec/xfrm: two states and three policies per SA, with the CPU part
	// (DecodeMS) included.
	HandoffMS float64 `json:"handoff_ms"`
	DecodeMS  float64 `json:"decode_ms"`
	// RawMS installs the same states and policies from messages encoded
	// beforehand, one send and one receive per message on one blocking
	// netlink socket: the kernel's own rate.
	RawMS float64 `json:"raw_ms"`
	// RawBatchedMS installs the same messages 64 to a sendto, with one
	// acknowledgement per batch: what a batching dataplane could reach.
	RawBatchedMS float64 `json:"raw_batched_ms"`
	// RawStatesMS is the minimal loop of XFRM_MSG_NEWSA alone (both states
	// of every SA), and XFRMStatesMS the same states through
	// xfrm.Handle.Install (only for the smaller sizes).
	RawStatesMS  float64 `json:"raw_states_ms,omitempty"`
	XFRMStatesMS float64 `json:"xfrm_states_ms,omitempty"`
	// Ratio is RawMS / HandoffMS (1 = as fast as the kernel allows).
	Ratio float64 `json:"ratio"`
	// States and Policies are the kernel's counts after the Handoff run
	// (XFRM_MSG_GETSADINFO / GETSPDINFO).
	States   int `json:"states"`
	Policies int `json:"policies"`
}

// InstallRateResult is the installrate scenario's result.json.
type InstallRateResult struct {
	Kernel  string       `json:"kernel"`
	BootMS  float64      `json:"boot_ms"`
	HThresh string       `json:"hthresh4"`
	Runs    []InstallRun `json:"runs"`
}

// Run returns the run of n SAs, or nil.
func (r *InstallRateResult) Run(n int) *InstallRun {
	for i := range r.Runs {
		if r.Runs[i].SAs == n {
			return &r.Runs[i]
		}
	}
	return nil
}
