package aws

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/emulator"
)

// Fleet sizes an emulated deployment.
type Fleet struct {
	// EIPs is the number of Elastic IPs, each with its own VIP. Default 2.
	EIPs int
	// Routes is the number of routes, spread round-robin over Tables route
	// tables. Defaults 2 and 2.
	Routes, Tables int
}

// Fixture is an emulated AWS deployment: one instance per node in one
// subnet, Elastic IPs associated with VIPs on the first node, and route
// tables whose routes point at the first node, as after a first election.
type Fixture struct {
	Emulator *emulator.Emulator
	// Resources are the floating resources, Elastic IPs first.
	Resources []providers.Resource
	// Instances maps node ID to instance ID; ENIs maps node ID to its
	// network interface.
	Instances, ENIs map[string]string
	// VIPs maps each allocation ID to its private IP.
	VIPs map[string]string

	metadata map[string]*emulator.AWSMetadataServer
	client   *http.Client // shared by the fixture's providers
	closer   sync.Once
}

// Addresses of the emulated VPC. They come from the documentation and
// benchmarking ranges, like the lab's: the VPC is 198.18.0.0/16, gateways
// sit in 198.18.1.0/24, VIPs in 198.18.2.100 and up, Elastic IPs in
// 203.0.113.100 and up, routed destinations are 198.51.100.0/24 and /28s
// of 198.19.0.0/16.
const (
	fixtureVPC    = "vpc-0handoff00000001"
	fixtureSubnet = "subnet-0handoff000001"
	fixtureRegion = "eu-west-1"
)

// EmulatorFixture seeds a small fleet (two Elastic IPs and two routes in two
// tables) for nodes on em and starts their metadata servers.
func EmulatorFixture(ctx context.Context, em *emulator.Emulator, nodes []string) (*Fixture, error) {
	return EmulatorFleet(ctx, em, nodes, Fleet{})
}

// EmulatorFleet seeds a fleet of the given size for nodes on em.
func EmulatorFleet(ctx context.Context, em *emulator.Emulator, nodes []string, size Fleet) (*Fixture, error) {
	if size.EIPs == 0 {
		size.EIPs = 2
	}
	if size.Routes == 0 {
		size.Routes = 2
	}
	if size.Tables == 0 {
		size.Tables = 2
	}
	switch {
	case len(nodes) == 0 || len(nodes) > 50:
		return nil, fmt.Errorf("aws fixture: want 1 to 50 nodes, have %d", len(nodes))
	case size.EIPs < 0 || size.EIPs > 100:
		return nil, fmt.Errorf("aws fixture: want 0 to 100 Elastic IPs, have %d", size.EIPs)
	case size.Routes < 0 || size.Routes > 4000 || size.Tables < 1 || size.Tables > 200:
		return nil, fmt.Errorf("aws fixture: %d routes over %d tables is out of range", size.Routes, size.Tables)
	case size.Routes/size.Tables >= 50:
		return nil, fmt.Errorf("aws fixture: %d routes over %d tables exceeds EC2's 50 tags per table", size.Routes, size.Tables)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("aws fixture: %w", err)
	}
	aws := em.AWS
	fx := &Fixture{
		Emulator: em, Instances: make(map[string]string), ENIs: make(map[string]string),
		VIPs: make(map[string]string), metadata: make(map[string]*emulator.AWSMetadataServer),
		client: em.HTTPClient(),
	}
	for i, node := range nodes {
		inst := fmt.Sprintf("i-0%016x", 0xa0000+i)
		eni := fmt.Sprintf("eni-0%016x", 0xa0000+i)
		err := aws.AddInstance(emulator.AWSInstance{
			ID: inst, Region: fixtureRegion, AvailabilityZone: fixtureRegion + "a",
			NetworkInterfaceID: eni, MAC: fmt.Sprintf("0e:48:00:00:%02x:%02x", i>>8, i&0xff),
			VPCID: fixtureVPC, SubnetID: fixtureSubnet, SubnetCIDR: "198.18.0.0/16",
			PrivateIP: fmt.Sprintf("198.18.1.%d", 11+i),
		})
		if err != nil {
			return nil, fmt.Errorf("aws fixture: node %s: %w", node, err)
		}
		fx.Instances[node], fx.ENIs[node] = inst, eni
	}
	first := fx.ENIs[nodes[0]]
	for i := range size.EIPs {
		alloc := fmt.Sprintf("eipalloc-0%016x", 0xe1000+i)
		vip := netip.AddrFrom4([4]byte{198, 18, 2, 100 + byte(i)}).String()
		public := netip.AddrFrom4([4]byte{203, 0, 113, 100 + byte(i)}).String()
		if err := aws.AddAddress(alloc, public); err != nil {
			return nil, fmt.Errorf("aws fixture: %w", err)
		}
		if err := aws.AssignPrivateIP(first, vip); err != nil {
			return nil, fmt.Errorf("aws fixture: %w", err)
		}
		if err := aws.Associate(alloc, first, vip); err != nil {
			return nil, fmt.Errorf("aws fixture: %w", err)
		}
		fx.VIPs[alloc] = vip
		fx.Resources = append(fx.Resources, providers.Resource{Kind: KindEIP, ID: alloc})
	}
	tables := make([]string, size.Tables)
	for i := range tables {
		tables[i] = fmt.Sprintf("rtb-0%016x", 0xb0000+i)
		if err := aws.AddRouteTable(tables[i], fixtureVPC, "198.18.0.0/16"); err != nil {
			return nil, fmt.Errorf("aws fixture: %w", err)
		}
	}
	for i := range size.Routes {
		table := tables[i%size.Tables]
		// Peer networks behind the tunnels: the lab client's inner net
		// first in every table, then /28s carved from 198.19.0.0/16.
		n := i / size.Tables
		dest := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(n / 16), byte(n%16) * 16}), 28)
		if n == 0 {
			dest = netip.MustParsePrefix("198.51.100.0/24")
		}
		if err := aws.AddRoute(table, dest.String(), first); err != nil {
			return nil, fmt.Errorf("aws fixture: %w", err)
		}
		fx.Resources = append(fx.Resources, providers.Resource{Kind: KindRoute, ID: table + "|" + dest.String()})
	}
	for _, node := range nodes {
		md, err := aws.MetadataServer(fx.Instances[node])
		if err != nil {
			return nil, errors.Join(fmt.Errorf("aws fixture: %w", err), fx.Close())
		}
		fx.metadata[node] = md
	}
	return fx, nil
}

// Settings returns the settings of node's provider: the real SDK pointed
// at the emulator's EC2 endpoint and at the node's own IMDS, with static
// test credentials (the emulator does not check signatures).
func (fx *Fixture) Settings(node string) (Settings, error) {
	md, ok := fx.metadata[node]
	if !ok {
		return Settings{}, fmt.Errorf("aws fixture: unknown node %q", node)
	}
	return Settings{
		Endpoint:      fx.Emulator.URL(),
		IMDSEndpoint:  md.URL(),
		EIPPrivateIPs: fx.VIPs,
		HTTPClient:    fx.client,
		Credentials:   credentials.NewStaticCredentialsProvider("AKIDHANDOFFEMULATOR", "emulator-secret-not-a-real-key", ""),
	}, nil
}

// NewProvider builds node's provider through the real SDK.
func (fx *Fixture) NewProvider(node string) (providers.Provider, error) {
	s, err := fx.Settings(node)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return New(ctx, node, s)
}

// Close stops the metadata servers and drops the providers' idle
// connections (so the emulator, which belongs to the caller, shuts down at
// once); it is safe to call twice.
func (fx *Fixture) Close() error {
	var errs []error
	fx.closer.Do(func() {
		fx.client.CloseIdleConnections()
		for _, md := range fx.metadata {
			errs = append(errs, md.Close())
		}
	})
	return errors.Join(errs...)
}
