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
	order []string // interface, then interfaces: the claim order
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
	set := &Set{order: append([]string{s.Interface}, s.Interfaces...), byIf: map[string]*Provider{}}
	for _, name := range set.order {
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

// devOf returns the interface r names (the first one when it names none),
// if it is configured.
func (s *Set) devOf(r providers.Resource) (string, error) {
	_, dev, err := splitDev(r.ID)
	if err != nil {
		return "", err
	}
	if dev == "" {
		dev = s.order[0]
	}
	if _, ok := s.byIf[dev]; !ok {
		return "", fmt.Errorf("VIP %q is on interface %s, which is not configured (add it to linux interfaces)", r.ID, dev)
	}
	return dev, nil
}

// of returns the provider of r's interface.
func (s *Set) of(r providers.Resource) (*Provider, error) {
	dev, err := s.devOf(r)
	if err != nil {
		return nil, err
	}
	return s.byIf[dev], nil
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
		groups  = make([][]providers.Resource, len(s.order))
		checked = make([][]vipClaim, len(s.order))
		refused = make([]providers.ClaimError, len(s.order))
		yields  = make([][]pendingYield, len(s.order))
	)
	index := make(map[string]int, len(s.order))
	for i, dev := range s.order {
		index[dev] = i
	}
	for _, r := range rs {
		dev, err := s.devOf(r)
		if err != nil {
			ce.Failed = append(ce.Failed, providers.ResourceError{Resource: r, Err: fmt.Errorf("claiming %s: %w", r, err)})
			continue
		}
		groups[index[dev]] = append(groups[index[dev]], r)
	}
	var wg sync.WaitGroup
	for i, dev := range s.order {
		if len(groups[i]) > 0 {
			wg.Go(func() { checked[i], refused[i] = s.byIf[dev].checkAll(ctx, term, groups[i]) })
		}
	}
	wg.Wait()
	var blocked string
	for i, dev := range s.order {
		ce.Failed = append(ce.Failed, refused[i].Failed...)
		if blocked != "" {
			for _, c := range checked[i] {
				ce.Failed = append(ce.Failed, providers.ResourceError{Resource: c.r,
					Err: fmt.Errorf("claiming %s: not added: the VIPs on %s did not all move, and they go first", c.r, blocked)})
			}
			continue
		}
		ys, taken := s.byIf[dev].takeAll(ctx, term, checked[i])
		yields[i] = ys
		ce.Failed = append(ce.Failed, taken.Failed...)
		ce.Moved = append(ce.Moved, taken.Moved...)
		if len(refused[i].Failed)+len(taken.Failed) > 0 {
			blocked = dev
		}
	}
	for i := len(s.order) - 1; i >= 0; i-- {
		s.byIf[s.order[i]].yieldAll(ctx, term, yields[i])
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
	for _, p := range s.byIf {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}
