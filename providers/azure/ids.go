package azure

import (
	"fmt"
	"strings"
)

// Resource IDs in Handoff's config may be short ("name", "rg/name") or full
// ARM IDs; short forms take the provider's subscription and resource group.

// armID is a parsed Microsoft.Network resource ID; empty sub or rg means
// "the provider's own".
type armID struct {
	sub, rg string
	// name of the top-level resource (route table, NIC, public IP).
	name string
	// child is the route name for a route, "" otherwise.
	child string
}

// parseARM parses a full ARM ID of Microsoft.Network/typ[/childType].
func parseARM(id, typ, childType string) (armID, error) {
	parts := strings.Split(strings.TrimPrefix(id, "/"), "/")
	want := 8
	if childType != "" {
		want = 10
	}
	if len(parts) != want ||
		!strings.EqualFold(parts[0], "subscriptions") || !strings.EqualFold(parts[2], "resourceGroups") ||
		!strings.EqualFold(parts[4], "providers") || !strings.EqualFold(parts[5], "Microsoft.Network") ||
		!strings.EqualFold(parts[6], typ) || (childType != "" && !strings.EqualFold(parts[8], childType)) {
		shape := "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Network/" + typ + "/NAME"
		if childType != "" {
			shape += "/" + childType + "/NAME"
		}
		return armID{}, fmt.Errorf("%q is not an ARM ID of the form %s", id, shape)
	}
	a := armID{sub: parts[1], rg: parts[3], name: parts[7]}
	if childType != "" {
		a.child = parts[9]
	}
	for _, p := range parts {
		if p == "" {
			return armID{}, fmt.Errorf("%q has an empty path segment", id)
		}
	}
	return a, nil
}

// parseTopLevel parses "name", "rg/name" or an ARM ID of typ.
func parseTopLevel(s, typ string) (armID, error) {
	if strings.HasPrefix(s, "/") {
		return parseARM(s, typ, "")
	}
	parts := strings.Split(s, "/")
	for _, p := range parts {
		if p == "" {
			return armID{}, fmt.Errorf("%q: empty name", s)
		}
	}
	switch len(parts) {
	case 1:
		return armID{name: parts[0]}, nil
	case 2:
		return armID{rg: parts[0], name: parts[1]}, nil
	}
	return armID{}, fmt.Errorf("%q: want NAME, RESOURCE_GROUP/NAME or an ARM ID of %s", s, typ)
}

// parseRoute parses "table/route", "rg/table/route" or a route's ARM ID.
func parseRoute(s string) (armID, error) {
	if strings.HasPrefix(s, "/") {
		return parseARM(s, "routeTables", "routes")
	}
	parts := strings.Split(s, "/")
	for _, p := range parts {
		if p == "" {
			return armID{}, fmt.Errorf("%q: empty name", s)
		}
	}
	switch len(parts) {
	case 2:
		return armID{name: parts[0], child: parts[1]}, nil
	case 3:
		return armID{rg: parts[0], name: parts[1], child: parts[2]}, nil
	}
	return armID{}, fmt.Errorf("%q: want TABLE/ROUTE, RESOURCE_GROUP/TABLE/ROUTE or a route's ARM ID", s)
}

// resolve fills in the provider's subscription and resource group and
// refuses resources in another subscription (the clients are bound to one).
func (a armID) resolve(sub, rg string) (armID, error) {
	if a.sub == "" {
		a.sub = sub
	} else if !strings.EqualFold(a.sub, sub) {
		return armID{}, fmt.Errorf("resource is in subscription %s, the provider works in %s", a.sub, sub)
	}
	if a.rg == "" {
		a.rg = rg
	}
	if a.rg == "" {
		return armID{}, fmt.Errorf("no resource group: name one in the resource ID or set resource_group")
	}
	return a, nil
}

func nicID(sub, rg, name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Network/networkInterfaces/" + name
}

func publicIPID(sub, rg, name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Network/publicIPAddresses/" + name
}

func routeTableID(sub, rg, name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Network/routeTables/" + name
}

// nicOfIPConfig splits an ipConfiguration ID into its NIC's ID and the
// ipConfiguration's name.
func nicOfIPConfig(id string) (nic armID, ipConfig string, err error) {
	i := strings.LastIndex(strings.ToLower(id), "/ipconfigurations/")
	if i < 0 {
		return armID{}, "", fmt.Errorf("%q is not an ipConfiguration ID", id)
	}
	nic, err = parseARM(id[:i], "networkInterfaces", "")
	if err != nil {
		// A public IP may also sit on a load balancer or a gateway; Handoff
		// only moves it between NICs.
		return armID{}, "", fmt.Errorf("public IP is attached to %s, not to a network interface", id)
	}
	return nic, id[i+len("/ipconfigurations/"):], nil
}
