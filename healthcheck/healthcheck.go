// Package healthcheck decides whether a gateway could serve a VPN client
// right now. It runs checks (an IKEv2 probe on UDP 500 and 4500, a probe
// through the tunnel, CHILD_SA counters, VICI and the charon process; see
// the subpackages) on a schedule, each with a timeout, and turns their
// results into a verdict with rise/fall hysteresis, so one lost packet does
// not flip a gateway and a dead one is declared dead within fall × interval.
//
// The Checker reports transitions through a callback; the agent feeds them
// to Raft, where package healthcheck/quorum turns the standbys' verdicts
// about the active gateway into a failover decision. Time comes from an
// injected Clock so tests drive intervals and timeouts without sleeping.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
)

// State is the verdict about one check or about the whole gateway.
type State uint8

const (
	// StateUnknown: not enough results yet to rise or fall.
	StateUnknown State = iota
	// StateHealthy: the last Rise results passed (and no Fall since).
	StateHealthy
	// StateUnhealthy: the last Fall results failed (and no Rise since).
	StateUnhealthy
)

func (s State) String() string {
	switch s {
	case StateUnknown:
		return "unknown"
	case StateHealthy:
		return "healthy"
	case StateUnhealthy:
		return "unhealthy"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Sentinel errors. Checks wrap their own errors; these are the ones the
// Checker adds.
var (
	// ErrTimeout: the check did not finish within its timeout.
	ErrTimeout = errors.New("health check timed out")
	// ErrPanic: the check panicked; the Checker counted it as a failure.
	ErrPanic = errors.New("health check panicked")
	// ErrClosed: Start after Close.
	ErrClosed = errors.New("health checker closed")
)

// Check is one probe. Run returns nil when the gateway passed it and an
// error naming what was wrong otherwise. Run must return soon after ctx
// ends: the Checker cancels ctx at the check's timeout.
type Check interface {
	Name() string
	Run(ctx context.Context) error
}

// CheckFunc makes a Check out of a function.
func CheckFunc(name string, run func(ctx context.Context) error) Check {
	return funcCheck{name: name, run: run}
}

type funcCheck struct {
	name string
	run  func(ctx context.Context) error
}

func (f funcCheck) Name() string                  { return f.name }
func (f funcCheck) Run(ctx context.Context) error { return f.run(ctx) }
