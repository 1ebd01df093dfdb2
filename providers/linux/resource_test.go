package linux

import (
	"testing"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/conformance"
)

func TestValidateResource(t *testing.T) {
	s := Settings{Interface: "eth0", Interfaces: []string{"eth1"}}
	conformance.CheckValidateResource(t, s.ValidateResource, []conformance.ResourceCase{
		{R: providers.Resource{Kind: "vip", ID: "203.0.113.100/24"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "vip", ID: "2001:db8::100/64"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "vip", ID: "198.18.1.1/24 dev eth1"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "vip", ID: "198.18.1.1/24 dev eth0"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "eip", ID: "x"}, Want: `"eip"`, UnknownKind: true},
		{R: providers.Resource{Kind: "vip", ID: "not-an-ip"}, Want: "want an address", UnknownKind: false},
		{R: providers.Resource{Kind: "vip", ID: "203.0.113.100"}, Want: "want an address with its prefix length", UnknownKind: false},
		{R: providers.Resource{Kind: "vip", ID: "198.18.1.1/24 dev eth2"}, Want: "neither provider.linux.interface nor", UnknownKind: false},
	})
}
