package aws

import (
	"errors"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/providers"
)

func TestValidateResource(t *testing.T) {
	s := Settings{EIPPrivateIPs: map[string]string{"eipalloc-0a1b2c3d4e5f60718": "10.0.1.100"}}
	for _, c := range []struct {
		r           providers.Resource
		want        string // "" for valid
		unknownKind bool
	}{
		{providers.Resource{Kind: "eip", ID: "eipalloc-0a1b2c3d4e5f60718"}, "", false},
		{providers.Resource{Kind: "route", ID: "rtb-0123456789abcdef0|100.64.0.0/16"}, "", false},
		{providers.Resource{Kind: "route", ID: "rtb-1|2001:db8::/32"}, "", false},
		{providers.Resource{Kind: "bogus", ID: "x"}, `"bogus"`, true},
		{providers.Resource{Kind: "route", ID: "not-a-route"}, `want "rtb-<id>|<destination CIDR>"`, false},
		{providers.Resource{Kind: "route", ID: "rtb-1|10.0.0.1/16"}, "host bits", false},
		{providers.Resource{Kind: "eip", ID: "eipalloc-0000000000000000f"}, "eip_private_ips", false},
		{providers.Resource{Kind: "eip", ID: "203.0.113.7"}, "not an allocation ID", false},
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
