package azure

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/emulator"
)

// EmulatorCredential is the credential for the built-in emulator: a fixed
// bearer token (the emulator only checks that one is sent, over HTTPS as
// the SDK insists). It is useless against Azure.
func EmulatorCredential() azcore.TokenCredential { return emulatorToken{} }

type emulatorToken struct{}

func (emulatorToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "handoff-emulator-token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// Fixture names of the emulated fleet.
const (
	FixtureSubscription  = "5e1f0000-0000-4000-8000-00000000a2e0"
	FixtureResourceGroup = "handoff-demo"
	fixtureLocation      = "westeurope"
	fixtureVNet          = "handoff-vnet"
	fixtureSubnet        = "gateways"
)

// FixtureNode is one emulated gateway VM.
type FixtureNode struct {
	NICID, IPConfigurationID, PrivateIP string
	// MetadataURL is the node's own IMDS listener.
	MetadataURL string
}

// Fixture is a small Azure fleet seeded in the emulator: one VM per node
// (NIC "gw-NODE-nic", private IP 198.18.10.x), a public IP and two route
// tables whose routes to the VPN clients' network point at the first node,
// as an operator would have set them up before Handoff took over.
type Fixture struct {
	Emulator *emulator.Emulator
	// Resources lists every floating resource: Routes[0], PublicIP, Routes[1].
	Resources []providers.Resource
	Routes    []providers.Resource
	PublicIP  providers.Resource
	// PublicIPID and RouteTableIDs are the ARM IDs behind them.
	PublicIPID    string
	RouteTableIDs []string
	RouteName     string
	Nodes         map[string]FixtureNode
	// Logger, if set before NewProvider, receives the providers' logs.
	Logger *slog.Logger

	stops []func() error
	once  sync.Once
}

// EmulatorFixture seeds the fleet for nodes in em and starts one metadata
// listener per node. Close stops them.
func EmulatorFixture(ctx context.Context, em *emulator.Emulator, nodes []string) (*Fixture, error) {
	if len(nodes) == 0 || len(nodes) > 200 {
		return nil, fmt.Errorf("azure emulator fixture: want 1..200 nodes, have %d", len(nodes))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	az := em.Azure
	subnet := "/subscriptions/" + FixtureSubscription + "/resourceGroups/" + FixtureResourceGroup +
		"/providers/Microsoft.Network/virtualNetworks/" + fixtureVNet + "/subnets/" + fixtureSubnet
	f := &Fixture{Emulator: em, Nodes: make(map[string]FixtureNode), RouteName: "to-vpn-clients"}
	fail := func(err error) (*Fixture, error) {
		_ = f.Close()
		return nil, fmt.Errorf("azure emulator fixture: %w", err)
	}
	for i, node := range nodes {
		name := "gw-" + node
		ip := fmt.Sprintf("198.18.10.%d", 10+i)
		if err := az.AddVM(emulator.AzureVM{
			Node: node, Subscription: FixtureSubscription, ResourceGroup: FixtureResourceGroup, Location: fixtureLocation,
			Name: name, NIC: name + "-nic", IPConfiguration: "ipconfig1", PrivateIP: ip, Subnet: subnet,
		}); err != nil {
			return fail(err)
		}
		nic := emulator.AzureNICID(FixtureSubscription, FixtureResourceGroup, name+"-nic")
		url, stop, err := az.MetadataServer(node)
		if err != nil {
			return fail(err)
		}
		f.stops = append(f.stops, stop)
		f.Nodes[node] = FixtureNode{NICID: nic, IPConfigurationID: nic + "/ipConfigurations/ipconfig1", PrivateIP: ip, MetadataURL: url}
	}
	first := f.Nodes[nodes[0]]
	pip, err := az.AddPublicIP(emulator.AzurePublicIP{
		Subscription: FixtureSubscription, ResourceGroup: FixtureResourceGroup, Location: fixtureLocation,
		Name: "handoff-vip", Address: "203.0.113.100",
	})
	if err != nil {
		return fail(err)
	}
	if err := az.AttachPublicIP(pip, first.NICID, "ipconfig1"); err != nil {
		return fail(err)
	}
	f.PublicIPID = pip
	f.PublicIP = providers.Resource{Kind: KindPublicIP, ID: "handoff-vip"}
	for _, table := range []string{"rt-inside", "rt-spoke"} {
		id, err := az.AddRouteTable(emulator.AzureRouteTable{
			Subscription: FixtureSubscription, ResourceGroup: FixtureResourceGroup, Location: fixtureLocation, Name: table,
			Routes: []emulator.AzureRoute{
				{Name: "to-internet", AddressPrefix: "0.0.0.0/0"},
				{Name: f.RouteName, AddressPrefix: "198.51.100.0/24", NextHopIP: first.PrivateIP},
			},
		})
		if err != nil {
			return fail(err)
		}
		f.RouteTableIDs = append(f.RouteTableIDs, id)
		f.Routes = append(f.Routes, providers.Resource{Kind: KindRoute, ID: table + "/" + f.RouteName})
	}
	f.Resources = []providers.Resource{f.Routes[0], f.PublicIP, f.Routes[1]}
	return f, nil
}

// Settings returns the settings that point node's provider at the
// emulator: its own metadata listener for identity, the emulator's ARM
// endpoint and certificate, and short timings so tests stay fast.
func (f *Fixture) Settings(node string) Settings {
	return Settings{
		MetadataEndpoint: f.Nodes[node].MetadataURL,
		Endpoint:         f.Emulator.URL(),
		Audience:         "https://management.emulator.handoff",
		HTTPClient:       f.Emulator.HTTPClient(),
		TokenCredential:  EmulatorCredential(),
		CallTimeout:      "2s",
		MaxAttempts:      5,
		BackoffBase:      "10ms",
		BackoffMax:       "200ms",
		PollInterval:     "10ms",
		OperationTimeout: "20s",
		Logger:           f.Logger,
	}
}

// NewProvider builds node's provider through Factory, the real SDK
// clients pointed at the emulator.
func (f *Fixture) NewProvider(node string) (providers.Provider, error) {
	if _, ok := f.Nodes[node]; !ok {
		return nil, fmt.Errorf("azure emulator fixture: unknown node %q", node)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Factory(ctx, node, f.Settings(node))
}

// Close stops the metadata listeners; it is safe to call twice.
func (f *Fixture) Close() error {
	var errs []error
	f.once.Do(func() {
		for _, stop := range f.stops {
			errs = append(errs, stop())
		}
	})
	return errors.Join(errs...)
}
