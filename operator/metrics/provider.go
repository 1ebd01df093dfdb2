package metrics

import (
	"context"
	"time"

	"github.com/handoffvpn/handoff/providers"
)

// InstrumentProvider wraps p so that every call is timed and every error
// counted. The wrapper keeps p's optional capabilities: it implements
// providers.Releaser and providers.PermissionChecker exactly when p does,
// so the agent's type assertions see the same provider.
func (m *Metrics) InstrumentProvider(p providers.Provider) providers.Provider {
	base := &instrumented{p: p, m: m}
	r, isR := p.(providers.Releaser)
	c, isC := p.(providers.PermissionChecker)
	switch {
	case isR && isC:
		return &instrumentedRC{instrumented: base, releaser: releaser{base, r}, checker: checker{base, c}}
	case isR:
		return &instrumentedR{instrumented: base, releaser: releaser{base, r}}
	case isC:
		return &instrumentedC{instrumented: base, checker: checker{base, c}}
	}
	return base
}

type instrumented struct {
	p providers.Provider
	m *Metrics
}

var _ providers.Provider = (*instrumented)(nil)

func (i *instrumented) observe(op string, start time.Time, err error) {
	i.m.providerCalls.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil {
		i.m.providerErrs.WithLabelValues(op, errorKind(err)).Inc()
	}
}

func (i *instrumented) Owner(ctx context.Context, r providers.Resource) (providers.Holder, error) {
	start := time.Now()
	h, err := i.p.Owner(ctx, r)
	i.observe("owner", start, err)
	return h, err
}

func (i *instrumented) Claim(ctx context.Context, term uint64, rs []providers.Resource) error {
	start := time.Now()
	err := i.p.Claim(ctx, term, rs)
	i.observe("claim", start, err)
	return err
}

// Unwrap returns the decorated provider.
func (i *instrumented) Unwrap() providers.Provider { return i.p }

type releaser struct {
	i *instrumented
	r providers.Releaser
}

func (x releaser) Release(ctx context.Context, rs []providers.Resource) error {
	start := time.Now()
	err := x.r.Release(ctx, rs)
	x.i.observe("release", start, err)
	return err
}

type checker struct {
	i *instrumented
	c providers.PermissionChecker
}

func (x checker) CheckPermissions(ctx context.Context, rs []providers.Resource) error {
	start := time.Now()
	err := x.c.CheckPermissions(ctx, rs)
	x.i.observe("check_permissions", start, err)
	return err
}

type instrumentedR struct {
	*instrumented
	releaser
}

type instrumentedC struct {
	*instrumented
	checker
}

type instrumentedRC struct {
	*instrumented
	releaser
	checker
}

var (
	_ providers.Releaser          = (*instrumentedR)(nil)
	_ providers.PermissionChecker = (*instrumentedC)(nil)
	_ providers.Releaser          = (*instrumentedRC)(nil)
	_ providers.PermissionChecker = (*instrumentedRC)(nil)
)
