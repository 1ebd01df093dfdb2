package azure

import (
	"context"
	"fmt"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/handoffvpn/handoff/providers"
)

// routeTarget is one route of a claim.
type routeTarget struct {
	res providers.Resource
	id  armID // resolved; child is the route's name
}

func (p *Provider) routeID(r providers.Resource) (armID, error) {
	id, err := parseRoute(r.ID)
	if err == nil {
		id, err = id.resolve(p.self.subscription, p.self.resourceGroup)
	}
	if err != nil {
		return armID{}, fmt.Errorf("route %q: %w", r.ID, err)
	}
	return id, nil
}

func (id armID) routeString() string {
	return routeTableID(id.sub, id.rg, id.name) + "/routes/" + id.child
}

func findRoute(rt armnetwork.RouteTable, name string) *armnetwork.Route {
	if rt.Properties == nil {
		return nil
	}
	for _, r := range rt.Properties.Routes {
		if r != nil && strings.EqualFold(deref(r.Name), name) {
			return r
		}
	}
	return nil
}

func nextHop(r *armnetwork.Route) string {
	if r.Properties == nil || deref(r.Properties.NextHopType) != armnetwork.RouteNextHopTypeVirtualAppliance {
		return ""
	}
	return deref(r.Properties.NextHopIPAddress)
}

func (p *Provider) getTable(ctx context.Context, id armID) (armnetwork.RouteTable, error) {
	resp, err := p.tables.Get(ctx, id.rg, id.name, nil)
	if err != nil {
		return armnetwork.RouteTable{}, fmt.Errorf("reading route table %s: %w", routeTableID(id.sub, id.rg, id.name), translate(err))
	}
	return resp.RouteTable, nil
}

func (p *Provider) routeOwner(ctx context.Context, r providers.Resource) (providers.Holder, error) {
	id, err := p.routeID(r)
	if err != nil {
		return providers.Holder{}, err
	}
	rt, err := p.getTable(ctx, id)
	if err != nil {
		return providers.Holder{}, err
	}
	route := findRoute(rt, id.child)
	if route == nil {
		return providers.Holder{}, fmt.Errorf("route %s: %w", id.routeString(), providers.ErrNotFound)
	}
	f, err := readFence(rt.Tags)
	if err != nil {
		return providers.Holder{}, fmt.Errorf("route table of %s: %w", id.routeString(), err)
	}
	return f.holder(nextHop(route)), nil
}

// claimTable points the routes of one route table at this node and fences
// the table. It returns one error per route (nil: the route points here
// under term).
//
// Each pass reads the table, checks its fence, rewrites the routes that
// point elsewhere (If-Match), then writes the fence tags (If-Match) and
// verifies the table as the last write returned it. The route is moved
// before the tags so a refused or failed route write leaves the previous
// claim's tags, which still describe where the route points. A lost
// ETag race or a busy table starts a new pass from a fresh read.
func (p *Provider) claimTable(ctx context.Context, term uint64, routes []routeTarget) []error {
	table := routes[0].id
	tid := routeTableID(table.sub, table.rg, table.name)
	target := p.self.privateIP
	errs := make([]error, len(routes))
	final := make([]bool, len(routes)) // decided for good, errs[i] set
	err := p.retry(ctx, "claiming route table "+tid, func(ctx context.Context) error {
		rt, err := p.getTable(ctx, table)
		if err != nil {
			return err
		}
		f, err := readFence(rt.Tags)
		if err != nil {
			return fmt.Errorf("route table %s: %w", tid, err)
		}
		if err := f.check(p.node, term, "route table "+tid); err != nil {
			return err
		}
		etag := deref(rt.Etag)
		changed := false
		for i, r := range routes {
			if final[i] {
				continue
			}
			cur := findRoute(rt, r.id.child)
			if cur == nil || cur.Properties == nil {
				final[i], errs[i] = true, fmt.Errorf("route %s: %w", r.id.routeString(), providers.ErrNotFound)
				continue
			}
			if nextHop(cur) == target {
				continue
			}
			// Children share their table's ETag in Microsoft.Network; when
			// the read shows that, chain the ETag each write returns so the
			// next route's write still matches. Otherwise use the route's own.
			ifMatch := deref(cur.Etag)
			shared := ifMatch != "" && ifMatch == deref(rt.Etag)
			if shared {
				ifMatch = etag
			}
			newTag, err := p.putRoute(ctx, table, cur, ifMatch)
			if err != nil {
				if retryable(err) {
					return err
				}
				final[i], errs[i] = true, fmt.Errorf("pointing route %s at %s: %w", r.id.routeString(), target, err)
				continue
			}
			changed = true
			if shared && newTag != "" {
				etag = newTag
			}
			p.log.Info("route next hop set", "route", r.id.routeString(), "next_hop", target, "term", term)
		}
		pending := false
		for i := range routes {
			pending = pending || !final[i]
		}
		if !pending {
			return nil
		}
		verified := rt
		switch {
		case !f.is(p.node, term, target):
			resp, err := p.tables.UpdateTags(withIfMatch(ctx, etag), table.rg, table.name,
				armnetwork.TagsObject{Tags: withFence(rt.Tags, p.node, term, target)}, nil)
			if err != nil {
				return fmt.Errorf("writing fencing tags on route table %s: %w", tid, translate(err))
			}
			verified = resp.RouteTable // ARM answers the table as written: the read-back
		case changed:
			if verified, err = p.getTable(ctx, table); err != nil {
				return err
			}
		}
		return p.verifyTable(verified, term, routes, final, tid)
	})
	if err != nil {
		for i, r := range routes {
			if !final[i] {
				errs[i] = fmt.Errorf("pointing route %s at %s: %w", r.id.routeString(), target, err)
			}
		}
	}
	return errs
}

// verifyTable checks the table after a claim: fenced for this node at term
// and every undecided route pointing here.
func (p *Provider) verifyTable(rt armnetwork.RouteTable, term uint64, routes []routeTarget, final []bool, tid string) error {
	f, err := readFence(rt.Tags)
	if err != nil {
		return fmt.Errorf("route table %s: %w", tid, err)
	}
	if err := f.check(p.node, term, "route table "+tid); err != nil {
		return err
	}
	if !f.is(p.node, term, p.self.privateIP) {
		return fmt.Errorf("route table %s is fenced for node %q at term %d after the claim: %w", tid, f.node, f.term, providers.ErrConflict)
	}
	for i, r := range routes {
		if final[i] {
			continue
		}
		cur := findRoute(rt, r.id.child)
		if cur == nil {
			return fmt.Errorf("route %s vanished during the claim: %w", r.id.routeString(), providers.ErrConflict)
		}
		if hop := nextHop(cur); hop != p.self.privateIP {
			return fmt.Errorf("route %s points at %q after the claim: %w", r.id.routeString(), hop, providers.ErrConflict)
		}
	}
	return nil
}

// putRoute points route at this node, conditional on ifMatch, and waits
// for the operation. It returns the route's new ETag.
func (p *Provider) putRoute(ctx context.Context, table armID, cur *armnetwork.Route, ifMatch string) (string, error) {
	hopType := armnetwork.RouteNextHopTypeVirtualAppliance
	ip := p.self.privateIP
	body := armnetwork.Route{Properties: &armnetwork.RoutePropertiesFormat{
		AddressPrefix:    cur.Properties.AddressPrefix,
		NextHopType:      &hopType,
		NextHopIPAddress: &ip,
	}}
	poller, err := p.routes.BeginCreateOrUpdate(withIfMatch(ctx, ifMatch), table.rg, table.name, deref(cur.Name), body, nil)
	if err != nil {
		return "", translate(err)
	}
	res, err := poll(ctx, p, poller)
	if err != nil {
		return "", err
	}
	return deref(res.Etag), nil
}
