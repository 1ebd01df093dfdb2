// Package gcp moves Handoff's floating resources on Google Compute Engine to
// the node it runs on: protocol-forwarding rules (forwardingRules.setTarget
// to the node's target instance, so packets keep the external IP as their
// destination and every gateway terminates on it), alias IP ranges (moved
// between NICs with instances.updateNetworkInterface under the NIC
// fingerprint) and VPC routes (immutable: a new route to the node is
// inserted, then the old one deleted).
//
// Every move writes the Raft term as a fencing token next to the resource
// (forwarding rule labels, instance labels, route descriptions) and refuses
// to move a resource that carries a higher term. Calls go through the
// official REST clients (cloud.google.com/go/compute/apiv1) with a per-call
// timeout, bounded retries with jittered backoff on throttling, 5xx and
// timeouts only, and one requestId per mutation so retries are idempotent.
// Identity comes from the GCE metadata server.
package gcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	compute "cloud.google.com/go/compute/apiv1"
	"cloud.google.com/go/compute/metadata"
	"google.golang.org/api/option"
	htransport "google.golang.org/api/transport/http"

	"github.com/handoffvpn/handoff/providers"
)

// Resource kinds the provider moves.
const (
	// KindForwardingRule: ID "name" (in the node's region) or "region/name".
	KindForwardingRule = "forwarding_rule"
	// KindAliasIP: ID "10.128.0.100/32", or "range-name/10.4.0.0/28" for a
	// subnet secondary range.
	KindAliasIP = "alias_ip"
	// KindRoute: ID "network/destRange", e.g. "vpc/198.51.100.0/24".
	KindRoute = "route"
)

// Provider moves GCE resources to one node.
type Provider struct {
	node string
	cfg  resolved
	log  *slog.Logger

	// Identity of this node's VM.
	project, zone, region, instance, ip string

	forwardingRules *compute.ForwardingRulesClient
	instances       *compute.InstancesClient
	routes          *compute.RoutesClient
	zoneOps         *compute.ZoneOperationsClient
	regionOps       *compute.RegionOperationsClient
	globalOps       *compute.GlobalOperationsClient
	// raw and rawEndpoint carry the one call the SDK cannot express
	// (clearing a NIC's last alias range): the same credentials and
	// endpoint as the clients.
	raw         *http.Client
	rawEndpoint string

	closeOnce sync.Once
	closeErr  error
}

var _ providers.Provider = (*Provider)(nil)

// Factory builds the provider of node from its settings (Settings,
// *Settings or a decoded map); usable with providers.Registry.
func Factory(ctx context.Context, node string, settings any) (providers.Provider, error) {
	s, err := settingsFrom(settings)
	if err != nil {
		return nil, err
	}
	return New(ctx, node, s)
}

// New builds the provider of node: it validates s, asks the metadata
// server for whatever identity s leaves out, and creates the REST clients.
func New(ctx context.Context, node string, s Settings) (*Provider, error) {
	if !nodeRE.MatchString(node) {
		return nil, fmt.Errorf("gcp provider: node ID %q cannot be written into GCE labels (want 1-40 of a-z, 0-9, '_' and '-')", node)
	}
	cfg, err := s.resolve()
	if err != nil {
		return nil, err
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Provider{node: node, cfg: cfg, log: log.With("provider", "gcp", "node", node)}
	if err := p.identify(ctx); err != nil {
		return nil, err
	}
	if err := p.dial(ctx); err != nil {
		return nil, errors.Join(err, p.Close())
	}
	return p, nil
}

// identify fills the VM's identity from settings, then the metadata server.
func (p *Provider) identify(ctx context.Context) error {
	p.project, p.zone, p.instance = p.cfg.Project, p.cfg.Zone, p.cfg.Instance
	needIP := p.cfg.RouteNextHop == "ip"
	if p.project != "" && p.zone != "" && p.instance != "" && !needIP {
		p.region = p.regionOrDefault()
		return nil
	}
	mc, done := metadataClient(p.cfg.MetadataURL, p.log)
	defer done()
	ctx, cancel := context.WithTimeout(ctx, p.cfg.callTimeout)
	defer cancel()
	get := func(dst *string, suffix string) error {
		if *dst != "" {
			return nil
		}
		// GetWithContext, not ProjectIDWithContext: the latter caches
		// per process, and in-process nodes may differ.
		v, err := mc.GetWithContext(ctx, suffix)
		if err != nil {
			return fmt.Errorf("reading %s from the GCE metadata server: %w", suffix, err)
		}
		v = strings.TrimSpace(v)
		if i := strings.LastIndexByte(v, '/'); i >= 0 && suffix == "instance/zone" {
			v = v[i+1:] // "projects/123/zones/us-central1-a"
		}
		*dst = v
		return nil
	}
	for _, f := range []struct {
		dst    *string
		suffix string
	}{{&p.project, "project/project-id"}, {&p.zone, "instance/zone"}, {&p.instance, "instance/name"}} {
		if err := get(f.dst, f.suffix); err != nil {
			return err
		}
	}
	if needIP {
		if err := get(&p.ip, "instance/network-interfaces/0/ip"); err != nil {
			return err
		}
	}
	p.region = p.regionOrDefault()
	return nil
}

func (p *Provider) regionOrDefault() string {
	if p.cfg.Region != "" {
		return p.cfg.Region
	}
	if i := strings.LastIndexByte(p.zone, '-'); i > 0 {
		return p.zone[:i]
	}
	return p.zone
}

// metadataClient returns a metadata client for base ("" = the real
// server). The library only reads its host from GCE_METADATA_HOST, a
// process-wide variable; a transport that rewrites the URL gives each
// in-process node its own server instead.
// Identity is read once, so done drops the client's pooled connections.
func metadataClient(base string, log *slog.Logger) (c *metadata.Client, done func()) {
	if base == "" {
		return metadata.NewWithOptions(&metadata.Options{Logger: log}), func() {}
	}
	u, _ := url.Parse(base) // validated in Settings.resolve
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return metadata.NewWithOptions(&metadata.Options{Logger: log, Client: &http.Client{
		Transport: rewriteHost{base: u, next: tr},
	}}), tr.CloseIdleConnections
}

type rewriteHost struct {
	base *url.URL
	next http.RoundTripper
}

func (rh rewriteHost) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host, r.Host = rh.base.Scheme, rh.base.Host, rh.base.Host
	return rh.next.RoundTrip(r)
}

func (p *Provider) dial(ctx context.Context) error {
	// One authenticated HTTP client for everything, so the per-call timeout
	// also holds for list calls: the SDK's list methods build their HTTP
	// request without the call's context, so only a client timeout bounds
	// them. Operation waits long-poll and use the client without it.
	base := p.cfg.HTTPClient
	if base == nil {
		var opts []option.ClientOption
		switch {
		case p.cfg.WithoutAuthentication:
			opts = append(opts, option.WithoutAuthentication())
		case p.cfg.CredentialsFile != "":
			opts = append(opts, option.WithAuthCredentialsFile(option.ServiceAccount, p.cfg.CredentialsFile))
		}
		opts = append(opts, option.WithScopes(compute.DefaultAuthScopes()...))
		var err error
		if base, _, err = htransport.NewClient(ctx, opts...); err != nil {
			return fmt.Errorf("creating the authenticated HTTP client: %w", err)
		}
	}
	bounded := *base
	bounded.Timeout = p.cfg.callTimeout
	p.raw = &bounded
	p.rawEndpoint = "https://compute.googleapis.com"
	var ep []option.ClientOption
	if p.cfg.Endpoint != "" {
		ep = append(ep, option.WithEndpoint(p.cfg.Endpoint))
		p.rawEndpoint = strings.TrimRight(p.cfg.Endpoint, "/")
	}
	callOpts := append(slices.Clone(ep), option.WithHTTPClient(&bounded))
	waitOpts := append(slices.Clone(ep), option.WithHTTPClient(base))
	var err error
	if p.forwardingRules, err = compute.NewForwardingRulesRESTClient(ctx, callOpts...); err != nil {
		return fmt.Errorf("creating the forwarding rules client: %w", err)
	}
	if p.instances, err = compute.NewInstancesRESTClient(ctx, callOpts...); err != nil {
		return fmt.Errorf("creating the instances client: %w", err)
	}
	if p.routes, err = compute.NewRoutesRESTClient(ctx, callOpts...); err != nil {
		return fmt.Errorf("creating the routes client: %w", err)
	}
	if p.zoneOps, err = compute.NewZoneOperationsRESTClient(ctx, waitOpts...); err != nil {
		return fmt.Errorf("creating the zone operations client: %w", err)
	}
	if p.regionOps, err = compute.NewRegionOperationsRESTClient(ctx, waitOpts...); err != nil {
		return fmt.Errorf("creating the region operations client: %w", err)
	}
	if p.globalOps, err = compute.NewGlobalOperationsRESTClient(ctx, waitOpts...); err != nil {
		return fmt.Errorf("creating the global operations client: %w", err)
	}
	return nil
}

// Close releases the API clients; it is safe to call twice.
func (p *Provider) Close() error {
	p.closeOnce.Do(func() {
		var errs []error
		if p.forwardingRules != nil {
			errs = append(errs, p.forwardingRules.Close())
		}
		if p.instances != nil {
			errs = append(errs, p.instances.Close())
		}
		if p.routes != nil {
			errs = append(errs, p.routes.Close())
		}
		if p.zoneOps != nil {
			errs = append(errs, p.zoneOps.Close())
		}
		if p.regionOps != nil {
			errs = append(errs, p.regionOps.Close())
		}
		if p.globalOps != nil {
			errs = append(errs, p.globalOps.Close())
		}
		// Pooled connections would otherwise outlive the provider (and,
		// against the emulator, hold up its shutdown).
		if p.raw != nil {
			p.raw.CloseIdleConnections()
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// Node is the Handoff node this provider acts for.
func (p *Provider) Node() string { return p.node }

// Instance is the VM this provider moves resources to.
func (p *Provider) Instance() string { return p.instance }

// Owner reports who holds r, from the fencing token the provider wrote and
// where the resource points now.
func (p *Provider) Owner(ctx context.Context, r providers.Resource) (providers.Holder, error) {
	var (
		h   providers.Holder
		err error
	)
	switch r.Kind {
	case KindForwardingRule:
		h, err = p.ownerForwardingRule(ctx, r.ID)
	case KindAliasIP:
		h, err = p.ownerAlias(ctx, r.ID)
	case KindRoute:
		h, err = p.ownerRoute(ctx, r.ID)
	default:
		err = fmt.Errorf("unknown kind %q (gcp moves %s, %s, %s)", r.Kind, KindForwardingRule, KindAliasIP, KindRoute)
	}
	if err != nil {
		return providers.Holder{}, fmt.Errorf("finding the owner of %s: %w", r, err)
	}
	return h, nil
}

// Claim moves every resource to this node in parallel under term.
func (p *Provider) Claim(ctx context.Context, term uint64, rs []providers.Resource) error {
	errs := make([]error, len(rs))
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() {
			start := time.Now()
			errs[i] = p.claim(ctx, term, r)
			if errs[i] == nil {
				p.log.Info("resource claimed", "resource", r.String(), "term", term, "took", time.Since(start))
			} else {
				p.log.Warn("resource not claimed", "resource", r.String(), "term", term, "took", time.Since(start), "err", errs[i])
			}
		})
	}
	wg.Wait()
	var ce providers.ClaimError
	for i, r := range rs {
		if errs[i] != nil {
			ce.Failed = append(ce.Failed, providers.ResourceError{Resource: r, Err: errs[i]})
		} else {
			ce.Moved = append(ce.Moved, r)
		}
	}
	if len(ce.Failed) > 0 {
		return &ce
	}
	return nil
}

func (p *Provider) claim(ctx context.Context, term uint64, r providers.Resource) error {
	var err error
	switch r.Kind {
	case KindForwardingRule:
		err = p.claimForwardingRule(ctx, term, r.ID)
	case KindAliasIP:
		err = p.claimAlias(ctx, term, r.ID)
	case KindRoute:
		err = p.claimRoute(ctx, term, r.ID)
	default:
		err = fmt.Errorf("unknown kind %q (gcp moves %s, %s, %s)", r.Kind, KindForwardingRule, KindAliasIP, KindRoute)
	}
	if err != nil {
		return fmt.Errorf("claiming %s for %s at term %d: %w", r, p.node, term, err)
	}
	return nil
}

// conflictRounds bounds how often a claim re-reads a resource after a
// fingerprint or in-use conflict: each round means someone else changed it.
const conflictRounds = 4

// staleTerm is the error for a resource fenced by a higher (or an equal,
// other node's) term.
func staleTerm(node string, term uint64) error {
	return fmt.Errorf("%w: held by %q at term %d", providers.ErrStaleTerm, node, term)
}

// Permissions lists the IAM permissions the provider's calls need.
func Permissions() []string {
	return []string{
		"compute.forwardingRules.get",
		"compute.forwardingRules.setLabels",
		"compute.forwardingRules.setTarget",
		"compute.globalOperations.get",
		"compute.instances.get",
		"compute.instances.list",
		"compute.instances.setLabels",
		"compute.instances.updateNetworkInterface",
		"compute.networks.updatePolicy",
		"compute.regionOperations.get",
		"compute.routes.create",
		"compute.routes.delete",
		"compute.routes.list",
		"compute.targetInstances.use",
		"compute.zoneOperations.get",
	}
}
