package aws

import (
	"testing"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/conformance"
)

func TestValidateResource(t *testing.T) {
	s := Settings{EIPPrivateIPs: map[string]string{"eipalloc-0a1b2c3d4e5f60718": "10.0.1.100"}}
	conformance.CheckValidateResource(t, s.ValidateResource, []conformance.ResourceCase{
		{R: providers.Resource{Kind: "eip", ID: "eipalloc-0a1b2c3d4e5f60718"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "route", ID: "rtb-0123456789abcdef0|100.64.0.0/16"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "route", ID: "rtb-1|2001:db8::/32"}, Want: "", UnknownKind: false},
		{R: providers.Resource{Kind: "bogus", ID: "x"}, Want: `"bogus"`, UnknownKind: true},
		{R: providers.Resource{Kind: "route", ID: "not-a-route"}, Want: `want "rtb-<id>|<destination CIDR>"`, UnknownKind: false},
		{R: providers.Resource{Kind: "route", ID: "rtb-1|10.0.0.1/16"}, Want: "host bits", UnknownKind: false},
		{R: providers.Resource{Kind: "eip", ID: "eipalloc-0000000000000000f"}, Want: "eip_private_ips", UnknownKind: false},
		{R: providers.Resource{Kind: "eip", ID: "203.0.113.7"}, Want: "not an allocation ID", UnknownKind: false},
	})
}
