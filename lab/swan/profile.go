package swan

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"time"
)

// The lab's IKE identities and names. Every gateway uses the same identity
// and credentials: to the client a takeover must look like the same peer.
const (
	ClientID    = "client.lab.test"
	GatewayID   = "gateway.lab.test"
	ConnName    = "lab"
	ChildName   = "lab"
	RoadWarrior = "rw"
)

// Profile is the lab's standard IKEv2 setup between the client and the
// gateways (LAB.md): IKEv2 with aes128gcm16-prfsha256-ecp256, ESP with
// aes128gcm16, no MOBIKE, the client retrying forever and restarting on
// DPD or close.
type Profile struct {
	Auth Auth
	// PSK is the pre-shared key (AuthPSK); see NewPSK.
	PSK string
	// CA, Client and Gateway are the certificates (AuthCert); see NewCerts.
	CA      *CA
	Client  *Identity
	Gateway *Identity
	// Encap forces UDP encapsulation on port 4500.
	Encap bool
	// DPDDelay is the client's DPD interval (zero: none).
	DPDDelay time.Duration
	// RoadWarrior: the client asks for a virtual IP, which the gateway
	// assigns from a one-address pool holding the client's inner address.
	RoadWarrior bool
	// ClientAddr, GatewayAddr: the client's outer address and the address
	// gateways terminate on (the outer VIP).
	ClientAddr, GatewayAddr string
	// ClientTS, ProtectedTS: the client's inner address or net and the
	// protected side's net.
	ClientTS, ProtectedTS, ClientNet string
	// ReplayWindow, zero for strongSwan's default.
	ReplayWindow int
}

// NewPSK returns a random pre-shared key (never logged).
func NewPSK() (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("creating PSK: %w", err)
	}
	return base64.RawStdEncoding.EncodeToString(b[:]), nil
}

// NewCerts fills p with a fresh CA and client and gateway certificates and
// switches it to certificate authentication.
func (p *Profile) NewCerts() error {
	ca, err := NewCA("Handoff lab CA")
	if err != nil {
		return err
	}
	cl, err := ca.Issue(ClientID)
	if err != nil {
		return err
	}
	gw, err := ca.Issue(GatewayID)
	if err != nil {
		return err
	}
	p.Auth, p.CA, p.Client, p.Gateway = AuthCert, ca, cl, gw
	return nil
}

func (p *Profile) base(name string, local, remote []string, localID, remoteID string, own *Identity) (Conn, *Creds, []Secret) {
	c := Conn{
		Name:        name,
		LocalAddrs:  local,
		RemoteAddrs: remote,
		LocalID:     localID,
		RemoteID:    remoteID,
		Auth:        p.Auth,
		Encap:       p.Encap,
	}
	if p.Auth == AuthCert {
		creds := &Creds{CA: p.CA.PEM, Own: own}
		c.LocalCert, c.RemoteCA = creds.CertFile(), creds.CAFile()
		return c, creds, nil
	}
	return c, nil, []Secret{{IDs: []string{ClientID, GatewayID}, Secret: p.PSK}}
}

// ClientConfig is the client's swanctl configuration: connection "lab"
// with child "lab" towards GatewayAddr.
func (p *Profile) ClientConfig() (Swanctl, *Creds) {
	c, creds, secrets := p.base(ConnName, []string{p.ClientAddr}, []string{p.GatewayAddr}, ClientID, GatewayID, p.Client)
	c.DPDDelay = p.DPDDelay
	c.Keyingtries = 0
	local := []string{p.ClientTS}
	if p.RoadWarrior {
		c.VIPs = []string{"0.0.0.0"}
		local = []string{"dynamic"}
	}
	c.Children = []Child{{
		Name:         ChildName,
		LocalTS:      local,
		RemoteTS:     []string{p.ProtectedTS},
		StartAction:  "none",
		DPDAction:    "restart",
		CloseAction:  "restart",
		ReplayWindow: p.ReplayWindow,
	}}
	return Swanctl{Conns: []Conn{c}, Secrets: secrets}, creds
}

// GatewayConfig is a gateway's swanctl configuration: connection "lab"
// terminating on GatewayAddr for any remote.
func (p *Profile) GatewayConfig() (Swanctl, *Creds) {
	c, creds, secrets := p.base(ConnName, []string{p.GatewayAddr}, []string{"%any"}, GatewayID, ClientID, p.Gateway)
	remote := []string{p.ClientNet}
	var pools []Pool
	if p.RoadWarrior {
		remote = []string{"dynamic"}
		c.Pools = []string{RoadWarrior}
		pools = []Pool{{Name: RoadWarrior, Addrs: p.ClientTS}}
	}
	c.Children = []Child{{
		Name:         ChildName,
		LocalTS:      []string{p.ProtectedTS},
		RemoteTS:     remote,
		ReplayWindow: p.ReplayWindow,
	}}
	return Swanctl{Conns: []Conn{c}, Pools: pools, Secrets: secrets}, creds
}

// ReestablishTemplate is the gateway's connection in the VICI load-conn
// form an agent's dataplane.reestablish_template holds: what Reestablish
// needs to initiate an IKE SA to the peer of a CHILD_SA it took over. The
// addresses, identities and traffic selectors come from each SA; the
// authentication, proposals, encapsulation and the child's options from
// here, as swanctl.conf has them. PSK only: with certificates, load-conn
// wants the certificates themselves, which this profile keeps in files.
func (p *Profile) ReestablishTemplate() (map[string]any, error) {
	if p.Auth != AuthPSK {
		return nil, fmt.Errorf("reestablish template: %q authentication is not supported (PSK only)", p.Auth)
	}
	sw, _ := p.GatewayConfig()
	c := sw.Conns[0]
	child := map[string]any{"mode": "tunnel", "esp_proposals": []string{DefaultESPProposals}, "dpd_action": "clear"}
	if p.ReplayWindow > 0 {
		child["replay_window"] = p.ReplayWindow
	}
	return map[string]any{
		"version":   2,
		"proposals": []string{DefaultProposals},
		"encap":     c.Encap,
		"mobike":    c.Mobike,
		"local":     map[string]any{"auth": string(c.Auth)},
		"remote":    map[string]any{"auth": string(c.Auth)},
		"children":  map[string]any{ChildName: child},
	}, nil
}
