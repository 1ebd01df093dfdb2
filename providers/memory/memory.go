// Package memory is an in-process provider: it stands in for a cloud API
// (who holds each floating resource, with fencing terms) in unit tests, the
// in-process cluster tests and the demo. Several nodes share one Cloud, the
// way gateways share one VPC.
package memory

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/providers"
)

// Cloud is the shared resource model: who holds what, under which term.
type Cloud struct {
	// Latency is added to every call, to mimic a cloud API round trip.
	Latency time.Duration

	mu      sync.Mutex // guards the following fields
	holders map[providers.Resource]providers.Holder
	moves   []Move
}

// Move records one successful claim of one resource, for tests to audit.
type Move struct {
	Resource providers.Resource
	Holder   providers.Holder
	At       time.Time
}

// NewCloud returns an empty cloud whose calls each take latency.
func NewCloud(latency time.Duration) *Cloud {
	return &Cloud{Latency: latency, holders: make(map[providers.Resource]providers.Holder)}
}

// Moves returns every successful move so far, oldest first.
func (c *Cloud) Moves() []Move {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Move(nil), c.moves...)
}

// Holder returns who holds r now.
func (c *Cloud) Holder(r providers.Resource) providers.Holder {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.holders[r]
}

// Provider acts for one node on a shared Cloud.
type Provider struct {
	cloud *Cloud
	node  string
}

var _ providers.Provider = (*Provider)(nil)

// New returns the provider of node on cloud.
func New(cloud *Cloud, node string) *Provider { return &Provider{cloud: cloud, node: node} }

func (p *Provider) wait(ctx context.Context) error {
	if p.cloud.Latency <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(p.cloud.Latency)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("memory provider call: %w", ctx.Err())
	case <-t.C:
		return nil
	}
}

// Owner reports who holds r.
func (p *Provider) Owner(ctx context.Context, r providers.Resource) (providers.Holder, error) {
	if err := p.wait(ctx); err != nil {
		return providers.Holder{}, err
	}
	return p.cloud.Holder(r), nil
}

// Claim moves every resource to this node in parallel, one latency for all,
// refusing the ones that carry a higher term.
func (p *Provider) Claim(ctx context.Context, term uint64, rs []providers.Resource) error {
	if err := p.wait(ctx); err != nil {
		return err
	}
	c := p.cloud
	c.mu.Lock()
	defer c.mu.Unlock()
	var cerr providers.ClaimError
	now := time.Now()
	for _, r := range rs {
		cur := c.holders[r]
		if cur.Term > term {
			cerr.Failed = append(cerr.Failed, providers.ResourceError{Resource: r,
				Err: fmt.Errorf("claiming for %s at term %d, held by %s at term %d: %w", p.node, term, cur.Node, cur.Term, providers.ErrStaleTerm)})
			continue
		}
		h := providers.Holder{Node: p.node, Term: term, Target: p.node}
		if cur != h {
			c.holders[r] = h
			c.moves = append(c.moves, Move{Resource: r, Holder: h, At: now})
		}
		cerr.Moved = append(cerr.Moved, r)
	}
	if len(cerr.Failed) > 0 {
		return &cerr
	}
	return nil
}
