//go:build linux

package linux

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	names []string    // interface, then interfaces: the claim order
	provs []*Provider // provs[i] holds the VIPs on names[i]
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
	set := &Set{names: append([]string{s.Interface}, s.Interfaces...)}
	for _, name := range set.names {
		one := s
		one.Interface, one.Interfaces = name, nil
		p, err := New(ctx, node, one)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("linux provider on %s: %w", name, err), set.Close())
		}
		set.provs = append(set.provs, p)
	}
	return set, nil
}

// indexOf returns the position of the interface r names (the first one
// when it names none), if it is configured.
func (s *Set) indexOf(r providers.Resource) (int, error) {
	_, dev, err := splitDev(r.ID)
	if err != nil {
		return 0, err
	}
	if dev == "" {
		return 0, nil
	}
	if i := slices.Index(s.names, dev); i >= 0 {
		return i, nil
	}
	return 0, fmt.Errorf("VIP %q is on interface %s, which is not configured (add it to linux interfaces)", r.ID, dev)
}

// of returns the provider of r's interface.
func (s *Set) of(r providers.Resource) (*Provider, error) {
	i, err := s.indexOf(r)
	if err != nil {
		return nil, err
	}
	return s.provs[i], nil
}

// Claim checks every VIP at once (the owner queries, which wait on the
// segment, in parallel), then adds and announces them interface by
// interface, in configuration order (interface, then interfaces; each
// interface's VIPs in parallel), and only then tells the previous holders
// to drop them, in the reverse order. Both orders matter. The outside VIP
// is the SAs' local address, and a node that draws the protected hosts'
// replies (holds the inside VIP) without holding the outside one cannot
// encrypt them: the kernel's XFRM output does not route from a non-local
// source. In the lab's drains, with both VIPs claimed and yielded in
// parallel, first the new and then the old active spent up to 200 ms in
// that state, and lost 10-20 probes each time. When an interface's VIPs do
// not all move, the later interfaces' are not added. Every failure is in
// one ClaimError.
func (s *Set) Claim(ctx context.Context, term uint64, rs []providers.Resource) error {
	var (
		ce      providers.ClaimError
		n       = len(s.provs)
		groups  = make([][]providers.Resource, n)
		checked = make([][]vipClaim, n)
		refused = make([]providers.ClaimError, n)
		yields  = make([][]pendingYield, n)
	)
	for _, r := range rs {
		i, err := s.indexOf(r)
		if err != nil {
			ce.Failed = append(ce.Failed, providers.ResourceError{Resource: r, Err: fmt.Errorf("claiming %s: %w", r, err)})
			continue
		}
		groups[i] = append(groups[i], r)
	}
	var wg sync.WaitGroup
	for i, p := range s.provs {
		if len(groups[i]) > 0 {
			wg.Go(func() { checked[i], refused[i] = p.checkAll(ctx, term, groups[i]) })
		}
	}
	wg.Wait()
	var blocked string
	for i, p := range s.provs {
		ce.Failed = append(ce.Failed, refused[i].Failed...)
		if blocked != "" {
			for _, c := range checked[i] {
				ce.Failed = append(ce.Failed, providers.ResourceError{Resource: c.r,
					Err: fmt.Errorf("claiming %s: not added: the VIPs on %s did not all move, and they go first", c.r, blocked)})
			}
			continue
		}
		ys, taken := p.takeAll(ctx, term, checked[i])
		yields[i] = ys
		ce.Failed = append(ce.Failed, taken.Failed...)
		ce.Moved = append(ce.Moved, taken.Moved...)
		if len(refused[i].Failed)+len(taken.Failed) > 0 {
			blocked = s.names[i]
		}
	}
	for i := n - 1; i >= 0; i-- {
		s.provs[i].yieldAll(ctx, term, yields[i])
	}
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
	for _, p := range s.provs {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}
