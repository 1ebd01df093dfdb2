//go:build linux

package linux

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/handoffvpn/handoff/providers"
)

// Set holds VIPs on several interfaces of one node, one Provider per
// interface. A gateway's outside VIP (where the peers' IKE and ESP arrive)
// and inside VIP (the protected networks' next hop) must move together:
// with only the outside one moved, replies leave through the old gateway
// until something else moves the inside one. A VIP resource names its
// interface with " dev IFACE"; one without names the first interface.
type Set struct {
	first string
	byIf  map[string]*Provider
}

var (
	_ providers.Provider = (*Set)(nil)
	_ providers.Releaser = (*Set)(nil)
)

// NewSet opens a Provider for s.Interface and for each of s.Interfaces.
func NewSet(ctx context.Context, node string, s Settings) (*Set, error) {
	if _, err := s.resolve(); err != nil {
		return nil, err
	}
	set := &Set{first: s.Interface, byIf: map[string]*Provider{}}
	for _, name := range append([]string{s.Interface}, s.Interfaces...) {
		one := s
		one.Interface, one.Interfaces = name, nil
		p, err := New(ctx, node, one)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("linux provider on %s: %w", name, err), set.Close())
		}
		set.byIf[name] = p
	}
	return set, nil
}

// of returns the provider of r's interface.
func (s *Set) of(r providers.Resource) (*Provider, error) {
	_, dev, err := splitDev(r.ID)
	if err != nil {
		return nil, err
	}
	if dev == "" {
		dev = s.first
	}
	p, ok := s.byIf[dev]
	if !ok {
		return nil, fmt.Errorf("VIP %q is on interface %s, which is not configured (add it to linux interfaces)", r.ID, dev)
	}
	return p, nil
}

// Claim claims each interface's VIPs through its provider, all in
// parallel, and reports every failure in one ClaimError.
func (s *Set) Claim(ctx context.Context, term uint64, rs []providers.Resource) error {
	var (
		ce     providers.ClaimError
		groups = map[*Provider][]providers.Resource{}
	)
	for _, r := range rs {
		p, err := s.of(r)
		if err != nil {
			ce.Failed = append(ce.Failed, providers.ResourceError{Resource: r, Err: fmt.Errorf("claiming %s: %w", r, err)})
			continue
		}
		groups[p] = append(groups[p], r)
	}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for p, group := range groups {
		wg.Go(func() {
			err := p.Claim(ctx, term, group)
			mu.Lock()
			defer mu.Unlock()
			var sub *providers.ClaimError
			switch {
			case err == nil:
				ce.Moved = append(ce.Moved, group...)
			case errors.As(err, &sub):
				ce.Failed = append(ce.Failed, sub.Failed...)
				ce.Moved = append(ce.Moved, sub.Moved...)
			default:
				for _, r := range group {
					ce.Failed = append(ce.Failed, providers.ResourceError{Resource: r, Err: err})
				}
			}
		})
	}
	wg.Wait()
	if len(ce.Failed) > 0 {
		return &ce
	}
	return nil
}

// Owner asks the provider of r's interface.
func (s *Set) Owner(ctx context.Context, r providers.Resource) (providers.Holder, error) {
	p, err := s.of(r)
	if err != nil {
		return providers.Holder{}, fmt.Errorf("owner of %s: %w", r, err)
	}
	return p.Owner(ctx, r)
}

// Release drops the VIPs from their interfaces.
func (s *Set) Release(ctx context.Context, rs []providers.Resource) error {
	var errs []error
	for _, r := range rs {
		p, err := s.of(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("releasing %s: %w", r, err))
			continue
		}
		errs = append(errs, p.Release(ctx, []providers.Resource{r}))
	}
	return errors.Join(errs...)
}

// Close closes every interface's provider; held VIPs stay.
func (s *Set) Close() error {
	var errs []error
	for _, p := range s.byIf {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}
