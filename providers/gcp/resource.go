package gcp

import (
	"fmt"
	"strings"

	"github.com/handoffvpn/handoff/providers"
)

// ValidateResource checks, without calling the Compute API, that r is a
// resource the provider moves: a known kind and an ID of that kind's form.
// Configuration loading calls it, so that `handoff validate` and the agent
// refuse what the first failover would.
func (s Settings) ValidateResource(r providers.Resource) error {
	switch r.Kind {
	case KindForwardingRule:
		region, name, regional := strings.Cut(r.ID, "/")
		if !regional {
			region, name = "", r.ID
		}
		if !gceNameRE.MatchString(name) || regional && !regionRE.MatchString(region) {
			return fmt.Errorf("forwarding rule ID %q: want \"name\" or \"region/name\", e.g. \"europe-west1/vpn-udp\"", r.ID)
		}
		return nil
	case KindAliasIP:
		_, err := parseAliasID(r.ID)
		return err
	case KindRoute:
		_, err := parseRouteID(r.ID)
		return err
	}
	return fmt.Errorf("%q: %w (gcp moves %s, %s and %s)", r.Kind, providers.ErrUnknownKind, KindForwardingRule, KindAliasIP, KindRoute)
}
