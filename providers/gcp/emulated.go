package gcp

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/emulator"
)

// Fixture is a small GCE fleet seeded in the emulator: one VM per node
// (alternating between two zones of one region, as an HA pair would be),
// a target instance per VM, and one floating resource of each kind. The
// demo and the conformance tests build their providers from it, through
// the real SDK clients pointed at the emulator.
type Fixture struct {
	Project, Region string
	// Nodes in the order given; Instances and Zones map each to its VM.
	Nodes     []string
	Instances map[string]string
	Zones     map[string]string
	// Resources holds one of each kind: the protocol-forwarding rule, the
	// alias IP range and the route.
	Resources []providers.Resource
	// Tune, if set, adjusts each node's settings before NewProvider builds
	// it (tests shorten timeouts with it).
	Tune func(node string, s *Settings)

	em *emulator.Emulator

	mu        sync.Mutex // guards the following fields
	metadata  map[string]string
	stops     []func() error
	providers []*Provider
	closed    bool
}

const (
	fixtureProject = "handoff-demo"
	fixtureRegion  = "us-central1"
	// FixtureForwardingRule is the forwarding rule of the external VIP.
	FixtureForwardingRule = "fr-vpn"
	// FixtureExternalIP is the address the forwarding rule carries.
	FixtureExternalIP = "203.0.113.100"
	// FixtureAlias is the alias IP range gateways terminate on inside.
	FixtureAlias = "10.128.0.100/32"
	// FixtureRoute sends the remote sites' network to the active gateway.
	FixtureRoute = "vpc/198.51.100.0/24"
)

// EmulatorFixture seeds the fleet for nodes in em and starts one metadata
// server per node. Close stops them.
func EmulatorFixture(ctx context.Context, em *emulator.Emulator, nodes []string) (*Fixture, error) {
	if len(nodes) == 0 {
		return nil, errors.New("gcp emulator fixture: no nodes")
	}
	f := &Fixture{
		Project: fixtureProject, Region: fixtureRegion, Nodes: append([]string(nil), nodes...),
		Instances: make(map[string]string), Zones: make(map[string]string),
		Resources: []providers.Resource{
			{Kind: KindForwardingRule, ID: FixtureForwardingRule},
			{Kind: KindAliasIP, ID: FixtureAlias},
			{Kind: KindRoute, ID: FixtureRoute},
		},
		em: em, metadata: make(map[string]string),
	}
	for i, n := range nodes {
		if !nodeRE.MatchString(n) {
			return nil, fmt.Errorf("gcp emulator fixture: node ID %q cannot be written into GCE labels", n)
		}
		f.Instances[n] = "gw-" + strings.ReplaceAll(n, "_", "-")
		f.Zones[n] = fixtureRegion + "-" + string(rune('a'+i%2))
	}
	f.Seed()
	for i, n := range nodes {
		if err := ctx.Err(); err != nil {
			return nil, errors.Join(err, f.Close())
		}
		url, stop, err := em.GCP.MetadataServer(f.Project, f.Zones[n], f.Instances[n])
		if err != nil {
			return nil, errors.Join(fmt.Errorf("gcp emulator fixture: node %s (#%d): %w", n, i, err), f.Close())
		}
		f.mu.Lock()
		f.metadata[n] = url
		f.stops = append(f.stops, stop)
		f.mu.Unlock()
	}
	return f, nil
}

// Seed (re)creates the fleet in the emulator, dropping every earlier GCP
// resource and label: a clean slate for a test.
func (f *Fixture) Seed() {
	g := f.em.GCP
	g.Reset()
	for i, n := range f.Nodes {
		g.AddInstance(emulator.GCPInstance{
			Project: f.Project, Zone: f.Zones[n], Name: f.Instances[n],
			Network: "vpc", Subnetwork: "gateways", IP: fmt.Sprintf("10.128.0.%d", 10+i),
		})
		g.AddTargetInstance(f.Project, f.Zones[n], f.Instances[n], f.Instances[n])
	}
	// GCE wants a target on every rule: it starts on the last node's VM,
	// as if that one had been active before Handoff took over.
	last := f.Nodes[len(f.Nodes)-1]
	g.AddForwardingRule(f.Project, f.Region, FixtureForwardingRule, FixtureExternalIP,
		"zones/"+f.Zones[last]+"/targetInstances/"+f.Instances[last])
}

// NewProvider builds node's provider through the real SDK clients pointed
// at the emulator, with identity from the node's metadata server.
func (f *Fixture) NewProvider(node string) (providers.Provider, error) {
	f.mu.Lock()
	md, ok := f.metadata[node]
	closed := f.closed
	f.mu.Unlock()
	if !ok || closed {
		return nil, fmt.Errorf("gcp emulator fixture: no node %q (or the fixture is closed)", node)
	}
	zones := []string{fixtureRegion + "-a", fixtureRegion + "-b"}
	s := Settings{
		Endpoint: f.em.URL(), MetadataURL: md, HTTPClient: f.em.HTTPClient(),
		AliasZones: zones, CallTimeout: "2s", OperationTimeout: "10s",
		BackoffBase: "20ms", BackoffMax: "200ms",
	}
	if f.Tune != nil {
		f.Tune(node, &s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := New(ctx, node, s)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.providers = append(f.providers, p)
	f.mu.Unlock()
	return p, nil
}

// Close stops the metadata servers and closes the providers the fixture
// built; it is safe to call twice.
func (f *Fixture) Close() error {
	f.mu.Lock()
	stops, ps := f.stops, f.providers
	f.stops, f.providers, f.closed = nil, nil, true
	f.mu.Unlock()
	var errs []error
	for _, p := range ps {
		errs = append(errs, p.Close())
	}
	for _, stop := range stops {
		errs = append(errs, stop())
	}
	return errors.Join(errs...)
}
