package hostlab

import (
	"context"
	"fmt"
	"net/netip"
)

// Addresses of the standard site (documentation and benchmarking ranges
// only).
var (
	// GatewayOuter is the gateway's outside address, where IKE listens.
	GatewayOuter = netip.MustParseAddr("203.0.113.1")
	// ClientOuter is the client's outside address.
	ClientOuter = netip.MustParseAddr("203.0.113.2")
	// ClientInner is the client's protected address (on its lo: the host
	// kernel has no dummy link type).
	ClientInner = netip.MustParseAddr("198.51.100.10")
	// GatewayInner is the gateway's address on the protected network.
	GatewayInner = netip.MustParseAddr("198.18.1.1")
	// InsideHost is a host on the protected network behind the gateway.
	InsideHost = netip.MustParseAddr("198.18.1.10")
	// InsideNet is the gateway's protected network.
	InsideNet = netip.MustParsePrefix("198.18.1.0/24")
	// ClientNet is the range clients' protected addresses come from.
	ClientNet = netip.MustParsePrefix("198.51.100.0/24")
)

// PSK is the pre-shared key of the standard site. Lab only.
const PSK = "handoff-hostlab-psk-not-a-secret"

// Site is the standard lab: a client and a gateway on an outside link, and a
// host behind the gateway on the inside link.
//
//	client 203.0.113.2 (inner 198.51.100.10 on lo)
//	   | out
//	gw 203.0.113.1 / 198.18.1.1
//	   | in
//	inside 198.18.1.10 (default via 198.18.1.1)
type Site struct {
	Client, Gateway, Inside *Netns
}

// NewSite builds the standard site's namespaces and links, without charon.
func (l *Lab) NewSite() *Site {
	l.t.Helper()
	s := &Site{Client: l.Netns("client"), Gateway: l.Netns("gw"), Inside: l.Netns("inside")}
	l.Veth(s.Client, "out0", ClientOuter.String()+"/24", s.Gateway, "out0", GatewayOuter.String()+"/24")
	l.Veth(s.Gateway, "in0", GatewayInner.String()+"/24", s.Inside, "in0", InsideHost.String()+"/24")
	s.Client.IP("addr", "add", ClientInner.String()+"/32", "dev", "lo")
	s.Inside.IP("route", "add", "default", "via", GatewayInner.String())
	s.Gateway.Sysctl("net.ipv4.ip_forward", "1")
	s.Gateway.Sysctl("net.ipv4.conf.all.rp_filter", "0")
	return s
}

// GatewaySwanctl is the responder's swanctl.conf: PSK, IKEv2,
// aes128gcm16-prfsha256-ecp256, the inside network for any client in
// ClientNet.
func GatewaySwanctl() string {
	return fmt.Sprintf(`connections {
	gw {
		version = 2
		local_addrs = %s
		remote_addrs = %%any
		proposals = aes128gcm16-prfsha256-ecp256
		mobike = no
		local {
			auth = psk
			id = gw.handoff.test
		}
		remote {
			auth = psk
		}
		children {
			gw {
				local_ts = %s
				remote_ts = %s
				esp_proposals = aes128gcm16
			}
		}
	}
}
secrets {
	ike-lab {
		secret = "%s"
	}
}
`, GatewayOuter, InsideNet, ClientNet, PSK)
}

// ClientSwanctl is the initiator's swanctl.conf: connection and child
// "client" from ClientInner to InsideNet, UDP-encapsulated, DPD every
// dpdDelay (a string such as "30s"); it is started with Charon.Initiate.
func ClientSwanctl(dpdDelay string) string {
	return fmt.Sprintf(`connections {
	client {
		version = 2
		local_addrs = %s
		remote_addrs = %s
		proposals = aes128gcm16-prfsha256-ecp256
		mobike = no
		encap = yes
		dpd_delay = %s
		keyingtries = 1
		local {
			auth = psk
			id = client.handoff.test
		}
		remote {
			auth = psk
			id = gw.handoff.test
		}
		children {
			client {
				local_ts = %s/32
				remote_ts = %s
				esp_proposals = aes128gcm16
				start_action = none
			}
		}
	}
}
secrets {
	ike-lab {
		secret = "%s"
	}
}
`, ClientOuter, GatewayOuter, dpdDelay, ClientInner, InsideNet, PSK)
}

// HASite is a client and two gateways on one bridge, for IKE continuity:
// the gateway address GatewayOuter starts on Gateways[0] and moves at a
// takeover (MoveGatewayAddress); Gateways[1] has 203.0.113.3. Each gateway
// has GatewayInner on lo (charon's userspace ESP routes a CHILD_SA from
// an address inside its selector).
//
//	client 203.0.113.2 on br0 (inner 198.51.100.10 on lo)
//	  ├─ gw1 203.0.113.1
//	  └─ gw2 203.0.113.3
type HASite struct {
	Client   *Netns
	Gateways [2]*Netns
}

// NewHASite builds the namespaces and links, without charon.
func (l *Lab) NewHASite() *HASite {
	l.t.Helper()
	s := &HASite{Client: l.Netns("client"), Gateways: [2]*Netns{l.Netns("gw1"), l.Netns("gw2")}}
	s.Client.IP("link", "add", "br0", "type", "bridge")
	s.Client.IP("addr", "add", ClientOuter.String()+"/24", "dev", "br0")
	s.Client.IP("link", "set", "br0", "up")
	s.Client.IP("addr", "add", ClientInner.String()+"/32", "dev", "lo")
	l.Veth(s.Gateways[0], "out0", GatewayOuter.String()+"/24", s.Client, "p1", "")
	l.Veth(s.Gateways[1], "out0", "203.0.113.3/24", s.Client, "p2", "")
	for _, p := range []string{"p1", "p2"} {
		s.Client.IP("link", "set", p, "master", "br0")
	}
	for _, g := range s.Gateways {
		g.IP("addr", "add", GatewayInner.String()+"/32", "dev", "lo")
	}
	return s
}

// MoveGatewayAddress moves GatewayOuter to gateway to (0 or 1) and makes
// the client forget the old neighbour entry, as a gratuitous ARP would.
func (s *HASite) MoveGatewayAddress(to int) error {
	ctx := context.Background()
	from := s.Gateways[1-to]
	// Not there any more is fine: moving is idempotent.
	_, _ = run(ctx, "ip", "-n", from.name, "addr", "del", GatewayOuter.String()+"/24", "dev", "out0")
	if out, err := run(ctx, "ip", "-n", s.Gateways[to].name, "addr", "replace", GatewayOuter.String()+"/24", "dev", "out0"); err != nil {
		return fmt.Errorf("moving %s to %s: %w: %s", GatewayOuter, s.Gateways[to].Tag, err, out)
	}
	if out, err := run(ctx, "ip", "-n", s.Client.name, "neigh", "flush", "dev", "br0"); err != nil {
		return fmt.Errorf("flushing the client's neighbours: %w: %s", err, out)
	}
	return nil
}

// HASettings load the ha plugin into a gateway charon as docs/ipsec.md
// tells operators to: its peer is Handoff on 127.0.0.2, one segment, no
// monitor (Handoff decides who is active), resync on (charon's restart
// signal), no FIFO (Handoff drives segments over the channel).
var HASettings = fmt.Sprintf(`	load = %s ha
	plugins {
		ha {
			local = 127.0.0.1
			remote = 127.0.0.2
			segment_count = 1
			monitor = no
			resync = yes
			autobalance = 0
			fifo_interface = no
		}
	}`, Plugins)
