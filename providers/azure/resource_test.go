package azure

import (
	"testing"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/conformance"
)

func TestValidateResource(t *testing.T) {
	conformance.CheckValidateResource(t, Settings{}.ValidateResource, []conformance.ResourceCase{
		{R: providers.Resource{Kind: "public_ip", ID: "rg-vpn/vpn-vpn"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "public_ip", ID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/pip"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "route", ID: "rg-vpn/rt-inside/vpn-100.64.0.0_16"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "route", ID: "rt-inside/r1"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "eip", ID: "x"}, Want: `"eip"`, UnknownKind: true},
		{R: providers.Resource{Kind: "route", ID: "just-a-name"}, Want: "want TABLE/ROUTE", UnknownKind: false},
		{R: providers.Resource{Kind: "public_ip", ID: "a/b/c"}, Want: "want NAME", UnknownKind: false},
		{R: providers.Resource{Kind: "public_ip", ID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/routeTables/t"}, Want: "not an ARM ID", UnknownKind: false},
	})
}
