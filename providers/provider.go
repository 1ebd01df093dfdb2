// Package providers defines how Handoff moves floating resources (cloud
// addresses, route next hops, on-prem VIPs) to the node that holds the active
// role, and keeps the registry of the implementations.
//
// The interface is deliberately small: a provider says who holds a resource
// and moves resources to its own node. Everything else (releasing a local VIP
// when fencing, checking permissions up front) is an optional capability that
// callers discover by type assertion.
package providers

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Resource names one floating resource in the provider's own terms.
type Resource struct {
	// Kind is the provider-specific resource type, e.g. "eip", "route",
	// "forwarding_rule", "alias_ip", "public_ip", "vip".
	Kind string `json:"kind"`
	// ID identifies the resource: an allocation ID, "rtb-1/10.0.0.0/16", a
	// forwarding rule name, an address in CIDR form for a Linux VIP.
	ID string `json:"id"`
}

func (r Resource) String() string { return r.Kind + ":" + r.ID }

// Holder says who holds a resource and under which fencing term.
type Holder struct {
	// Node is the Handoff node ID that holds the resource, or "" when the
	// resource is unassigned or held by something Handoff does not know.
	Node string `json:"node"`
	// Term is the Raft term the holder claimed it under (the fencing token).
	Term uint64 `json:"term"`
	// Target is the provider's name for where the resource points (an ENI,
	// an instance, an IP address), for operators.
	Target string `json:"target,omitempty"`
}

// Provider moves floating resources to the node it runs on.
//
// Claim is idempotent and verified: when it returns nil every resource points
// at this node and carries term as its fencing token. It never releases a
// resource before it is claimed elsewhere, and it refuses (ErrStaleTerm) to
// move a resource that already carries a higher term. All resources move in
// parallel; when some fail, the error is a *ClaimError naming each of them.
type Provider interface {
	Owner(ctx context.Context, r Resource) (Holder, error)
	Claim(ctx context.Context, term uint64, rs []Resource) error
}

// Releaser is implemented by providers whose resources live on the node
// itself (a Linux VIP) and must be dropped when the node fences itself.
// Cloud providers do not release: the next claim moves the resource.
type Releaser interface {
	Release(ctx context.Context, rs []Resource) error
}

// PermissionChecker is implemented by providers that can verify, without
// changing anything, that their credentials allow every call a claim makes.
type PermissionChecker interface {
	CheckPermissions(ctx context.Context, rs []Resource) error
}

// GoneAware is implemented by providers whose claim first asks a
// resource's current holder (the linux provider's owner query), which
// waits out a timeout when that holder is dead. Before claiming, the caller
// names the holders it knows to be gone, and the provider takes a resource
// from one of them without asking. A provider without it asks every holder.
type GoneAware interface {
	// KnownGone applies to this node's claims at term: a later call for
	// the same or a higher term replaces it, claims at any other term
	// ignore it. previous is the node that held the resources before, as
	// far as the caller knows ("" when none or unknown). gone lists the
	// nodes known to hold none of the resources and to answer for none:
	// they lost their lease and fenced, or left the cluster. List only
	// nodes known gone: a listed holder that is in fact alive is not
	// asked, so it is not told to yield either, and it keeps the
	// resource until it fences itself.
	KnownGone(term uint64, previous string, gone []string)
}

// Sentinel errors. Adapters translate SDK errors into these so that callers
// decide with errors.Is, never by matching strings.
var (
	// ErrStaleTerm: the resource carries a higher fencing term than the claim.
	ErrStaleTerm = errors.New("resource claimed under a higher term")
	// ErrPermission: the credentials do not allow the call. Never retried.
	ErrPermission = errors.New("permission denied")
	// ErrThrottled: the API asked us to slow down. Retried with backoff.
	ErrThrottled = errors.New("throttled")
	// ErrNotFound: the resource does not exist.
	ErrNotFound = errors.New("resource not found")
	// ErrConflict: a compare-and-swap precondition (fingerprint, ETag) failed.
	ErrConflict = errors.New("concurrent modification")
	// ErrUnavailable: a 5xx answer or a timeout. Retried with backoff.
	ErrUnavailable = errors.New("provider unavailable")
	// ErrUnknownKind: a resource's kind is not one the provider moves.
	// Configuration checks (a provider's ValidateResource) wrap it, so that
	// the error names the resource's kind rather than its ID.
	ErrUnknownKind = errors.New("not a resource kind this provider moves")
)

// ResourceError is the outcome of one resource of a claim.
type ResourceError struct {
	Resource Resource
	Err      error
}

func (e ResourceError) Error() string { return fmt.Sprintf("%s: %v", e.Resource, e.Err) }
func (e ResourceError) Unwrap() error { return e.Err }

// ClaimError reports a claim in which some resources did not move. Moved
// lists the ones that did, so an operator sees the whole picture.
type ClaimError struct {
	Failed []ResourceError
	Moved  []Resource
}

func (e *ClaimError) Error() string {
	parts := make([]string, 0, len(e.Failed))
	for _, f := range e.Failed {
		parts = append(parts, f.Error())
	}
	sort.Strings(parts)
	return fmt.Sprintf("claim failed for %d of %d resources: %s",
		len(e.Failed), len(e.Failed)+len(e.Moved), strings.Join(parts, "; "))
}

// Unwrap exposes every resource's error to errors.Is and errors.As.
func (e *ClaimError) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f
	}
	return errs
}
