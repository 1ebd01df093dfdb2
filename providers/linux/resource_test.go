package linux

import (
	"errors"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/providers"
)

func TestValidateResource(t *testing.T) {
	s := Settings{Interface: "eth0", Interfaces: []string{"eth1"}}
	for _, c := range []struct {
		r           providers.Resource
		want        string
		unknownKind bool
	}{
		{providers.Resource{Kind: "vip", ID: "203.0.113.100/24"}, "", false},
		{providers.Resource{Kind: "vip", ID: "2001:db8::100/64"}, "", false},
		{providers.Resource{Kind: "vip", ID: "198.18.1.1/24 dev eth1"}, "", false},
		{providers.Resource{Kind: "vip", ID: "198.18.1.1/24 dev eth0"}, "", false},
		{providers.Resource{Kind: "eip", ID: "x"}, `"eip"`, true},
		{providers.Resource{Kind: "vip", ID: "not-an-ip"}, "want an address", false},
		{providers.Resource{Kind: "vip", ID: "203.0.113.100"}, "want an address with its prefix length", false},
		{providers.Resource{Kind: "vip", ID: "198.18.1.1/24 dev eth2"}, "neither provider.linux.interface nor", false},
	} {
		err := s.ValidateResource(c.r)
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
