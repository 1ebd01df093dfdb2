package linux

import (
	"fmt"
	"slices"

	"github.com/handoffvpn/handoff/providers"
)

// ValidateResource checks, without touching the network, that r is a VIP
// the provider can hold with these settings: an address with its prefix
// length, on `interface` or on one of `interfaces` when it names one with
// "dev". Configuration loading calls it, so that `handoff validate` and
// the agent refuse what the first failover would.
func (s Settings) ValidateResource(r providers.Resource) error {
	if r.Kind != KindVIP {
		return fmt.Errorf("%q: %w (linux moves %s)", r.Kind, providers.ErrUnknownKind, KindVIP)
	}
	vip, dev, err := splitDev(r.ID)
	if err != nil {
		return err
	}
	if _, err := parseVIP(vip); err != nil {
		return err
	}
	if dev != "" && dev != s.Interface && !slices.Contains(s.Interfaces, dev) {
		return fmt.Errorf("VIP %q names interface %s, which is neither provider.linux.interface nor listed in provider.linux.interfaces", r.ID, dev)
	}
	return nil
}
