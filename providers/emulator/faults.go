package emulator

import (
	"context"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// FaultKind is a class of failure the emulator can inject. Each front end
// renders it in its own cloud's wire format (EC2 XML error codes, GCE JSON
// errors, ARM error bodies).
type FaultKind int

const (
	// Throttle answers 429 / RequestLimitExceeded / rateLimitExceeded.
	Throttle FaultKind = iota + 1
	// ServerError answers 500/503.
	ServerError
	// Timeout holds the request until the client gives up (or 30 s).
	Timeout
	// PermissionDenied answers 403 / UnauthorizedOperation / AuthorizationFailed.
	PermissionDenied
	// StaleFingerprint answers a failed precondition (GCE fingerprint,
	// Azure ETag If-Match) as if someone else changed the resource.
	StaleFingerprint
)

func (k FaultKind) String() string {
	switch k {
	case Throttle:
		return "throttle"
	case ServerError:
		return "server-error"
	case Timeout:
		return "timeout"
	case PermissionDenied:
		return "permission-denied"
	case StaleFingerprint:
		return "stale-fingerprint"
	}
	return "unknown"
}

// Fault is one injected failure rule. Empty match fields match anything.
type Fault struct {
	Kind FaultKind
	// Cloud is "aws", "gcp" or "azure".
	Cloud string
	// Op is the API operation: "AssociateAddress", "compute.forwardingRules.setTarget",
	// "Microsoft.Network/routeTables/routes/write", as each front end names it.
	Op string
	// Resource matches the resource the call touches (allocation ID, route
	// table ID, forwarding rule name, NIC name...).
	Resource string
	// Times is how many calls the fault hits; 0 means every call, forever.
	Times int
}

type faultRule struct {
	Fault
	hits int
}

// Gate applies latency and faults to calls. Front ends call Enter at the
// start of every request.
type Gate struct {
	mu        sync.Mutex // guards the following fields
	latency   time.Duration
	opLatency map[string]time.Duration
	rules     []*faultRule
	calls     map[string]int
}

func newGate() *Gate {
	return &Gate{opLatency: make(map[string]time.Duration), calls: make(map[string]int)}
}

// SetLatency sets the latency of every call.
func (g *Gate) SetLatency(d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.latency = d
}

// SetOpLatency overrides the latency of one operation.
func (g *Gate) SetOpLatency(op string, d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.opLatency[op] = d
}

// Inject adds a fault rule.
func (g *Gate) Inject(f Fault) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.rules = append(g.rules, &faultRule{Fault: f})
}

// ClearFaults removes every fault rule.
func (g *Gate) ClearFaults() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.rules = nil
}

// Calls returns how many times op was called on cloud (faulted calls count).
func (g *Gate) Calls(cloud, op string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls[cloud+" "+op]
}

// Ops lists, sorted, every operation called on cloud so far (faulted calls
// included), so a provider's test can compare what its code really calls
// with the permissions it documents.
func (g *Gate) Ops(cloud string) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var ops []string
	for k := range g.calls {
		if c, op, ok := strings.Cut(k, " "); ok && c == cloud {
			ops = append(ops, op)
		}
	}
	sort.Strings(ops)
	return ops
}

// Enter records the call, sleeps its latency and returns the fault to
// answer with, if any. It returns early when ctx ends.
func (g *Gate) Enter(ctx context.Context, cloud, op, resource string) (FaultKind, bool) {
	return g.EnterAny(ctx, cloud, op, resource)
}

// EnterAny is Enter for a call that touches several resources at once (a
// batched describe, tags written on many resources): a rule naming any one
// of them hits the whole call, as a bad resource fails a real batch.
func (g *Gate) EnterAny(ctx context.Context, cloud, op string, resources ...string) (FaultKind, bool) {
	g.mu.Lock()
	g.calls[cloud+" "+op]++
	d := g.latency
	if od, ok := g.opLatency[op]; ok {
		d = od
	}
	var hit FaultKind
	for _, r := range g.rules {
		if (r.Cloud != "" && r.Cloud != cloud) || (r.Op != "" && r.Op != op) ||
			(r.Resource != "" && !slices.Contains(resources, r.Resource)) || (r.Times > 0 && r.hits >= r.Times) {
			continue
		}
		r.hits++
		hit = r.Kind
		break
	}
	g.mu.Unlock()
	if d > 0 {
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	if hit == Timeout {
		t := time.NewTimer(30 * time.Second)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return hit, hit != 0
}

// Peek reports the fault the next call of op on resource would get, without
// counting the call, sleeping or using up a rule. Front ends that answer
// "would this call be allowed?" (Azure's permissions API) use it so their
// answer agrees with the faults a test injected.
func (g *Gate) Peek(cloud, op, resource string) (FaultKind, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range g.rules {
		if (r.Cloud != "" && r.Cloud != cloud) || (r.Op != "" && r.Op != op) ||
			(r.Resource != "" && r.Resource != resource) || (r.Times > 0 && r.hits >= r.Times) {
			continue
		}
		return r.Kind, true
	}
	return 0, false
}
