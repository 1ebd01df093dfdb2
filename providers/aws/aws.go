// Package aws is Handoff's AWS provider: it moves Elastic IPs and VPC route
// next hops to the node it runs on through the EC2 API (aws-sdk-go-v2).
//
// An Elastic IP is associated with a secondary private IP (the VIP every
// gateway terminates its tunnels on). A claim first moves that private IP
// onto this node's interface with AssignPrivateIpAddresses
// (AllowReassignment), which carries the Elastic IP along, then confirms
// the association with AssociateAddress (AllowReassociation): nothing is
// ever released first, so there is no moment without an owner. Routes are
// repointed with ReplaceRoute. Every resource carries its claim (Raft term,
// node, interface) in tags, and a claim refuses a resource tagged with a
// higher term.
//
// A claim is a few round trips whatever its size: one batched read, the
// moves in parallel, one batched tag write per kind and table, one batched
// read back to verify. See docs/providers/aws.md.
package aws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sort"
	"strings"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/handoffvpn/handoff/providers"
)

// Resource kinds the provider moves.
const (
	// KindEIP is an Elastic IP; the resource ID is its allocation ID and
	// Settings.EIPPrivateIPs says which private IP it maps to.
	KindEIP = "eip"
	// KindRoute is a VPC route; the ID is "rtb-0abc|10.0.0.0/16".
	KindRoute = "route"
)

// ec2API is the part of the EC2 client a provider uses.
type ec2API interface {
	DescribeAddresses(context.Context, *ec2.DescribeAddressesInput, ...func(*ec2.Options)) (*ec2.DescribeAddressesOutput, error)
	DescribeRouteTables(context.Context, *ec2.DescribeRouteTablesInput, ...func(*ec2.Options)) (*ec2.DescribeRouteTablesOutput, error)
	DescribeNetworkInterfaces(context.Context, *ec2.DescribeNetworkInterfacesInput, ...func(*ec2.Options)) (*ec2.DescribeNetworkInterfacesOutput, error)
	AssignPrivateIpAddresses(context.Context, *ec2.AssignPrivateIpAddressesInput, ...func(*ec2.Options)) (*ec2.AssignPrivateIpAddressesOutput, error)
	AssociateAddress(context.Context, *ec2.AssociateAddressInput, ...func(*ec2.Options)) (*ec2.AssociateAddressOutput, error)
	ReplaceRoute(context.Context, *ec2.ReplaceRouteInput, ...func(*ec2.Options)) (*ec2.ReplaceRouteOutput, error)
	CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
}

// Provider moves AWS resources to one node's network interface.
type Provider struct {
	node string
	self identity
	ec2  ec2API
	t    tuning
	log  *slog.Logger
	sem  chan struct{} // one slot per API call in flight
}

var _ providers.Provider = (*Provider)(nil)

// Permissions lists the IAM actions the provider calls, sorted. Claim needs
// all of them; Owner needs the two Describe actions on addresses and route
// tables. The instance identity comes from IMDS, which needs no IAM action.
func Permissions() []string {
	return []string{
		"ec2:AssignPrivateIpAddresses",
		"ec2:AssociateAddress",
		"ec2:CreateTags",
		"ec2:DescribeAddresses",
		"ec2:DescribeNetworkInterfaces",
		"ec2:DescribeRouteTables",
		"ec2:ReplaceRoute",
	}
}

// Factory builds the provider of node from Settings (or *Settings), for
// providers.Registry.
func Factory(ctx context.Context, node string, settings any) (providers.Provider, error) {
	switch s := settings.(type) {
	case Settings:
		return New(ctx, node, s)
	case *Settings:
		if s == nil {
			return nil, errors.New("aws provider: nil settings")
		}
		return New(ctx, node, *s)
	}
	return nil, fmt.Errorf("aws provider: settings are %T, want aws.Settings", settings)
}

// New builds the provider of node. Unless the settings name them, it reads
// the instance, its primary network interface and the region from IMDSv2.
func New(ctx context.Context, node string, s Settings) (*Provider, error) {
	if !nodeIDRe.MatchString(node) {
		return nil, fmt.Errorf("aws provider: node ID %q must be 1-128 characters from A-Z a-z 0-9 + - . _ : / @", node)
	}
	t, err := s.tuning()
	if err != nil {
		return nil, err
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc := httpClient(s.HTTPClient, t)
	self, err := resolveIdentity(ctx, s, hc, t)
	if err != nil {
		return nil, fmt.Errorf("aws provider for node %s: %w", node, err)
	}
	cfg, err := sdkConfig(ctx, s, self.region, hc)
	if err != nil {
		return nil, fmt.Errorf("aws provider for node %s: loading the SDK configuration: %w", node, err)
	}
	client := ec2.NewFromConfig(cfg, func(o *ec2.Options) {
		if s.Endpoint != "" {
			o.BaseEndpoint = sdkaws.String(s.Endpoint)
		}
		o.Retryer = newRetryer(t)
	})
	// Settings.Validate checked endpoint; the SDK also takes one from
	// AWS_ENDPOINT_URL(_EC2) or the shared config's endpoint_url, which
	// must not send the session token in clear either.
	if ep := client.Options().BaseEndpoint; ep != nil && !strings.HasPrefix(strings.ToLower(*ep), "https://") {
		return nil, fmt.Errorf("aws provider for node %s: the EC2 endpoint %q (from AWS_ENDPOINT_URL or the shared config's endpoint_url) is not https: API requests carry the credentials' session token", node, *ep)
	}
	log = log.With("provider", "aws", "node", node)
	log.Info("aws provider ready", "instance", self.instanceID, "eni", self.eni, "region", self.region)
	return newProvider(node, self, client, t, log), nil
}

func newProvider(node string, self identity, client ec2API, t tuning, log *slog.Logger) *Provider {
	return &Provider{node: node, self: self, ec2: client, t: t, log: log, sem: make(chan struct{}, t.maxParallel)}
}

// httpClient returns the client for API and IMDS calls, with the
// per-attempt timeout: a copy of the caller's (which stays as it was), or
// the SDK's buildable client, which the SDK configuration can still extend
// (a CA bundle from AWS_CA_BUNDLE, for instance).
func httpClient(hc *http.Client, t tuning) sdkaws.HTTPClient {
	if hc != nil {
		c := *hc
		c.Timeout = t.attemptTimeout
		return &c
	}
	return awshttp.NewBuildableClient().WithTimeout(t.attemptTimeout).WithTransportOptions(func(tr *http.Transport) {
		// Keep a connection per parallel call: a claim is a burst, and a
		// fresh TLS handshake per call would add round trips to each phase.
		tr.MaxIdleConnsPerHost = t.maxParallel
	})
}

// sdkConfig builds the SDK configuration. With both the HTTP client and the
// credentials given (tests, the demo), nothing comes from the environment,
// so they behave the same on every machine; otherwise the SDK's default
// chain supplies credentials (environment, shared files, web identity, the
// instance role through IMDS) and settings such as a CA bundle.
func sdkConfig(ctx context.Context, s Settings, region string, hc sdkaws.HTTPClient) (sdkaws.Config, error) {
	if s.HTTPClient != nil && s.Credentials != nil {
		return sdkaws.Config{Region: region, Credentials: sdkaws.NewCredentialsCache(s.Credentials), HTTPClient: hc}, nil
	}
	opts := []func(*config.LoadOptions) error{config.WithRegion(region), config.WithHTTPClient(hc)}
	if s.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(s.Credentials))
	}
	if s.IMDSEndpoint != "" {
		// The instance role's credentials come from the same IMDS.
		opts = append(opts, config.WithEC2IMDSEndpoint(s.IMDSEndpoint))
	}
	return config.LoadDefaultConfig(ctx, opts...)
}

// call runs one API call in a parallel slot.
func (p *Provider) call(ctx context.Context, fn func(context.Context) error) error {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waiting for an API call slot: %w", ctx.Err())
	}
	defer func() { <-p.sem }()
	return fn(ctx)
}

// Owner reports who holds r: the node and term of the claim recorded on it,
// with the node left empty when the resource no longer points at the
// interface that claim moved it to.
func (p *Provider) Owner(ctx context.Context, r providers.Resource) (providers.Holder, error) {
	switch r.Kind {
	case KindEIP:
		var out *ec2.DescribeAddressesOutput
		err := p.call(ctx, func(ctx context.Context) error {
			var err error
			out, err = p.ec2.DescribeAddresses(ctx, &ec2.DescribeAddressesInput{AllocationIds: []string{r.ID}})
			return err
		})
		if err != nil {
			return providers.Holder{}, fmt.Errorf("describing eip %s: %w", r.ID, translate(ctx, err))
		}
		for _, a := range out.Addresses {
			if deref(a.AllocationId) != r.ID {
				continue
			}
			eni := deref(a.NetworkInterfaceId)
			target := ""
			if eni != "" {
				target = eni + "/" + deref(a.PrivateIpAddress)
			}
			return eipFence(a.Tags).holder(target, eni), nil
		}
		return providers.Holder{}, fmt.Errorf("describing eip %s: not in the answer: %w", r.ID, providers.ErrNotFound)
	case KindRoute:
		table, dest, err := parseRouteID(r.ID)
		if err != nil {
			return providers.Holder{}, err
		}
		var out *ec2.DescribeRouteTablesOutput
		err = p.call(ctx, func(ctx context.Context) error {
			var err error
			out, err = p.ec2.DescribeRouteTables(ctx, &ec2.DescribeRouteTablesInput{RouteTableIds: []string{table}})
			return err
		})
		if err != nil {
			return providers.Holder{}, fmt.Errorf("describing route table %s: %w", table, translate(ctx, err))
		}
		for _, rt := range out.RouteTables {
			if deref(rt.RouteTableId) != table {
				continue
			}
			route, ok := findRoute(rt.Routes, dest)
			if !ok {
				return providers.Holder{}, fmt.Errorf("route table %s has no route for %s: %w", table, dest, providers.ErrNotFound)
			}
			eni := deref(route.NetworkInterfaceId)
			return routeFence(rt.Tags, dest).holder(routeTarget(route), eni), nil
		}
		return providers.Holder{}, fmt.Errorf("describing route table %s: not in the answer: %w", table, providers.ErrNotFound)
	}
	return providers.Holder{}, unsupportedKind(r)
}

func unsupportedKind(r providers.Resource) error {
	return fmt.Errorf("aws provider: resource %s: unsupported kind %q (want %q or %q)", r, r.Kind, KindEIP, KindRoute)
}

// parseRouteID splits "rtb-0abc|10.0.0.0/16".
func parseRouteID(id string) (string, netip.Prefix, error) {
	table, cidr, ok := strings.Cut(id, "|")
	if !ok || !strings.HasPrefix(table, "rtb-") {
		return "", netip.Prefix{}, fmt.Errorf("aws provider: route %q: want \"rtb-<id>|<destination CIDR>\"", id)
	}
	dest, err := netip.ParsePrefix(cidr)
	if err != nil {
		return "", netip.Prefix{}, fmt.Errorf("aws provider: route %q: destination: %w", id, err)
	}
	if dest != dest.Masked() {
		return "", netip.Prefix{}, fmt.Errorf("aws provider: route %q: destination has host bits set (want %s)", id, dest.Masked())
	}
	return table, dest, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
