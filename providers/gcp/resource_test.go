package gcp

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
		{providers.Resource{Kind: "forwarding_rule", ID: "europe-west1/vpn-vpn-udp"}, "", false},
		{providers.Resource{Kind: "forwarding_rule", ID: "vpn-vpn-esp"}, "", false},
		{providers.Resource{Kind: "alias_ip", ID: "10.128.0.100/32"}, "", false},
		{providers.Resource{Kind: "alias_ip", ID: "pods/10.4.0.0/28"}, "", false},
		{providers.Resource{Kind: "route", ID: "vpc/100.64.0.0/16"}, "", false},
		{providers.Resource{Kind: "teleporter", ID: "x"}, `"teleporter"`, true},
		{providers.Resource{Kind: "forwarding_rule", ID: "Europe/VPN"}, "forwarding rule ID", false},
		{providers.Resource{Kind: "alias_ip", ID: "10.128.0.100"}, "alias IP ID", false},
		{providers.Resource{Kind: "route", ID: "100.64.0.0/16"}, "route ID", false},
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
