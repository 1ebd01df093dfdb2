package azure

import (
	"fmt"

	"github.com/handoffvpn/handoff/providers"
)

// ValidateResource checks, without calling Resource Manager, that r is a
// resource the provider moves: a known kind and an ID of that kind's form
// (name, resource group and name, or ARM ID). Configuration loading calls
// it, so that `handoff validate` and the agent refuse what the first
// failover would.
func (s Settings) ValidateResource(r providers.Resource) error {
	var err error
	switch r.Kind {
	case KindRoute:
		_, err = parseRoute(r.ID)
	case KindPublicIP:
		_, err = parseTopLevel(r.ID, "publicIPAddresses")
	default:
		return fmt.Errorf("%q: %w (azure moves %q and %q)", r.Kind, providers.ErrUnknownKind, KindRoute, KindPublicIP)
	}
	if err != nil {
		return fmt.Errorf("%s %w", r.Kind, err)
	}
	return nil
}
