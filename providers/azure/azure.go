// Package azure is Handoff's Azure provider: it moves a VPN gateway fleet's
// floating resources to the node it runs on through Azure Resource Manager,
// with the Azure SDK for Go.
//
// Two kinds of resources move:
//   - "route": a route of a route table (ID "table/route", "rg/table/route"
//     or the route's ARM ID) gets this node's private IP as its
//     VirtualAppliance next hop (RoutesClient.BeginCreateOrUpdate, If-Match,
//     polled to completion);
//   - "public_ip": a public IP (ID "name", "rg/name" or its ARM ID) moves to
//     this node's NIC ipConfiguration (InterfacesClient reads and
//     BeginCreateOrUpdate). Azure refuses a public IP referenced by two
//     NICs, so it is detached from the old NIC and then attached to the new
//     one; every read, permission check and fencing write happens before the
//     detach, so the window without an owner is the two NIC writes.
//
// Fencing: the Raft term, the node and the target are written as tags
// (handoff-term, handoff-node, handoff-target) on the route table and on
// the public IP, with If-Match; a claim refuses (providers.ErrStaleTerm) a
// resource whose tag carries a higher term. Owner reads the tags back.
//
// The node's identity (subscription, resource group, NIC, private IP) comes
// from the instance metadata service unless the settings name it. See
// docs/providers/azure.md for settings, permissions and failure behaviour.
package azure

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/handoffvpn/handoff/providers"
)

// Resource kinds the provider moves.
const (
	KindRoute    = "route"
	KindPublicIP = "public_ip"
)

// RBAC actions the provider's calls need; Permissions lists them.
const (
	actPermissionsRead = "Microsoft.Authorization/permissions/read"
	actOperationRead   = "Microsoft.Network/locations/operations/read"
	actNICRead         = "Microsoft.Network/networkInterfaces/read"
	actNICWrite        = "Microsoft.Network/networkInterfaces/write"
	actPIPRead         = "Microsoft.Network/publicIPAddresses/read"
	actPIPWrite        = "Microsoft.Network/publicIPAddresses/write"
	actPIPJoin         = "Microsoft.Network/publicIPAddresses/join/action"
	actTableRead       = "Microsoft.Network/routeTables/read"
	actTableWrite      = "Microsoft.Network/routeTables/write"
	actRouteRead       = "Microsoft.Network/routeTables/routes/read"
	actRouteWrite      = "Microsoft.Network/routeTables/routes/write"
	actSubnetJoin      = "Microsoft.Network/virtualNetworks/subnets/join/action"
)

// Permissions returns the exact Azure RBAC actions the provider calls, for
// a custom role definition (docs/providers/azure.md has one).
func Permissions() []string {
	p := []string{
		actPermissionsRead, actOperationRead, actNICRead, actNICWrite,
		actPIPRead, actPIPWrite, actPIPJoin, actTableRead, actTableWrite,
		actRouteRead, actRouteWrite, actSubnetJoin,
	}
	sort.Strings(p)
	return p
}

// Provider moves routes and public IPs to one node.
type Provider struct {
	node string
	log  *slog.Logger
	tune tuning
	self identity

	routes *armnetwork.RoutesClient
	tables *armnetwork.RouteTablesClient
	nics   *armnetwork.InterfacesClient
	pips   *armnetwork.PublicIPAddressesClient
	arm    *arm.Client // the permissions API, which armnetwork does not cover
}

var (
	_ providers.Provider          = (*Provider)(nil)
	_ providers.PermissionChecker = (*Provider)(nil)
)

// New builds the provider of node: it validates s, works out the node's
// identity (IMDS and one NIC read or list) and builds the SDK clients.
func New(ctx context.Context, node string, s Settings) (*Provider, error) {
	if node == "" {
		return nil, errors.New("azure provider: empty node ID")
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	tune, err := s.tuning()
	if err != nil {
		return nil, err
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Provider{node: node, log: log.With("provider", "azure", "node", node), tune: tune}

	id, md, err := p.resolveIdentity(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("azure provider for node %s: %w", node, err)
	}
	p.self = id

	cred, err := credential(s)
	if err != nil {
		return nil, fmt.Errorf("azure provider for node %s: credential: %w", node, err)
	}
	opts := clientOptions(s, tune)
	factory, err := armnetwork.NewClientFactory(id.subscription, cred, opts)
	if err != nil {
		return nil, fmt.Errorf("azure provider for node %s: building network clients: %w", node, err)
	}
	p.routes = factory.NewRoutesClient()
	p.tables = factory.NewRouteTablesClient()
	p.nics = factory.NewInterfacesClient()
	p.pips = factory.NewPublicIPAddressesClient()
	if p.arm, err = arm.NewClient("github.com/handoffvpn/handoff/providers/azure", "v1.0.0", cred, opts); err != nil {
		return nil, fmt.Errorf("azure provider for node %s: building the resource manager client: %w", node, err)
	}

	nic, ref, err := p.findNIC(ctx, s, md)
	if err != nil {
		return nil, fmt.Errorf("azure provider for node %s: %w", node, err)
	}
	cfgName, cfgID, ip, err := selectIPConfig(nic, s.IPConfiguration, s.PrivateIP)
	if err != nil {
		return nil, fmt.Errorf("azure provider for node %s: %w", node, err)
	}
	if ref, err = ref.resolve(id.subscription, id.resourceGroup); err != nil {
		return nil, fmt.Errorf("azure provider for node %s: network interface: %w", node, err)
	}
	p.self.nic, p.self.nicID = ref, deref(nic.ID)
	if p.self.nicID == "" {
		p.self.nicID = nicID(ref.sub, ref.rg, ref.name)
	}
	p.self.ipConfig, p.self.ipConfigID, p.self.privateIP = cfgName, cfgID, ip
	p.log.Info("azure provider ready", "nic", p.self.nicID, "ip_configuration", cfgName, "private_ip", ip)
	return p, nil
}

func credential(s Settings) (azcore.TokenCredential, error) {
	if s.TokenCredential != nil {
		return s.TokenCredential, nil
	}
	switch s.Credential {
	case "managed_identity":
		o := &azidentity.ManagedIdentityCredentialOptions{}
		if s.ManagedIdentityClientID != "" {
			o.ID = azidentity.ClientID(s.ManagedIdentityClientID)
		}
		return azidentity.NewManagedIdentityCredential(o)
	default:
		return azidentity.NewDefaultAzureCredential(nil)
	}
}

// clientOptions points the SDK at the configured cloud and gives its
// pipeline Handoff's retry policy: per-try timeout, bounded attempts,
// jittered exponential backoff on 408/429/5xx and transport errors only.
func clientOptions(s Settings, t tuning) *arm.ClientOptions {
	c := cloud.AzurePublic
	if s.Endpoint != "" {
		aud := s.Audience
		if aud == "" {
			aud = s.Endpoint
		}
		c = cloud.Configuration{
			ActiveDirectoryAuthorityHost: cloud.AzurePublic.ActiveDirectoryAuthorityHost,
			Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
				cloud.ResourceManager: {Endpoint: s.Endpoint, Audience: aud},
			},
		}
	}
	retries := int32(t.maxAttempts - 1)
	if retries == 0 {
		retries = -1 // the SDK reads 0 as "default (3)"
	}
	o := &arm.ClientOptions{
		ClientOptions: policy.ClientOptions{
			Cloud: c,
			Retry: policy.RetryOptions{
				MaxRetries:    retries,
				TryTimeout:    t.callTimeout,
				RetryDelay:    t.backoffBase,
				MaxRetryDelay: t.backoffMax,
			},
			Telemetry: policy.TelemetryOptions{ApplicationID: "handoff"},
		},
		// Registering a resource provider is an extra permission and never
		// needed mid-failover: Microsoft.Network is registered wherever
		// there are VMs.
		DisableRPRegistration: true,
	}
	if s.HTTPClient != nil {
		o.Transport = s.HTTPClient
	}
	return o
}

// withIfMatch makes the calls made with ctx conditional on etag.
func withIfMatch(ctx context.Context, etag string) context.Context {
	if etag == "" {
		return ctx
	}
	return policy.WithHTTPHeader(ctx, http.Header{"If-Match": []string{etag}})
}

// Owner reports who holds r: the node recorded in its fencing tags when the
// resource still points where that claim put it, nobody otherwise.
func (p *Provider) Owner(ctx context.Context, r providers.Resource) (providers.Holder, error) {
	switch r.Kind {
	case KindRoute:
		return p.routeOwner(ctx, r)
	case KindPublicIP:
		return p.publicIPOwner(ctx, r)
	}
	return providers.Holder{}, fmt.Errorf("owner of %s: %w", r, errKind(r.Kind))
}

func errKind(kind string) error {
	return fmt.Errorf("unsupported resource kind %q: the azure provider moves %q and %q", kind, KindRoute, KindPublicIP)
}

// Claim moves every resource to this node under term. Route tables and
// public IPs move in parallel; routes of one table move one after the other
// (they share the table's ETag). A partial failure is a
// *providers.ClaimError naming each resource.
func (p *Provider) Claim(ctx context.Context, term uint64, rs []providers.Resource) error {
	var (
		mu sync.Mutex // guards ce
		ce providers.ClaimError
		wg sync.WaitGroup
	)
	record := func(r providers.Resource, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			ce.Failed = append(ce.Failed, providers.ResourceError{Resource: r, Err: err})
		} else {
			ce.Moved = append(ce.Moved, r)
		}
	}
	tables := make(map[string][]routeTarget)
	var tableOrder []string
	seen := make(map[providers.Resource]bool)
	for _, r := range rs {
		if seen[r] {
			continue
		}
		seen[r] = true
		switch r.Kind {
		case KindRoute:
			id, err := p.routeID(r)
			if err != nil {
				record(r, err)
				continue
			}
			k := strings.ToLower(id.rg + "/" + id.name)
			if _, ok := tables[k]; !ok {
				tableOrder = append(tableOrder, k)
			}
			tables[k] = append(tables[k], routeTarget{res: r, id: id})
		case KindPublicIP:
			id, err := p.publicIPRef(r)
			if err != nil {
				record(r, err)
				continue
			}
			wg.Go(func() { record(r, p.claimPublicIP(ctx, term, id)) })
		default:
			record(r, errKind(r.Kind))
		}
	}
	for _, k := range tableOrder {
		routes := tables[k]
		wg.Go(func() {
			for i, err := range p.claimTable(ctx, term, routes) {
				record(routes[i].res, err)
			}
		})
	}
	wg.Wait()
	if len(ce.Failed) == 0 {
		p.log.Info("claimed", "term", term, "resources", len(ce.Moved))
		return nil
	}
	sortResources := func(a, b providers.Resource) int { return strings.Compare(a.String(), b.String()) }
	slices.SortFunc(ce.Failed, func(a, b providers.ResourceError) int { return sortResources(a.Resource, b.Resource) })
	slices.SortFunc(ce.Moved, sortResources)
	p.log.Warn("claim incomplete", "term", term, "moved", len(ce.Moved), "failed", len(ce.Failed), "err", &ce)
	return &ce
}

// CheckPermissions asks the permissions API, without changing anything,
// whether the credentials allow every write and join a claim of rs makes
// (on each route table, each public IP and this node's NIC). The NIC a
// public IP sits on now is checked at claim time, before it is touched.
func (p *Provider) CheckPermissions(ctx context.Context, rs []providers.Resource) error {
	scopes := make(map[string][]string)
	var order []string
	need := func(scope string, actions ...string) {
		if _, ok := scopes[scope]; !ok {
			order = append(order, scope)
		}
		scopes[scope] = append(scopes[scope], actions...)
	}
	var errs []error
	for _, r := range rs {
		switch r.Kind {
		case KindRoute:
			id, err := p.routeID(r)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			need(routeTableID(id.sub, id.rg, id.name), actTableRead, actTableWrite, actRouteRead, actRouteWrite)
		case KindPublicIP:
			id, err := p.publicIPRef(r)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			need(publicIPID(id.sub, id.rg, id.name), actPIPRead, actPIPWrite, actPIPJoin)
			need(p.self.nicID, actNICRead, actNICWrite, actSubnetJoin)
		default:
			errs = append(errs, fmt.Errorf("%s: %w", r, errKind(r.Kind)))
		}
	}
	results := make([]error, len(order))
	var wg sync.WaitGroup
	for i, scope := range order {
		wg.Go(func() { results[i] = p.requireActions(ctx, scope, dedupe(scopes[scope])...) })
	}
	wg.Wait()
	return errors.Join(append(errs, results...)...)
}

func dedupe(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}
