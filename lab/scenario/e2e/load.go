package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"runtime"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/handoffvpn/handoff/lab/topo"
)

// loadSpec is the load a scenario runs under from before its warm-up to
// the end of its main probe stream: what a busy gateway does to its
// agent, inside the guest.
type loadSpec struct {
	// busy is the number of busy-loop processes at normal priority.
	busy int
	// delay, jitter and lossPct shape every packet each gateway sends on
	// its outside link (tc netem), which carries Raft, the cluster's RPCs
	// and the tunnels.
	delay, jitter time.Duration
	lossPct       float64
}

func (l loadSpec) on() bool { return l.busy > 0 || l.delay > 0 || l.jitter > 0 || l.lossPct > 0 }

func (l loadSpec) String() string {
	return fmt.Sprintf("%d busy loops, netem delay %v ± %v, loss %.2f%%", l.busy, l.delay, l.jitter, l.lossPct)
}

// load is a running loadSpec; stop ends it.
type load struct {
	busy  []*exec.Cmd
	gws   []*topo.Node
	shape bool
	log   *slog.Logger
}

// startLoad starts the busy loops (in the guest's root namespace: the CPU
// is the guest's, whichever namespace a process is in) and the netem
// qdiscs. On error what was started is stopped.
func startLoad(spec loadSpec, gws []*topo.Node, log *slog.Logger) (*load, error) {
	l := &load{gws: gws, log: log}
	for range spec.busy {
		// exec.Command leaves the policy alone: the loops run at the
		// scenario's own, normal, scheduling (the agents are the ones a
		// -realtime or -nice sets apart).
		cmd := exec.Command("/bin/sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			return nil, errors.Join(fmt.Errorf("starting a busy loop: %w", err), l.stop())
		}
		l.busy = append(l.busy, cmd)
	}
	if spec.delay > 0 || spec.jitter > 0 || spec.lossPct > 0 {
		l.shape = true
		for _, gw := range gws {
			if err := netem(gw, spec); err != nil {
				return nil, errors.Join(err, l.stop())
			}
		}
	}
	log.Info("load on", "load", spec.String(), "cpus", runtime.NumCPU())
	return l, nil
}

// netem puts spec's delay, jitter and loss on the gateway's outside link.
func netem(gw *topo.Node, spec loadSpec) error {
	link, err := gw.Netlink().LinkByName(topo.OuterIf)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", topo.OuterIf, gw.Name, err)
	}
	q := netlink.NewNetem(netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		netlink.NetemQdiscAttrs{Latency: uint32(spec.delay.Microseconds()), Jitter: uint32(spec.jitter.Microseconds()), Loss: float32(spec.lossPct)})
	if err := gw.Netlink().QdiscAdd(q); err != nil {
		return fmt.Errorf("adding netem (%s) on %s of %s: %w", spec, topo.OuterIf, gw.Name, err)
	}
	return nil
}

// stop ends the busy loops by their PIDs and removes the qdiscs. Safe
// twice.
func (l *load) stop() error {
	if len(l.busy) == 0 && !l.shape {
		return nil
	}
	var errs []error
	for _, cmd := range l.busy {
		if err := cmd.Process.Kill(); err != nil {
			errs = append(errs, fmt.Errorf("ending busy loop %d: %w", cmd.Process.Pid, err))
		}
		_ = cmd.Wait() // killed: the error says so
	}
	l.busy = nil
	if l.shape {
		for _, gw := range l.gws {
			link, err := gw.Netlink().LinkByName(topo.OuterIf)
			if err != nil {
				continue // a killed gateway's link is down, not gone; nothing to undo either way
			}
			q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT}, QdiscType: "netem"}
			if err := gw.Netlink().QdiscDel(q); err != nil {
				errs = append(errs, fmt.Errorf("removing netem from %s: %w", gw.Name, err))
			}
		}
		l.shape = false
	}
	if l.log != nil {
		l.log.Info("load off")
	}
	return errors.Join(errs...)
}
