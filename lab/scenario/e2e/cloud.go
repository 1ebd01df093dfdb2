package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/lab/topo"
	"github.com/handoffvpn/handoff/providers/emulator"
)

// The lab's emulated AWS account: one instance per gateway in one subnet
// (the outside segment), the VIP a secondary private IP with an Elastic IP
// associated, and the protected subnet's route table sending the client's
// net to the active gateway.
const (
	awsRegion     = "eu-west-1"
	awsVPC        = "vpc-0ab00000000000001"
	awsSubnet     = "subnet-0ab00000000000001"
	awsAllocation = "eipalloc-0ab00000000000001"
	// awsPublicIP is the Elastic IP's public address (a model value: the
	// lab's client talks to the private VIP, see fabric).
	awsPublicIP  = "192.0.2.100"
	awsRouteTbl  = "rtb-0ab00000000000001"
	awsAPIPort   = 8443
	awsIMDSAddr  = "169.254.169.254"
	awsAccessKey = "AKIDHANDOFFLAB000001"
)

func awsInstance(i int) string { return fmt.Sprintf("i-0ab%014x", i+1) }
func awsENI(i int) string      { return fmt.Sprintf("eni-0ab%014x", i+1) }

// fabric is the lab's stand-in for the cloud's network: what EC2's data
// plane does when the API moves the VIP or a route. The emulator's model
// says which network interface holds the VIP's private IP and where the
// route table sends the client's net; the fabric steers the lab's packets
// there on every change (OnChange), before the API call is answered:
//
//   - the client's neighbour entry for the VIP (permanent) points at the
//     holder's MAC, as the VPC delivers a private IP's traffic to the
//     interface it is assigned to (no ARP on the gateways' side: every
//     gateway has the VIP on lo, and arp_ignore keeps them silent);
//   - the protected host's route to the client's net goes via the inside
//     address of the gateway the route table names.
//
// The Elastic IP's 1:1 NAT itself (public to private address) is not
// rendered: the client addresses the private VIP directly. What a failover
// changes in EC2 is where that private IP is delivered, which is what the
// fabric reproduces; the rewrite is the same before and after, and charon
// copes with it through NAT-T (the lab's profile encapsulates anyway).
type fabric struct {
	em     *emulator.Emulator
	client *topo.Node
	inside *topo.Node
	gws    []*topo.Node
	macs   []net.HardwareAddr
	log    *slog.Logger
	imds   []*emulator.AWSMetadataServer

	gains

	mu    sync.Mutex // guards the following fields
	vipAt int        // gateway index the VIP is delivered to, -1 none
	rtAt  int        // gateway index the route sends the client's net to
	errs  []error
}

// startFabric starts the emulator, seeds the account, serves the EC2 API
// (https://127.0.0.1:8443) and each instance's IMDS (169.254.169.254:80)
// inside every gateway's namespace, puts the VIP on every gateway's lo and
// steers traffic to gw1, the VIP's first holder. caFile receives the
// emulator's certificate for the agents' AWS_CA_BUNDLE.
func startFabric(s *topo.Topology, caFile string, log *slog.Logger) (_ *fabric, err error) {
	em, err := emulator.New(emulator.Options{Addr: "127.0.0.1:0", Logger: log})
	if err != nil {
		return nil, err
	}
	f := &fabric{em: em, client: s.Client, inside: s.Inside, gws: s.Gateways, log: log, vipAt: -1, rtAt: -1}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if err := os.WriteFile(caFile, em.CertPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("writing the emulator's certificate: %w", err)
	}
	vip := netip.MustParseAddr(topo.VIPOuter)
	for i, gw := range s.Gateways {
		link, err := gw.Netlink().LinkByName(topo.OuterIf)
		if err != nil {
			return nil, fmt.Errorf("finding %s in %s: %w", topo.OuterIf, gw.Name, err)
		}
		mac := link.Attrs().HardwareAddr
		f.macs = append(f.macs, mac)
		if err := em.AWS.AddInstance(emulator.AWSInstance{
			ID: awsInstance(i), Region: awsRegion, NetworkInterfaceID: awsENI(i), MAC: mac.String(),
			VPCID: awsVPC, SubnetID: awsSubnet, SubnetCIDR: topo.OuterNet, PrivateIP: topo.GatewayOuter(i + 1).String(),
		}); err != nil {
			return nil, err
		}
		// Every gateway terminates on the VIP; only the one the fabric
		// delivers to receives anything.
		if err := gw.AddAddr("lo", netip.PrefixFrom(vip, 32)); err != nil {
			return nil, err
		}
		if err := gw.AddAddr("lo", netip.MustParsePrefix(awsIMDSAddr+"/32")); err != nil {
			return nil, err
		}
		var api, md net.Listener
		err = gw.Do(func() error {
			var err error
			if api, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", awsAPIPort)); err != nil {
				return err
			}
			md, err = net.Listen("tcp", awsIMDSAddr+":80")
			return err
		})
		if err != nil {
			if api != nil {
				api.Close()
			}
			return nil, fmt.Errorf("listening for the cloud in %s: %w", gw.Name, err)
		}
		em.Serve(api)
		m, err := em.AWS.MetadataServerOn(awsInstance(i), md)
		if err != nil {
			return nil, err
		}
		f.imds = append(f.imds, m)
	}
	if err := errors.Join(
		em.AWS.AddAddress(awsAllocation, awsPublicIP),
		em.AWS.AssignPrivateIP(awsENI(0), topo.VIPOuter),
		em.AWS.Associate(awsAllocation, awsENI(0), topo.VIPOuter),
		em.AWS.AddRouteTable(awsRouteTbl, awsVPC, topo.OuterNet),
		em.AWS.AddRoute(awsRouteTbl, topo.ClientNet, awsENI(0)),
	); err != nil {
		return nil, fmt.Errorf("seeding the emulated account: %w", err)
	}
	em.AWS.OnChange(f.steer)
	f.steer()
	if err := f.Err(); err != nil {
		return nil, err
	}
	return f, nil
}

// eniIndex is the gateway index of a network interface, -1 if none.
func eniIndex(eni string) int {
	var i int
	if _, err := fmt.Sscanf(eni, "eni-0ab%014x", &i); err != nil {
		return -1
	}
	return i - 1
}

// steer makes the lab's packets follow the model. The Elastic IP follows
// its private IP from interface to interface (the emulator models that), so
// its association says where the VIP is delivered.
func (f *fabric) steer() {
	st, _ := f.em.AWS.Address(awsAllocation)
	vipAt := eniIndex(st.NetworkInterfaceID)
	rt, _ := f.em.AWS.RouteTarget(awsRouteTbl, topo.ClientNet)
	rtAt := eniIndex(rt)
	f.mu.Lock()
	defer f.mu.Unlock()
	if vipAt != f.vipAt && vipAt >= 0 {
		if err := f.client.PinNeighbor(topo.OuterIf, netip.MustParseAddr(topo.VIPOuter), f.macs[vipAt]); err != nil {
			f.errs = append(f.errs, fmt.Errorf("delivering the VIP to %s: %w", f.gws[vipAt].Name, err))
		} else {
			f.vipAt = vipAt
			f.add(f.gws[vipAt].Name, time.Now())
			f.log.Info("fabric: VIP delivered", "to", f.gws[vipAt].Name, "eip", st.PublicIP, "eni", st.NetworkInterfaceID)
		}
	}
	if rtAt != f.rtAt && rtAt >= 0 {
		if err := f.inside.RouteVia(netip.MustParsePrefix(topo.ClientNet), topo.GatewayInner(rtAt+1), topo.InnerIf); err != nil {
			f.errs = append(f.errs, fmt.Errorf("routing the client's net via %s: %w", f.gws[rtAt].Name, err))
		} else {
			f.rtAt = rtAt
			f.log.Info("fabric: route to the client's net", "via", f.gws[rtAt].Name)
		}
	}
}

// holds reports whether the fabric delivers both the VIP and the client's
// route to gateway i.
func (f *fabric) holds(i int) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.vipAt == i && f.rtAt == i, nil
}

// holdsVIP reports whether the fabric delivers the VIP to gateway i.
func (f *fabric) holdsVIP(i int) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.vipAt == i, nil
}

// Err reports what the fabric failed to steer.
func (f *fabric) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.errs...)
}

// Close stops the metadata servers and the emulator.
func (f *fabric) Close() {
	for _, m := range f.imds {
		m.Close()
	}
	f.em.Close()
}

// awsEnv is the environment of an agent using the emulated account: static
// credentials (the emulator checks only that calls are signed) and the
// emulator's certificate as the CA bundle. Everything else (instance,
// interface, region) the agent reads from its IMDS, as on EC2.
func awsEnv(caFile string) []string {
	return []string{"AWS_ACCESS_KEY_ID=" + awsAccessKey, "AWS_SECRET_ACCESS_KEY=handoff-lab-not-a-secret",
		"AWS_CA_BUNDLE=" + caFile, "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null"}
}

// awsCAFile is where the emulator's certificate goes in the scenario dir.
func awsCAFile(dir string) string { return filepath.Join(dir, "emulator-ca.pem") }
