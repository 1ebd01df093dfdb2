package aws

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/handoffvpn/handoff/providers"
)

// claim is one run of Claim: the resources' outcomes so far.
type claim struct {
	p    *Provider
	term uint64

	mu      sync.Mutex // guards results
	results map[providers.Resource]error
}

// eipItem is one Elastic IP in a claim.
type eipItem struct {
	r          providers.Resource
	alloc      string
	vip        netip.Addr
	needAssign bool // the VIP is not on this node's interface yet
	needAssoc  bool // the EIP does not point at this node's VIP yet
	needTag    bool // the fencing tags are not this claim's yet
	err        error
}

// routeItem is one route in a claim.
type routeItem struct {
	r        providers.Resource
	table    string
	dest     netip.Prefix
	needMove bool
	needTag  bool
	err      error
}

// Claim moves every resource to this node under term. Elastic IPs and
// routes go through their own pipelines in parallel; inside each, every
// phase is one batched call or a set of parallel calls:
//
//	EIPs:   describe (+ own interface) → assign VIPs → associate → tag → verify
//	routes: describe tables → replace routes → tag tables → verify
//
// Resources already pointing here under this term cost only the first read.
func (p *Provider) Claim(ctx context.Context, term uint64, rs []providers.Resource) error {
	if term == 0 {
		return errors.New("aws claim: term 0 is not a Raft term (terms start at 1)")
	}
	start := time.Now()
	c := &claim{p: p, term: term, results: make(map[providers.Resource]error, len(rs))}
	var eips []*eipItem
	routes := make(map[string][]*routeItem)
	seen := make(map[providers.Resource]bool, len(rs))
	for _, r := range rs {
		if seen[r] {
			continue
		}
		seen[r] = true
		switch r.Kind {
		case KindEIP:
			vip, ok := p.t.vips[r.ID]
			if !ok {
				c.set(r, fmt.Errorf("eip %s: eip_private_ips has no private IP for it", r.ID))
				continue
			}
			eips = append(eips, &eipItem{r: r, alloc: r.ID, vip: vip})
		case KindRoute:
			table, dest, err := parseRouteID(r.ID)
			if err != nil {
				c.set(r, err)
				continue
			}
			routes[table] = append(routes[table], &routeItem{r: r, table: table, dest: dest})
		default:
			c.set(r, unsupportedKind(r))
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { c.claimEIPs(ctx, eips) })
	wg.Go(func() { c.claimRoutes(ctx, routes) })
	wg.Wait()

	ce := &providers.ClaimError{}
	seen = make(map[providers.Resource]bool, len(rs))
	for _, r := range rs {
		if seen[r] {
			continue
		}
		seen[r] = true
		if err := c.results[r]; err != nil {
			ce.Failed = append(ce.Failed, providers.ResourceError{Resource: r, Err: err})
		} else {
			ce.Moved = append(ce.Moved, r)
		}
	}
	p.log.Info("aws claim", "term", term, "moved", len(ce.Moved), "failed", len(ce.Failed),
		"took", time.Since(start).Round(time.Millisecond))
	if len(ce.Failed) > 0 {
		return ce
	}
	return nil
}

func (c *claim) set(r providers.Resource, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.results[r] = err
}

// ours is the record this claim writes.
func (c *claim) ours() fence { return fence{term: c.term, node: c.p.node, eni: c.p.self.eni} }

// check refuses a resource whose record outranks this claim.
func (c *claim) check(what string, f fence) error {
	switch {
	case f.term > c.term:
		return fmt.Errorf("%s is claimed at term %d by node %q, above this claim's term %d: %w",
			what, f.term, f.node, c.term, providers.ErrStaleTerm)
	case f.term == c.term && f.node != c.p.node:
		// Raft gives each term one leader: two nodes claiming one term is
		// a bug, and overwriting would hide it.
		return fmt.Errorf("%s is already claimed at term %d by node %q: %w", what, f.term, f.node, providers.ErrConflict)
	}
	return nil
}

// parallel runs fn for every index, each in its own goroutine (the API
// slots of Provider.call bound how many calls are in flight), and waits.
func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { fn(i) })
	}
	wg.Wait()
}

// splittable says whether a failed batch should be retried one member at a
// time: yes when a single bad member can fail the whole call (a deleted
// resource, a persistent server error on one of them); no for throttling
// (more calls would make it worse) or a missing permission (it is the
// action that is denied, not one resource), or once the caller gave up.
func splittable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	s := classify(err)
	return s != providers.ErrThrottled && s != providers.ErrPermission
}

// batch runs fn on all ids in one call; when that fails and the failure
// may belong to one member, it runs fn on each id alone, in parallel. It
// returns the error of every id that did not succeed.
func (c *claim) batch(ctx context.Context, ids []string, fn func(ctx context.Context, ids []string) error) map[string]error {
	out := make(map[string]error)
	if len(ids) == 0 {
		return out
	}
	err := c.p.call(ctx, func(ctx context.Context) error { return fn(ctx, ids) })
	if err == nil {
		return out
	}
	if len(ids) == 1 || !splittable(ctx, err) {
		for _, id := range ids {
			out[id] = err
		}
		return out
	}
	c.p.log.Debug("aws batch failed, retrying members alone", "ids", len(ids), "err", err)
	var mu sync.Mutex
	parallel(len(ids), func(i int) {
		if err := c.p.call(ctx, func(ctx context.Context) error { return fn(ctx, ids[i:i+1]) }); err != nil {
			mu.Lock()
			out[ids[i]] = err
			mu.Unlock()
		}
	})
	return out
}

// describeAddresses reads Elastic IPs in one call (or one per address when
// a batch fails).
func (c *claim) describeAddresses(ctx context.Context, allocs []string) (map[string]types.Address, map[string]error) {
	var mu sync.Mutex
	found := make(map[string]types.Address, len(allocs))
	errs := c.batch(ctx, allocs, func(ctx context.Context, ids []string) error {
		out, err := c.p.ec2.DescribeAddresses(ctx, &ec2.DescribeAddressesInput{AllocationIds: ids})
		if err != nil {
			return fmt.Errorf("describing eips %v: %w", ids, translate(ctx, err))
		}
		mu.Lock()
		defer mu.Unlock()
		for _, a := range out.Addresses {
			found[deref(a.AllocationId)] = a
		}
		return nil
	})
	for _, id := range allocs {
		if _, ok := found[id]; !ok && errs[id] == nil {
			errs[id] = fmt.Errorf("describing eip %s: not in the answer: %w", id, providers.ErrNotFound)
		}
	}
	return found, errs
}

// ownIPs lists the private IPs on this node's interface.
func (c *claim) ownIPs(ctx context.Context) (map[netip.Addr]bool, error) {
	eni := c.p.self.eni
	var out *ec2.DescribeNetworkInterfacesOutput
	err := c.p.call(ctx, func(ctx context.Context) error {
		var err error
		out, err = c.p.ec2.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eni}})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("describing this node's interface %s: %w", eni, translate(ctx, err))
	}
	ips := make(map[netip.Addr]bool)
	for _, n := range out.NetworkInterfaces {
		if deref(n.NetworkInterfaceId) != eni {
			continue
		}
		for _, pip := range n.PrivateIpAddresses {
			if ip, err := netip.ParseAddr(deref(pip.PrivateIpAddress)); err == nil {
				ips[ip] = true
			}
		}
		return ips, nil
	}
	return nil, fmt.Errorf("describing this node's interface %s: not in the answer: %w", eni, providers.ErrNotFound)
}

func (c *claim) claimEIPs(ctx context.Context, items []*eipItem) {
	if len(items) == 0 {
		return
	}
	self := c.p.self.eni
	allocs := make([]string, len(items))
	for i, it := range items {
		allocs[i] = it.alloc
	}

	// 1. Read the addresses and this node's interface together.
	var addrs map[string]types.Address
	var addrErrs map[string]error
	var ips map[netip.Addr]bool
	var ipsErr error
	var wg sync.WaitGroup
	wg.Go(func() { addrs, addrErrs = c.describeAddresses(ctx, allocs) })
	wg.Go(func() { ips, ipsErr = c.ownIPs(ctx) })
	wg.Wait()
	var live []*eipItem
	for _, it := range items {
		if err := addrErrs[it.alloc]; err != nil {
			c.set(it.r, err)
			continue
		}
		a := addrs[it.alloc]
		f := eipFence(a.Tags)
		if err := c.check("eip "+it.alloc, f); err != nil {
			c.set(it.r, err)
			continue
		}
		it.needAssoc = deref(a.NetworkInterfaceId) != self || deref(a.PrivateIpAddress) != it.vip.String()
		it.needTag = f != c.ours()
		if !it.needAssoc && !it.needTag {
			c.set(it.r, nil)
			continue
		}
		if it.needAssoc {
			if ipsErr != nil {
				c.set(it.r, ipsErr)
				continue
			}
			it.needAssign = !ips[it.vip]
		}
		live = append(live, it)
	}

	// 2. Move the VIPs onto this interface in one call. An Elastic IP
	// associated with a VIP moves with it.
	var assign []*eipItem
	var vips []string
	for _, it := range live {
		if it.needAssign {
			assign = append(assign, it)
			vips = append(vips, it.vip.String())
		}
	}
	assignErrs := c.batch(ctx, vips, func(ctx context.Context, vips []string) error {
		_, err := c.p.ec2.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
			NetworkInterfaceId: &self, PrivateIpAddresses: vips, AllowReassignment: ptr(true),
		})
		if err != nil {
			return fmt.Errorf("assigning private IPs %v to %s: %w", vips, self, translate(ctx, err))
		}
		return nil
	})
	for _, it := range assign {
		it.err = assignErrs[it.vip.String()]
	}

	// 3. Associate each Elastic IP with its VIP here: a no-op when it came
	// along with the VIP, the move itself when it pointed elsewhere.
	parallel(len(live), func(i int) {
		it := live[i]
		if it.err != nil || !it.needAssoc {
			return
		}
		it.err = c.p.call(ctx, func(ctx context.Context) error {
			_, err := c.p.ec2.AssociateAddress(ctx, &ec2.AssociateAddressInput{
				AllocationId: &it.alloc, NetworkInterfaceId: &self, PrivateIpAddress: ptr(it.vip.String()),
				AllowReassociation: ptr(true),
			})
			if err != nil {
				return fmt.Errorf("associating eip %s with %s/%s: %w", it.alloc, self, it.vip, translate(ctx, err))
			}
			return nil
		})
	})

	// 4. Record the claim on every moved address in one call.
	var tag []string
	for _, it := range live {
		if it.err == nil && it.needTag {
			tag = append(tag, it.alloc)
		}
	}
	tagErrs := c.batch(ctx, tag, func(ctx context.Context, ids []string) error {
		_, err := c.p.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: ids, Tags: c.ours().eipTags()})
		if err != nil {
			return fmt.Errorf("tagging eips %v with term %d: %w", ids, c.term, translate(ctx, err))
		}
		return nil
	})
	for _, it := range live {
		if it.err == nil {
			it.err = tagErrs[it.alloc]
		}
	}

	// 5. Read back what changed.
	verify(ctx, c, live, func(ctx context.Context, pending []*eipItem) {
		ids := make([]string, len(pending))
		for i, it := range pending {
			ids[i] = it.alloc
		}
		got, errs := c.describeAddresses(ctx, ids)
		for _, it := range pending {
			if it.err = errs[it.alloc]; it.err != nil {
				continue
			}
			a := got[it.alloc]
			f := eipFence(a.Tags)
			if err := c.check("eip "+it.alloc, f); err != nil {
				it.err = fmt.Errorf("verifying: %w", err)
				continue
			}
			eni, ip := deref(a.NetworkInterfaceId), deref(a.PrivateIpAddress)
			if eni != self || ip != it.vip.String() || f != c.ours() {
				it.err = fmt.Errorf("verifying eip %s: it points at %q/%q with claim term %d node %q, want %s/%s term %d: %w",
					it.alloc, eni, ip, f.term, f.node, self, it.vip, c.term, providers.ErrConflict)
			}
		}
	}, func(it *eipItem) *error { return &it.err }, func(it *eipItem) providers.Resource { return it.r })
}

// verify reads back moved resources and records their outcomes. EC2's
// API is eventually consistent, so a resource that reads back wrong is
// read again (with backoff, up to max_attempts reads) before it counts as
// lost; a higher term read back is final at once.
func verify[T any](ctx context.Context, c *claim, items []T, read func(context.Context, []T),
	errOf func(T) *error, res func(T) providers.Resource) {
	var pending []T
	for _, it := range items {
		if *errOf(it) != nil {
			c.set(res(it), *errOf(it))
			continue
		}
		pending = append(pending, it)
	}
	b := jitterBackoff{base: c.p.t.backoffBase, max: c.p.t.backoffMax}
	for attempt := 1; len(pending) > 0; attempt++ {
		read(ctx, pending)
		var again []T
		for _, it := range pending {
			err := *errOf(it)
			if errors.Is(err, providers.ErrConflict) && !errors.Is(err, providers.ErrStaleTerm) && attempt < c.p.t.maxAttempts && ctx.Err() == nil {
				again = append(again, it)
				continue
			}
			c.set(res(it), err)
		}
		if len(again) == 0 {
			return
		}
		d, _ := b.BackoffDelay(attempt, nil)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		pending = again
	}
}

// describeTables reads route tables in one call (or one per table when a
// batch fails).
func (c *claim) describeTables(ctx context.Context, tables []string) (map[string]types.RouteTable, map[string]error) {
	var mu sync.Mutex
	found := make(map[string]types.RouteTable, len(tables))
	errs := c.batch(ctx, tables, func(ctx context.Context, ids []string) error {
		out, err := c.p.ec2.DescribeRouteTables(ctx, &ec2.DescribeRouteTablesInput{RouteTableIds: ids})
		if err != nil {
			return fmt.Errorf("describing route tables %v: %w", ids, translate(ctx, err))
		}
		mu.Lock()
		defer mu.Unlock()
		for _, rt := range out.RouteTables {
			found[deref(rt.RouteTableId)] = rt
		}
		return nil
	})
	for _, id := range tables {
		if _, ok := found[id]; !ok && errs[id] == nil {
			errs[id] = fmt.Errorf("describing route table %s: not in the answer: %w", id, providers.ErrNotFound)
		}
	}
	return found, errs
}

// findRoute finds the route for dest in a table.
func findRoute(routes []types.Route, dest netip.Prefix) (types.Route, bool) {
	for _, r := range routes {
		s := deref(r.DestinationCidrBlock)
		if s == "" {
			s = deref(r.DestinationIpv6CidrBlock)
		}
		if p, err := netip.ParsePrefix(s); err == nil && p.Masked() == dest {
			return r, true
		}
	}
	return types.Route{}, false
}

// routeTarget names a route's target for operators.
func routeTarget(r types.Route) string {
	for _, t := range []*string{r.NetworkInterfaceId, r.InstanceId, r.GatewayId, r.NatGatewayId, r.TransitGatewayId, r.VpcPeeringConnectionId} {
		if v := deref(t); v != "" {
			return v
		}
	}
	return ""
}

func (c *claim) claimRoutes(ctx context.Context, byTable map[string][]*routeItem) {
	if len(byTable) == 0 {
		return
	}
	self := c.p.self.eni
	tables := sortedKeys(byTable)

	// 1. Read every table in one call.
	rts, errs := c.describeTables(ctx, tables)
	var live []*routeItem
	for _, table := range tables {
		for _, it := range byTable[table] {
			if err := errs[table]; err != nil {
				c.set(it.r, err)
				continue
			}
			rt := rts[table]
			route, ok := findRoute(rt.Routes, it.dest)
			if !ok {
				c.set(it.r, fmt.Errorf("route table %s has no route for %s: %w", table, it.dest, providers.ErrNotFound))
				continue
			}
			f := routeFence(rt.Tags, it.dest)
			if err := c.check("route "+it.r.ID, f); err != nil {
				c.set(it.r, err)
				continue
			}
			it.needMove = deref(route.NetworkInterfaceId) != self
			it.needTag = f != c.ours()
			if !it.needMove && !it.needTag {
				c.set(it.r, nil)
				continue
			}
			live = append(live, it)
		}
	}

	// 2. Repoint every route at once.
	parallel(len(live), func(i int) {
		it := live[i]
		if !it.needMove {
			return
		}
		it.err = c.p.call(ctx, func(ctx context.Context) error {
			in := &ec2.ReplaceRouteInput{RouteTableId: &it.table, NetworkInterfaceId: &self}
			if it.dest.Addr().Is4() {
				in.DestinationCidrBlock = ptr(it.dest.String())
			} else {
				in.DestinationIpv6CidrBlock = ptr(it.dest.String())
			}
			if _, err := c.p.ec2.ReplaceRoute(ctx, in); err != nil {
				return fmt.Errorf("replacing route %s in %s with %s: %w", it.dest, it.table, self, translate(ctx, err))
			}
			return nil
		})
	})

	// 3. Record the claims, one call per table (each destination has its
	// own tag, so the tables differ).
	tagged := make(map[string][]*routeItem)
	for _, it := range live {
		if it.err == nil && it.needTag {
			tagged[it.table] = append(tagged[it.table], it)
		}
	}
	tagTables := sortedKeys(tagged)
	parallel(len(tagTables), func(i int) {
		table := tagTables[i]
		its := tagged[table]
		tags := make([]types.Tag, len(its))
		for j, it := range its {
			tags[j] = types.Tag{Key: ptr(routeTagKey(it.dest)), Value: ptr(c.ours().routeValue())}
		}
		err := c.p.call(ctx, func(ctx context.Context) error {
			if _, err := c.p.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{table}, Tags: tags}); err != nil {
				return fmt.Errorf("tagging route table %s with term %d: %w", table, c.term, translate(ctx, err))
			}
			return nil
		})
		for _, it := range its {
			it.err = err
		}
	})

	// 4. Read back the tables that changed.
	verify(ctx, c, live, func(ctx context.Context, pending []*routeItem) {
		seen := make(map[string]bool)
		var ids []string
		for _, it := range pending {
			if !seen[it.table] {
				seen[it.table] = true
				ids = append(ids, it.table)
			}
		}
		got, errs := c.describeTables(ctx, ids)
		for _, it := range pending {
			if it.err = errs[it.table]; it.err != nil {
				continue
			}
			rt := got[it.table]
			route, ok := findRoute(rt.Routes, it.dest)
			if !ok {
				it.err = fmt.Errorf("verifying: route table %s has no route for %s any more: %w", it.table, it.dest, providers.ErrNotFound)
				continue
			}
			f := routeFence(rt.Tags, it.dest)
			if err := c.check("route "+it.r.ID, f); err != nil {
				it.err = fmt.Errorf("verifying: %w", err)
				continue
			}
			if target := deref(route.NetworkInterfaceId); target != self || f != c.ours() {
				it.err = fmt.Errorf("verifying route %s: it points at %q with claim term %d node %q, want %s term %d: %w",
					it.r.ID, routeTarget(route), f.term, f.node, self, c.term, providers.ErrConflict)
			}
		}
	}, func(it *routeItem) *error { return &it.err }, func(it *routeItem) providers.Resource { return it.r })
}
