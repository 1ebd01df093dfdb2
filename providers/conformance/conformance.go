// Package conformance is the behaviour every provider must show against the
// built-in cloud emulator: idempotent claims, takeover from another node,
// fencing by term, retried throttling, surfaced permission errors and
// resource-by-resource reports of partial failures.
//
// A provider's test builds a Harness (providers for two nodes on one
// emulator, the resources to move, and how to break one of them) and calls
// Run. Subtest names carry the provider's name so `go test -v` says which
// provider passed what.
package conformance

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/emulator"
)

// Harness describes one provider under test.
type Harness struct {
	// Name of the provider, e.g. "aws".
	Name string
	// Emulator the providers talk to; its Gate injects faults.
	Emulator *emulator.Emulator
	// NewProvider returns the provider acting for node ("a" or "b"). Both
	// nodes must exist in the emulator's model before Run.
	NewProvider func(t *testing.T, node string) providers.Provider
	// Resources to claim; at least two, so partial failure can be shown.
	Resources []providers.Resource
	// MutatingOp is the API operation a claim of Resources[0] calls to move
	// it, as the front end names it to the Gate (for throttling and
	// permission faults).
	MutatingOp string
	// FaultResource is how the Gate names Resources[0] in fault rules.
	FaultResource string
	// Reset, if set, runs before each subtest to restore the model.
	Reset func(t *testing.T)
}

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	if len(h.Resources) < 2 {
		t.Fatalf("%s conformance harness: need at least two resources, have %d", h.Name, len(h.Resources))
	}
	cases := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"ClaimTwiceIsIdempotent", claimTwice},
		{"ClaimWhileOtherNodeOwns", claimFromOther},
		{"OwnerAfterClaim", ownerAfterClaim},
		{"LowerTermRefused", lowerTermRefused},
		{"ThrottlingRetried", throttlingRetried},
		{"PermissionErrorSurfaced", permissionSurfaced},
		{"PartialFailureReported", partialFailure},
	}
	for _, c := range cases {
		t.Run(h.Name+"/"+c.name, func(t *testing.T) {
			h.Emulator.Gate().ClearFaults()
			if h.Reset != nil {
				h.Reset(t)
			}
			t.Cleanup(h.Emulator.Gate().ClearFaults)
			c.fn(t, h)
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustClaim(t *testing.T, p providers.Provider, term uint64, rs []providers.Resource) {
	t.Helper()
	if err := p.Claim(ctx(t), term, rs); err != nil {
		t.Fatalf("claim at term %d: %v", term, err)
	}
}

func wantOwner(t *testing.T, p providers.Provider, rs []providers.Resource, node string, term uint64) {
	t.Helper()
	for _, r := range rs {
		got, err := p.Owner(ctx(t), r)
		if err != nil {
			t.Fatalf("owner of %s: %v", r, err)
		}
		if got.Node != node || got.Term != term {
			t.Fatalf("owner of %s = %q at term %d, want %q at term %d", r, got.Node, got.Term, node, term)
		}
	}
}

func claimTwice(t *testing.T, h Harness) {
	a := h.NewProvider(t, "a")
	mustClaim(t, a, 3, h.Resources)
	mustClaim(t, a, 3, h.Resources)
	wantOwner(t, a, h.Resources, "a", 3)
}

func claimFromOther(t *testing.T, h Harness) {
	a, b := h.NewProvider(t, "a"), h.NewProvider(t, "b")
	mustClaim(t, a, 4, h.Resources)
	mustClaim(t, b, 5, h.Resources)
	wantOwner(t, a, h.Resources, "b", 5)
}

func ownerAfterClaim(t *testing.T, h Harness) {
	a, b := h.NewProvider(t, "a"), h.NewProvider(t, "b")
	mustClaim(t, b, 6, h.Resources)
	wantOwner(t, a, h.Resources, "b", 6)
	wantOwner(t, b, h.Resources, "b", 6)
}

func lowerTermRefused(t *testing.T, h Harness) {
	a, b := h.NewProvider(t, "a"), h.NewProvider(t, "b")
	mustClaim(t, b, 9, h.Resources)
	err := a.Claim(ctx(t), 8, h.Resources)
	if !errors.Is(err, providers.ErrStaleTerm) {
		t.Fatalf("claim at a lower term: err = %v, want ErrStaleTerm", err)
	}
	wantOwner(t, a, h.Resources, "b", 9)
}

func throttlingRetried(t *testing.T, h Harness) {
	a := h.NewProvider(t, "a")
	g := h.Emulator.Gate()
	before := g.Calls(h.Name, h.MutatingOp)
	g.Inject(emulator.Fault{Kind: emulator.Throttle, Cloud: h.Name, Op: h.MutatingOp, Times: 2})
	mustClaim(t, a, 10, h.Resources)
	wantOwner(t, a, h.Resources, "a", 10)
	if calls := g.Calls(h.Name, h.MutatingOp) - before; calls < 3 {
		t.Fatalf("%s called %d times under two throttles, want at least 3 (retries)", h.MutatingOp, calls)
	}
}

func permissionSurfaced(t *testing.T, h Harness) {
	a, b := h.NewProvider(t, "a"), h.NewProvider(t, "b")
	mustClaim(t, b, 11, h.Resources)
	g := h.Emulator.Gate()
	g.Inject(emulator.Fault{Kind: emulator.PermissionDenied, Cloud: h.Name, Op: h.MutatingOp})
	before := g.Calls(h.Name, h.MutatingOp)
	err := a.Claim(ctx(t), 12, h.Resources)
	if !errors.Is(err, providers.ErrPermission) {
		t.Fatalf("claim without permission: err = %v, want ErrPermission", err)
	}
	if calls := g.Calls(h.Name, h.MutatingOp) - before; calls > len(h.Resources) {
		t.Fatalf("%s called %d times for %d resources: a permission error must not be retried", h.MutatingOp, calls, len(h.Resources))
	}
	g.ClearFaults()
	wantOwner(t, b, h.Resources[:1], "b", 11)
}

func partialFailure(t *testing.T, h Harness) {
	a := h.NewProvider(t, "a")
	g := h.Emulator.Gate()
	g.Inject(emulator.Fault{Kind: emulator.ServerError, Cloud: h.Name, Resource: h.FaultResource})
	err := a.Claim(ctx(t), 13, h.Resources)
	var ce *providers.ClaimError
	if !errors.As(err, &ce) {
		t.Fatalf("claim with one resource failing: err = %v, want *providers.ClaimError", err)
	}
	if len(ce.Failed) != 1 || ce.Failed[0].Resource != h.Resources[0] {
		t.Fatalf("failed resources = %v, want exactly %s", ce.Failed, h.Resources[0])
	}
	if len(ce.Moved) != len(h.Resources)-1 {
		t.Fatalf("moved %v, want the other %d resources", ce.Moved, len(h.Resources)-1)
	}
	g.ClearFaults()
	wantOwner(t, a, h.Resources[1:], "a", 13)
}

// ResourceCase is one resource a provider's ValidateResource is given:
// Want is a part of the refusal ("" when it must be accepted), UnknownKind
// whether the refusal must be providers.ErrUnknownKind.
type ResourceCase struct {
	R           providers.Resource
	Want        string
	UnknownKind bool
}

// CheckValidateResource runs validate on every case.
func CheckValidateResource(t *testing.T, validate func(providers.Resource) error, cases []ResourceCase) {
	t.Helper()
	for _, c := range cases {
		err := validate(c.R)
		switch {
		case c.Want == "" && err != nil:
			t.Errorf("%s: %v", c.R, err)
		case c.Want != "" && (err == nil || !strings.Contains(err.Error(), c.Want)):
			t.Errorf("%s: err = %v, want one saying %s", c.R, err, c.Want)
		case errors.Is(err, providers.ErrUnknownKind) != c.UnknownKind:
			t.Errorf("%s: err = %v, unknown kind: %v", c.R, err, c.UnknownKind)
		}
	}
}
