package aws

import (
	"fmt"

	"github.com/handoffvpn/handoff/providers"
)

// ValidateResource checks, without calling EC2, that r is a resource the
// provider can move with these settings: a known kind, an ID of that
// kind's form, and for an Elastic IP the private IP it maps to (a claim
// could not move it otherwise). Configuration loading calls it, so that
// `handoff validate` and the agent refuse what the first failover would.
func (s Settings) ValidateResource(r providers.Resource) error {
	switch r.Kind {
	case KindEIP:
		if !allocationIDRe.MatchString(r.ID) {
			return fmt.Errorf("eip %q is not an allocation ID (eipalloc-...)", r.ID)
		}
		if _, ok := s.EIPPrivateIPs[r.ID]; !ok {
			return fmt.Errorf("eip %s has no private IP in provider.aws.eip_private_ips: a claim moves the Elastic IP with the VIP it maps to, so list it there", r.ID)
		}
		return nil
	case KindRoute:
		_, _, err := parseRouteID(r.ID)
		return err
	}
	return fmt.Errorf("%q: %w (aws moves %q and %q)", r.Kind, providers.ErrUnknownKind, KindEIP, KindRoute)
}
