package azure

import (
	"errors"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/providers"
)

func TestValidateResource(t *testing.T) {
	for _, c := range []struct {
		r           providers.Resource
		want        string
		unknownKind bool
	}{
		{providers.Resource{Kind: "public_ip", ID: "rg-vpn/vpn-vpn"}, "", false},
		{providers.Resource{Kind: "public_ip", ID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/pip"}, "", false},
		{providers.Resource{Kind: "route", ID: "rg-vpn/rt-inside/vpn-100.64.0.0_16"}, "", false},
		{providers.Resource{Kind: "route", ID: "rt-inside/r1"}, "", false},
		{providers.Resource{Kind: "eip", ID: "x"}, `"eip"`, true},
		{providers.Resource{Kind: "route", ID: "just-a-name"}, "want TABLE/ROUTE", false},
		{providers.Resource{Kind: "public_ip", ID: "a/b/c"}, "want NAME", false},
		{providers.Resource{Kind: "public_ip", ID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/routeTables/t"}, "not an ARM ID", false},
	} {
		err := Settings{}.ValidateResource(c.r)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.r, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: err = %v, want one saying %s", c.r, err, c.want)
		case errors.Is(err, providers.ErrUnknownKind) != c.unknownKind:
			t.Errorf("%s: err = %v, unknown kind: %v", c.r, err, c.unknownKind)
		}
	}
}
