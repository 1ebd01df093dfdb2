// Package linux is Handoff's on-prem provider: a floating VIP is an address
// added to a configured interface with netlink, announced to the segment
// with gratuitous ARP (IPv4) or unsolicited Neighbor Advertisements (IPv6)
// repeated for a while, and removed again when the node fences itself. It
// is also what the network-namespace lab uses.
//
// There is no cloud API to hold a fencing token, so each node's provider
// answers a small UDP owner protocol (see protocol.go and
// docs/providers/linux.md): a claimer asks the VIP itself who holds it and
// under which term (the query reaches whoever the segment delivers the VIP
// to), refuses a higher term, adds the VIP, and then tells the old holder
// to drop it, in that order.
package linux

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"time"

	"go.yaml.in/yaml/v3"
)

// KindVIP is the only resource kind: ID is the address with its prefix
// length as it goes on the interface, "198.18.0.100/24" or
// "2001:db8::100/64".
const KindVIP = "vip"

// Settings configure the Linux provider of one node.
type Settings struct {
	// Interface the VIPs are added to (required), unless a VIP names
	// another with " dev IFACE".
	Interface string `hcl:"interface" yaml:"interface"`
	// Interfaces are further interfaces VIPs may name, for a gateway that
	// moves an outside and an inside VIP together (what a keepalived
	// sync group does): "198.18.1.1/24 dev eth1". Each gets its own
	// announcer, owner protocol responder and state file.
	Interfaces []string `hcl:"interfaces,optional" yaml:"interfaces"`
	// Netns is the network namespace the interface lives in: a name under
	// /var/run/netns or a path; default: the agent's own.
	Netns string `hcl:"netns,optional" yaml:"netns"`
	// AnnounceCount is how many gratuitous ARP / unsolicited NA rounds a
	// claim sends; default 5.
	AnnounceCount int `hcl:"announce_count,optional" yaml:"announce_count"`
	// AnnounceInterval is the pause between rounds; default "500ms".
	AnnounceInterval string `hcl:"announce_interval,optional" yaml:"announce_interval"`
	// OwnerPort is the UDP port of the owner protocol; default 9574.
	OwnerPort int `hcl:"owner_port,optional" yaml:"owner_port"`
	// ProbeTimeout bounds one owner query or yield; default "300ms".
	ProbeTimeout string `hcl:"probe_timeout,optional" yaml:"probe_timeout"`
	// Peers maps node IDs to their interface MAC addresses, so Owner can
	// name a holder whose agent does not answer (from the neighbor table).
	Peers map[string]string `hcl:"peers,optional" yaml:"peers"`
	// StateDir keeps the term each VIP was claimed under, across agent
	// restarts; default "/run/handoff" (cleared on reboot, like the VIPs).
	StateDir string `hcl:"state_dir,optional" yaml:"state_dir"`

	// Logger receives one line per claim and release; default: discard.
	Logger *slog.Logger `yaml:"-"`
}

type resolved struct {
	Settings
	announceInterval, probeTimeout time.Duration
	peers                          map[string]string // MAC (lowercase) → node
}

var (
	ifaceRE = regexp.MustCompile(`^[A-Za-z0-9_.:@-]{1,15}$`)
	nodeRE  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

// Validate checks every key and names the offending one.
func (s Settings) Validate() error {
	_, err := s.resolve()
	return err
}

func (s Settings) resolve() (resolved, error) {
	r := resolved{Settings: s, peers: map[string]string{}}
	if r.AnnounceCount == 0 {
		r.AnnounceCount = 5
	}
	if r.OwnerPort == 0 {
		r.OwnerPort = 9574
	}
	if r.StateDir == "" {
		r.StateDir = "/run/handoff"
	}
	if !ifaceRE.MatchString(s.Interface) {
		return r, fmt.Errorf("linux setting interface: %q is not an interface name (required)", s.Interface)
	}
	seen := map[string]bool{s.Interface: true}
	for _, name := range s.Interfaces {
		if !ifaceRE.MatchString(name) {
			return r, fmt.Errorf("linux setting interfaces: %q is not an interface name", name)
		}
		if seen[name] {
			return r, fmt.Errorf("linux setting interfaces: %s is listed twice (interface counts too)", name)
		}
		seen[name] = true
	}
	if r.AnnounceCount < 1 || r.AnnounceCount > 100 {
		return r, fmt.Errorf("linux setting announce_count: %d is outside 1-100", s.AnnounceCount)
	}
	if r.OwnerPort < 1 || r.OwnerPort > 65535 {
		return r, fmt.Errorf("linux setting owner_port: %d is not a UDP port", s.OwnerPort)
	}
	for _, d := range []struct {
		key, val, def string
		dst           *time.Duration
	}{
		{"announce_interval", s.AnnounceInterval, "500ms", &r.announceInterval},
		{"probe_timeout", s.ProbeTimeout, "300ms", &r.probeTimeout},
	} {
		v := d.val
		if v == "" {
			v = d.def
		}
		parsed, err := time.ParseDuration(v)
		if err != nil {
			return r, fmt.Errorf("linux setting %s: %w", d.key, err)
		}
		if parsed <= 0 {
			return r, fmt.Errorf("linux setting %s: %q must be positive", d.key, v)
		}
		*d.dst = parsed
	}
	for node, mac := range s.Peers {
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return r, fmt.Errorf("linux setting peers: %s = %q is not a MAC address", node, mac)
		}
		if other, dup := r.peers[hw.String()]; dup {
			return r, fmt.Errorf("linux setting peers: %s and %s share MAC %s", other, node, hw)
		}
		r.peers[hw.String()] = node
	}
	return r, nil
}

// settingsFrom accepts the typed struct, a pointer to it, or a decoded
// YAML/JSON map (strictly: unknown keys are an error).
func settingsFrom(v any) (Settings, error) {
	switch s := v.(type) {
	case Settings:
		return s, nil
	case *Settings:
		if s == nil {
			return Settings{}, nil
		}
		return *s, nil
	case map[string]any:
		raw, err := yaml.Marshal(s)
		if err != nil {
			return Settings{}, fmt.Errorf("re-encoding linux settings: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		var out Settings
		if err := dec.Decode(&out); err != nil {
			return Settings{}, fmt.Errorf("decoding linux settings: %w", err)
		}
		return out, nil
	}
	return Settings{}, fmt.Errorf("linux settings: unsupported type %T (want linux.Settings)", v)
}
