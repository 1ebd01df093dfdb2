package agent

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/providers"
)

func TestElectedAfterLease(t *testing.T) {
	const ms = time.Millisecond
	for _, c := range []struct {
		name                            string
		detect, suspectAfter, heartbeat time.Duration
		want                            bool
	}{
		{"detector fired after suspect_after", 290 * ms, 280 * ms, 300 * ms, true},
		{"leadership transfer: the leader spoke a heartbeat ago", 12 * ms, 280 * ms, 300 * ms, false},
		{"just under suspect_after", 279 * ms, 280 * ms, 300 * ms, false},
		{"detector off: Raft's heartbeat timeout", 320 * ms, 0, 300 * ms, true},
		{"detector off, transfer", 30 * ms, 0, 300 * ms, false},
		{"suspect_after above the heartbeat timeout: Raft's goes first", 310 * ms, 400 * ms, 300 * ms, true},
		{"no candidacy seen", 0, 280 * ms, 300 * ms, false},
		{"no bound known", time.Second, 0, 0, false},
	} {
		if got := electedAfterLease(c.detect, c.suspectAfter, c.heartbeat); got != c.want {
			t.Errorf("%s: electedAfterLease(%v, %v, %v) = %v, want %v", c.name, c.detect, c.suspectAfter, c.heartbeat, got, c.want)
		}
	}
}

func TestGoneHolders(t *testing.T) {
	config := []raft.Server{{ID: "gw1", Suffrage: raft.Voter}, {ID: "gw2", Suffrage: raft.Voter}, {ID: "w1", Suffrage: raft.Voter}}
	known := []string{"gw1", "gw2", "w1", "gw0", ""}
	for _, c := range []struct {
		name   string
		prev   string
		lost   bool
		config []raft.Server
		want   []string
	}{
		{"unplanned: the previous active lost its lease", "gw1", true, config, []string{"gw0", "gw1"}},
		{"planned hand-over: the previous active may still hold", "gw1", false, config, []string{"gw0"}},
		{"previous active removed from the cluster", "gw9", false, config, []string{"gw0", "gw9"}},
		{"re-elected: never itself", "gw2", true, config, []string{"gw0"}},
		{"configuration unread: the lease rule alone", "gw1", true, nil, []string{"gw1"}},
		{"configuration unread, planned", "gw1", false, nil, nil},
		{"no previous active", "", true, config, []string{"gw0"}},
	} {
		got := goneHolders("gw2", c.prev, c.lost, c.config, known)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: goneHolders = %q, want %q", c.name, got, c.want)
		}
	}
	if !slices.Equal(known, []string{"gw1", "gw2", "w1", "gw0", ""}) {
		t.Errorf("goneHolders changed its argument: %q", known)
	}
}

// goneProv is a provider with the capability; wrapped hides it behind a
// decorator the way operator/metrics does.
type goneProv struct {
	term     uint64
	previous string
	gone     []string
}

func (p *goneProv) Owner(context.Context, providers.Resource) (providers.Holder, error) {
	return providers.Holder{}, nil
}
func (p *goneProv) Claim(context.Context, uint64, []providers.Resource) error { return nil }
func (p *goneProv) KnownGone(term uint64, previous string, gone []string) {
	p.term, p.previous, p.gone = term, previous, gone
}

type wrapped struct{ p providers.Provider }

func (w wrapped) Owner(ctx context.Context, r providers.Resource) (providers.Holder, error) {
	return w.p.Owner(ctx, r)
}
func (w wrapped) Claim(ctx context.Context, term uint64, rs []providers.Resource) error {
	return w.p.Claim(ctx, term, rs)
}
func (w wrapped) Unwrap() providers.Provider { return w.p }

type plain struct{}

func (plain) Owner(context.Context, providers.Resource) (providers.Holder, error) {
	return providers.Holder{}, nil
}
func (plain) Claim(context.Context, uint64, []providers.Resource) error { return nil }

func TestGoneAwareUnwraps(t *testing.T) {
	inner := &goneProv{}
	if g := goneAware(wrapped{wrapped{inner}}); g != inner {
		t.Fatalf("goneAware through two decorators = %v, want the inner provider", g)
	}
	if g := goneAware(wrapped{plain{}}); g != nil {
		t.Fatalf("goneAware of a provider without the capability = %v, want nil", g)
	}
	if g := goneAware(nil); g != nil {
		t.Fatalf("goneAware(nil) = %v", g)
	}
}
