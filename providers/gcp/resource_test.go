package gcp

import (
	"testing"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/conformance"
)

func TestValidateResource(t *testing.T) {
	conformance.CheckValidateResource(t, Settings{}.ValidateResource, []conformance.ResourceCase{
		{R: providers.Resource{Kind: "forwarding_rule", ID: "europe-west1/vpn-vpn-udp"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "forwarding_rule", ID: "vpn-vpn-esp"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "alias_ip", ID: "10.128.0.100/32"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "alias_ip", ID: "pods/10.4.0.0/28"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "route", ID: "vpc/100.64.0.0/16"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "teleporter", ID: "x"}, Want: `"teleporter"`, UnknownKind: true},
		{R: providers.Resource{Kind: "forwarding_rule", ID: "Europe/VPN"}, Want: "forwarding rule ID", UnknownKind: false},
		{R: providers.Resource{Kind: "alias_ip", ID: "10.128.0.100"}, Want: "alias IP ID", UnknownKind: false},
		{R: providers.Resource{Kind: "route", ID: "100.64.0.0/16"}, Want: "route ID", UnknownKind: false},
	})
}
