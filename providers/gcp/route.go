package gcp

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"

	"cloud.google.com/go/compute/apiv1/computepb"
	"google.golang.org/api/iterator"

	"github.com/handoffvpn/handoff/providers"
)

// Routes are immutable in GCE, so a move inserts a route to this node and
// then deletes the old ones. The fencing token is the route's description,
// "handoff node=<node> term=<term>", written once at insert; the name is
// derived from network, destination, term and node, so every claim of one
// term by one node maps to one route name.

type routeID struct {
	network string
	dest    netip.Prefix
}

func (r routeID) String() string { return r.network + "/" + r.dest.String() }

func parseRouteID(id string) (routeID, error) {
	network, dest, ok := strings.Cut(id, "/")
	pfx, err := netip.ParsePrefix(dest)
	if !ok || !gceNameRE.MatchString(network) || err != nil || pfx.Masked() != pfx {
		return routeID{}, fmt.Errorf("route ID %q: want \"network/destination-CIDR\", e.g. \"vpc/198.51.100.0/24\"", id)
	}
	return routeID{network: network, dest: pfx}, nil
}

func routeDescription(node string, term uint64) string {
	return "handoff node=" + node + " term=" + strconv.FormatUint(term, 10)
}

func parseRouteDescription(d string) (node string, term uint64, ok bool) {
	f := strings.Fields(d)
	if len(f) != 3 || f[0] != "handoff" || !strings.HasPrefix(f[1], "node=") || !strings.HasPrefix(f[2], "term=") {
		return "", 0, false
	}
	term, err := strconv.ParseUint(strings.TrimPrefix(f[2], "term="), 10, 64)
	if err != nil {
		return "", 0, false
	}
	return strings.TrimPrefix(f[1], "node="), term, true
}

// routeName is "handoff-<hash of network and destination>-<term>-<node>",
// cut to GCE's 63 characters.
func routeName(r routeID, node string, term uint64) string {
	h := fnv.New32a()
	h.Write([]byte(r.String()))
	n := fmt.Sprintf("handoff-%08x-%d-%s", h.Sum32(), term, strings.ReplaceAll(node, "_", "-"))
	if len(n) > 63 {
		n = n[:63]
	}
	return strings.TrimRight(n, "-")
}

type fencedRoute struct {
	route *computepb.Route
	node  string
	term  uint64
}

// listRoutes returns the routes Handoff inserted for r.
func (p *Provider) listRoutes(ctx context.Context, r routeID) ([]fencedRoute, error) {
	var out []fencedRoute
	filter := fmt.Sprintf("destRange = %q", r.dest.String())
	err := p.read(ctx, "listing routes to "+r.dest.String(), func(ctx context.Context) error {
		out = out[:0]
		it := p.routes.List(ctx, &computepb.ListRoutesRequest{Project: p.project, Filter: &filter}, noSDKRetry)
		for {
			rt, err := it.Next()
			if errors.Is(err, iterator.Done) {
				return nil
			}
			if err != nil {
				return err
			}
			if lastSegment(rt.GetNetwork()) != r.network || rt.GetDestRange() != r.dest.String() {
				continue
			}
			if node, term, ok := parseRouteDescription(rt.GetDescription()); ok {
				out = append(out, fencedRoute{route: rt, node: node, term: term})
			}
		}
	})
	return out, err
}

func routeTarget(rt *computepb.Route) string {
	if rt.GetNextHopInstance() != "" {
		return ref(rt.GetNextHopInstance())
	}
	return rt.GetNextHopIp()
}

func (p *Provider) ownerRoute(ctx context.Context, id string) (providers.Holder, error) {
	r, err := parseRouteID(id)
	if err != nil {
		return providers.Holder{}, err
	}
	rs, err := p.listRoutes(ctx, r)
	if err != nil {
		return providers.Holder{}, err
	}
	var best *fencedRoute
	for i := range rs {
		if best == nil || rs[i].term > best.term {
			best = &rs[i]
		}
	}
	if best == nil {
		return providers.Holder{}, nil
	}
	return providers.Holder{Node: best.node, Term: best.term, Target: routeTarget(best.route)}, nil
}

// fenced reports the route that forbids a claim at term by this node: one
// with a higher term, or the same term from another node.
func (p *Provider) fenced(rs []fencedRoute, term uint64) *fencedRoute {
	for i := range rs {
		if rs[i].term > term || (rs[i].term == term && rs[i].node != p.node) {
			return &rs[i]
		}
	}
	return nil
}

func (p *Provider) claimRoute(ctx context.Context, term uint64, id string) error {
	r, err := parseRouteID(id)
	if err != nil {
		return err
	}
	name := routeName(r, p.node, term)
	for range conflictRounds {
		rs, err := p.listRoutes(ctx, r)
		if err != nil {
			return err
		}
		if f := p.fenced(rs, term); f != nil {
			return staleTerm(f.node, f.term)
		}
		var mine bool
		for _, fr := range rs {
			mine = mine || (fr.node == p.node && fr.term == term)
		}
		if !mine {
			err := p.insertRoute(ctx, r, name, term)
			if errors.Is(err, providers.ErrConflict) {
				continue // the name exists: read again
			}
			if err != nil {
				return err
			}
		}
		// The new route is in place: only now do the old ones go. Until
		// they do, equal priorities make GCE spread flows over both.
		for _, fr := range rs {
			if fr.node == p.node && fr.term == term {
				continue
			}
			old := fr.route.GetName()
			err := p.mutate(ctx, "deleting the old route "+old, scope{}, func(ctx context.Context, reqID string) (*computepb.Operation, error) {
				return opProto(p.routes.Delete(ctx, &computepb.DeleteRouteRequest{Project: p.project, Route: old, RequestId: &reqID}, noSDKRetry))
			})
			if err != nil && !errors.Is(err, providers.ErrNotFound) {
				return err
			}
		}
		rs, err = p.listRoutes(ctx, r)
		if err != nil {
			return err
		}
		if f := p.fenced(rs, term); f != nil {
			return staleTerm(f.node, f.term)
		}
		if len(rs) == 1 && rs[0].node == p.node && rs[0].term == term {
			return nil
		}
	}
	return fmt.Errorf("%w: routes to %s changed under every one of %d attempts", providers.ErrConflict, r, conflictRounds)
}

func (p *Provider) insertRoute(ctx context.Context, r routeID, name string, term uint64) error {
	rt := &computepb.Route{
		Name:        &name,
		Network:     ptr("projects/" + p.project + "/global/networks/" + r.network),
		DestRange:   ptr(r.dest.String()),
		Priority:    ptr(uint32(p.cfg.RoutePriority)),
		Description: ptr(routeDescription(p.node, term)),
	}
	if p.cfg.RouteNextHop == "ip" {
		rt.NextHopIp = &p.ip
	} else {
		rt.NextHopInstance = ptr("projects/" + p.project + "/zones/" + p.zone + "/instances/" + p.instance)
	}
	return p.mutate(ctx, "inserting route "+name+" to "+r.dest.String(), scope{}, func(ctx context.Context, reqID string) (*computepb.Operation, error) {
		return opProto(p.routes.Insert(ctx, &computepb.InsertRouteRequest{Project: p.project, RequestId: &reqID, RouteResource: rt}, noSDKRetry))
	})
}
