package xfrm

import (
	"context"
	"errors"
	"fmt"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// A takeover installs two states and two or three policies per CHILD_SA,
// tens of thousands of them on a concentrator. One message per round trip
// costs a send, a receive and the poller's wake-ups each time: in UML, where
// a system call costs ~60 µs, that made the install 2.4× slower than the
// kernel's own rate. InstallStates and InstallPolicies send them in batches
// instead (see nlKernel.apply) and take the careful one-at-a-time path only
// for what the batch could not settle.

// request is one XFRM message of a batch. state or policy is what the
// body encodes (the unit tests' fake kernel applies those instead).
type request struct {
	typ    int
	body   []byte
	state  *State
	policy *sa.Policy
}

// InstallStates installs every state as Install does, in batches: the new
// ones are added in one message each, many messages per system call, and
// a state the kernel already holds (EEXIST) goes through Install's
// read-compare-merge path, so the outbound sequence number still never
// moves backwards. It returns one error per state, nil where it is
// installed.
func (h *Handle) InstallStates(ctx context.Context, states []*State) []error {
	errs := make([]error, len(states))
	if err := h.check(ctx); err != nil {
		for i, s := range states {
			errs[i] = fmt.Errorf("installing XFRM state %s: %w", s.Key(), err)
		}
		return errs
	}
	reqs := make([]request, 0, len(states))
	idx := make([]int, 0, len(states))
	for i, s := range states {
		body, err := encodeState(s)
		if err != nil {
			errs[i] = fmt.Errorf("installing XFRM state %s: %w", s.Key(), err)
			continue
		}
		reqs = append(reqs, request{typ: nl.XFRM_MSG_NEWSA, body: body, state: s})
		idx = append(idx, i)
	}
	res, err := h.k.apply(reqs)
	if err != nil {
		h.log.Warn("xfrm: batched state install failed; installing one at a time", "states", len(reqs), "err", err)
	}
	for j, i := range idx {
		switch {
		case err == nil && res[j] == nil:
		case err == nil && !errors.Is(res[j], unix.EEXIST):
			errs[i] = fmt.Errorf("installing XFRM state %s: %w", states[i].Key(), res[j])
		default:
			// Already there (or unknown after a broken batch): Install
			// reads it back and only ever moves its counters forward.
			if _, e := h.Install(ctx, states[i]); e != nil {
				errs[i] = e
			}
		}
	}
	return errs
}

// InstallPolicies installs every policy as InstallPolicy does
// (XFRM_MSG_UPDPOLICY), in batches, in the order given. It returns one
// error per policy, nil where it is installed.
func (h *Handle) InstallPolicies(ctx context.Context, policies []*sa.Policy) []error {
	errs := make([]error, len(policies))
	if err := h.check(ctx); err != nil {
		for i, p := range policies {
			errs[i] = fmt.Errorf("installing XFRM policy %s: %w", policyString(p), err)
		}
		return errs
	}
	reqs := make([]request, 0, len(policies))
	idx := make([]int, 0, len(policies))
	for i, p := range policies {
		body, err := encodePolicy(p)
		if err != nil {
			errs[i] = fmt.Errorf("installing XFRM policy %s: %w", policyString(p), err)
			continue
		}
		reqs = append(reqs, request{typ: nl.XFRM_MSG_UPDPOLICY, body: body, policy: p})
		idx = append(idx, i)
	}
	res, err := h.k.apply(reqs)
	if err != nil {
		h.log.Warn("xfrm: batched policy install failed; installing one at a time", "policies", len(reqs), "err", err)
	}
	for j, i := range idx {
		switch {
		case err == nil && res[j] == nil:
		case err == nil:
			errs[i] = fmt.Errorf("installing XFRM policy %s: %w", policyString(policies[i]), res[j])
		default:
			errs[i] = h.InstallPolicy(ctx, policies[i])
		}
	}
	return errs
}
