// Command installrate measures, inside the UML lab guest, how fast a node
// taking over installs the replicated SAs into a real kernel, against the
// kernel's raw netlink rate measured in the same guest: for each size it
// replicates that many sealed SAs into an FSM, then in a fresh network
// namespace installs them the way the agent does (perf.TakeoverInstall
// through ipsec.Dataplane and ipsec/xfrm: unseal, decode, sequence jump,
// two states and three policies per SA), and in another fresh namespace
// sends the same states and policies from messages encoded beforehand, one
// blocking send and receive each on one netlink socket. After each run the
// kernel's counts are checked. The result is perf.InstallRateResult.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/handoffvpn/handoff/internal/perf"
	"github.com/handoffvpn/handoff/ipsec"
	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/ipsec/xfrm"
	"github.com/handoffvpn/handoff/lab/guest"
	"github.com/handoffvpn/handoff/raftstore"
)

func main() {
	fs := flag.NewFlagSet("installrate", flag.ExitOnError)
	sizes := fs.String("sizes", "1000,10000", "comma-separated SA counts")
	detailMax := fs.Int("detail-max", 10000, "largest size that also gets the states-only runs")
	hthresh := fs.Bool("hthresh", true, "set hthresh4 24 32 in each namespace (the policies are /24 to /32)")
	guest.Main(fs, func(ctx context.Context, env *guest.Env) (any, error) {
		// The guest's memory bounds the largest run: collect early.
		debug.SetGCPercent(40)
		var ns []int
		for _, f := range strings.Split(*sizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("size %q: want a positive count", f)
			}
			ns = append(ns, n)
		}
		return run(ctx, env, ns, *detailMax, *hthresh)
	})
}

func run(ctx context.Context, env *guest.Env, sizes []int, detailMax int, hthresh bool) (*perf.InstallRateResult, error) {
	res := &perf.InstallRateResult{Kernel: guest.KernelRelease(), BootMS: perf.MS(env.BootTime())}
	if hthresh {
		res.HThresh = "24 32"
	}
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	for i, n := range sizes {
		r, err := measure(ctx, env.Log, quiet, n, uint32(i)<<20, n <= detailMax, hthresh)
		if err != nil {
			return nil, fmt.Errorf("%d SAs: %w", n, err)
		}
		env.Log.Info("install rate", "sas", n, "handoff_ms", r.HandoffMS, "raw_ms", r.RawMS, "ratio", r.Ratio,
			"raw_states_ms", r.RawStatesMS, "xfrm_states_ms", r.XFRMStatesMS)
		res.Runs = append(res.Runs, *r)
	}
	return res, nil
}

func measure(ctx context.Context, log, quiet *slog.Logger, n int, base uint32, detail, hthresh bool) (*perf.InstallRun, error) {
	sas, err := perf.SAs(n, base)
	if err != nil {
		return nil, err
	}
	// The replicated state a standby holds: sealed SAs and replay states,
	// applied through the FSM as a follower applies the feed's entries.
	sealer, err := newSealer()
	if err != nil {
		return nil, err
	}
	entries, err := perf.LogEntries(sas, sealer, 4096)
	if err != nil {
		return nil, err
	}
	fsm := raftstore.NewFSM(quiet)
	if err := perf.ApplyEntries(fsm, entries); err != nil {
		return nil, err
	}
	entries = nil
	log.Info("replicated state ready", "sas", n)
	run := &perf.InstallRun{SAs: n}
	// The kernel frees a flushed namespace's states in the background: let
	// that finish before the next run is timed.
	settle := func() { time.Sleep(time.Duration(n/20) * time.Millisecond) }

	// Raw: the same kernel objects, messages encoded beforehand, one at a
	// time and then in batches.
	err = inNamespace(hthresh, func(_ string, raw *rawSocket) error {
		took, err := raw.install(rawMessages(raw, fsm, sas, true))
		if err != nil {
			return err
		}
		run.RawMS = perf.MS(took)
		log.Info("raw install", "sas", n, "ms", run.RawMS)
		return expectCounts(raw, n, "raw install")
	})
	if err != nil {
		return nil, fmt.Errorf("raw install: %w", err)
	}
	settle()
	err = inNamespace(hthresh, func(_ string, raw *rawSocket) error {
		took, err := raw.installBatched(rawMessages(raw, fsm, sas, true), 64)
		if err != nil {
			return err
		}
		run.RawBatchedMS = perf.MS(took)
		log.Info("batched raw install", "sas", n, "ms", run.RawBatchedMS)
		return expectCounts(raw, n, "batched install")
	})
	if err != nil {
		return nil, fmt.Errorf("batched raw install: %w", err)
	}
	settle()
	if detail {
		// Diagnostics: states alone, raw and through ipsec/xfrm.
		err = inNamespace(hthresh, func(_ string, raw *rawSocket) error {
			took, err := raw.install(rawMessages(raw, fsm, sas, false))
			run.RawStatesMS = perf.MS(took)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("raw states: %w", err)
		}
		settle()
		err = inNamespace(hthresh, func(path string, raw *rawSocket) error {
			h, err := xfrm.Open(xfrm.Options{Netns: path, Logger: quiet})
			if err != nil {
				return err
			}
			defer h.Close()
			states := make([]*xfrm.State, 0, 2*n)
			for _, c := range sas {
				states = append(states, &xfrm.State{State: c.In, AddTime: c.Child.InstalledAt},
					&xfrm.State{State: c.Out, Replay: xfrm.Replay{OSeq: 1 << 20}, AddTime: c.Child.InstalledAt})
			}
			t0 := time.Now()
			for _, s := range states {
				if _, err := h.Install(ctx, s); err != nil {
					return err
				}
			}
			run.XFRMStatesMS = perf.MS(time.Since(t0))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("xfrm states: %w", err)
		}
		settle()
	}

	// Handoff: the takeover's install phase into a fresh namespace. Only
	// a sample of the generated SAs is kept (to check sequence numbers):
	// the takeover decodes its own copies from the FSM, and at 100k SAs
	// the guest's memory is what limits the run.
	var sample []*sa.ChildSA
	for i := 0; i < n; i += max(1, n/16) {
		sample = append(sample, sas[i])
	}
	sas = nil
	runtime.GC()
	err = inNamespace(hthresh, func(path string, raw *rawSocket) error {
		h, err := xfrm.Open(xfrm.Options{Netns: path, Logger: quiet})
		if err != nil {
			return err
		}
		defer h.Close()
		dp, err := ipsec.New(ipsec.Config{XFRM: h, Logger: quiet,
			// Install never talks to charon; the client only connects on use.
			VICI: vici.New(vici.Config{Socket: "/run/lab/no-charon.vici", Logger: quiet})})
		if err != nil {
			return err
		}
		t, err := perf.TakeoverInstall(ctx, fsm, sealer, dp)
		if err != nil {
			return err
		}
		run.HandoffMS, run.DecodeMS = perf.MS(t.Total()), perf.MS(t.Decode)
		log.Info("takeover install", "sas", n, "ms", run.HandoffMS, "decode_ms", run.DecodeMS)
		if run.States, run.Policies, err = raw.counts(); err != nil {
			return err
		}
		if err := expectCounts(raw, n, "takeover install"); err != nil {
			return err
		}
		return checkStarts(ctx, h, sample, t.Starts)
	})
	if err != nil {
		return nil, fmt.Errorf("takeover install: %w", err)
	}
	settle()
	if run.HandoffMS > 0 {
		run.Ratio = float64(int(run.RawMS/run.HandoffMS*1000)) / 1000
	}
	return run, nil
}

// expectCounts checks that the kernel holds two states and three policies
// per SA.
func expectCounts(raw *rawSocket, n int, what string) error {
	st, pol, err := raw.counts()
	if err != nil {
		return err
	}
	if st != 2*n || pol != 3*n {
		return fmt.Errorf("after the %s the kernel holds %d states and %d policies, want %d and %d", what, st, pol, 2*n, 3*n)
	}
	return nil
}

// rawMessages encodes, for every SA, its two states (with the replay
// state the takeover would set) and, when policies is set, its policies.
func rawMessages(raw *rawSocket, fsm *raftstore.FSM, sas []*sa.ChildSA, policies bool) [][]byte {
	var replay map[string]raftstore.ReplayRecord
	fsm.View(func(st *raftstore.State) {
		replay = make(map[string]raftstore.ReplayRecord, len(st.Replay))
		for id, r := range st.Replay {
			replay[id] = r
		}
	})
	msgs := make([][]byte, 0, 5*len(sas))
	for _, c := range sas {
		r := replay[c.ID]
		var bitmap uint32
		if len(r.Bitmap) > 0 {
			bitmap = r.Bitmap[0]
		}
		msgs = append(msgs, raw.stateMessage(&c.In, 0, uint32(r.Seq), bitmap, c.Child.InstalledAt),
			raw.stateMessage(&c.Out, uint32(r.OSeq+1<<16), 0, 0, c.Child.InstalledAt))
		if policies {
			for i := range c.Policies {
				msgs = append(msgs, raw.policyMessage(&c.Policies[i]))
			}
		}
	}
	return msgs
}

// checkStarts reads back the outbound sequence number of a sample of SAs:
// each must start where the takeover said, past the last synced one.
func checkStarts(ctx context.Context, h *xfrm.Handle, sample []*sa.ChildSA, starts map[string]uint64) error {
	for _, c := range sample {
		r, err := h.ReplayCounters(ctx, &c.Out)
		if err != nil {
			return fmt.Errorf("reading the counters of %s: %w", c.ID, err)
		}
		if want := starts[c.ID]; r.OSeq != want || want <= 1<<20 {
			return fmt.Errorf("SA %s: kernel oseq %d, takeover start %d (last synced %d)", c.ID, r.OSeq, want, 1<<20)
		}
	}
	return nil
}

// inNamespace runs fn in a fresh network namespace (its own, empty XFRM
// tables) with a raw socket there, then flushes and deletes it.
func inNamespace(hthresh bool, fn func(path string, raw *rawSocket) error) (err error) {
	name := fmt.Sprintf("rate%d", time.Now().UnixNano())
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading the current namespace: %w", err)
	}
	ns, nerr := netns.NewNamed(name)
	serr := netns.Set(orig)
	orig.Close()
	runtime.UnlockOSThread()
	if nerr != nil {
		return fmt.Errorf("creating namespace %s: %w", name, nerr)
	}
	if serr != nil {
		return fmt.Errorf("returning from namespace %s: %w", name, serr)
	}
	defer func() {
		ns.Close()
		err = errors.Join(err, netns.DeleteNamed(name))
	}()
	raw, err := openRaw(ns)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, raw.flush(), raw.Close()) }()
	if hthresh {
		if err := raw.setHThresh(24, 32); err != nil {
			return err
		}
	}
	return fn("/run/netns/"+name, raw)
}

func newSealer() (*raftstore.Sealer, error) {
	key := make([]byte, raftstore.KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating a cluster key: %w", err)
	}
	return raftstore.NewSealer(key)
}
