package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/healthcheck"
	"github.com/handoffvpn/handoff/healthcheck/ikeprobe"
	"github.com/handoffvpn/handoff/healthcheck/local"
)

// checkerVerdict adapts a running healthcheck.Checker to what the agent
// asks: its own health (agent.Health) or its view of the active
// (agent.ActiveObserver).
type checkerVerdict struct{ c *healthcheck.Checker }

func (v checkerVerdict) verdict() (healthy, known bool, detail string) {
	st := v.c.Status()
	var bad []string
	for _, c := range st.Checks {
		if c.State == healthcheck.StateUnhealthy && c.LastErr != nil {
			bad = append(bad, c.Name+": "+c.LastErr.Error())
		}
	}
	return st.State == healthcheck.StateHealthy, st.State != healthcheck.StateUnknown, strings.Join(bad, "; ")
}

// Healthy is the node's own health; unknown (still rising) counts as
// healthy so that a fresh node is not refused leadership before its first
// results.
func (v checkerVerdict) Healthy() (bool, string) {
	healthy, known, detail := v.verdict()
	return healthy || !known, detail
}

// ObserveActive reports the probes' verdict about the address clients
// use, which is the active gateway's wherever it is.
func (v checkerVerdict) ObserveActive(string) (bool, bool, string) { return v.verdict() }

// buildCheckers starts the configured checkers. The returned stop function
// closes them.
func buildCheckers(cfg *config.Config, log *slog.Logger) (own, observe *healthcheck.Checker, stop func(), err error) {
	h := cfg.Health
	spec := func(c healthcheck.Check) healthcheck.Spec {
		return healthcheck.Spec{Check: c, Interval: h.Interval, Timeout: h.Timeout, Rise: h.Rise, Fall: h.Fall}
	}
	var closers []func() error
	stop = func() {
		for _, c := range closers {
			c()
		}
	}
	if h.LocalChecks {
		specs := []healthcheck.Spec{spec(local.NewVICI(cfg.ViciSocket))}
		if h.CharonProcess != "" {
			specs = append(specs, spec(&local.Process{Comm: h.CharonProcess}))
		}
		if own, err = healthcheck.New(specs, healthcheck.WithLogger(log.With("checks", "own"))); err != nil {
			return nil, nil, stop, fmt.Errorf("health: %w", err)
		}
		if err := own.Start(); err != nil {
			return nil, nil, stop, err
		}
		closers = append(closers, own.Close)
	}
	if h.ProbeAddress.IsValid() {
		var specs []healthcheck.Spec
		for _, port := range []uint16{500, 4500} {
			p, err := ikeprobe.New(ikeprobe.Config{Target: netip.AddrPortFrom(h.ProbeAddress, port)})
			if err != nil {
				stop()
				return nil, nil, func() {}, fmt.Errorf("health.probe_address: %w", err)
			}
			specs = append(specs, spec(p))
		}
		if observe, err = healthcheck.New(specs, healthcheck.WithLogger(log.With("checks", "active"))); err != nil {
			stop()
			return nil, nil, func() {}, fmt.Errorf("health: %w", err)
		}
		if err := observe.Start(); err != nil {
			stop()
			return nil, nil, func() {}, err
		}
		closers = append(closers, observe.Close)
	}
	return own, observe, stop, nil
}
