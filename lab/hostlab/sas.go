package hostlab

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/strongswan/govici/vici"
)

// IKESA is one IKE_SA as a charon lists it (VICI list-sas).
type IKESA struct {
	SPIs  string // "spii_spir", hex
	State string // ESTABLISHED, PASSIVE, ...
	// Children are its CHILD_SAs as "spi-in/spi-out state", sorted.
	Children []string
}

func (s IKESA) String() string { return fmt.Sprintf("%s %s %v", s.SPIs, s.State, s.Children) }

// ListSAs lists the instance's IKE_SAs, ordered by SPIs.
func (c *Charon) ListSAs(ctx context.Context) ([]IKESA, error) {
	s, err := c.Session(ctx)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var out []IKESA
	for m, err := range s.CallStreaming(ctx, "list-sas", "list-sa", nil) {
		if err != nil {
			return nil, fmt.Errorf("charon %s: list-sas: %w", c.name, err)
		}
		for _, name := range m.Keys() {
			ike, ok := m.Get(name).(*vici.Message)
			if !ok {
				continue
			}
			sa := IKESA{SPIs: fmt.Sprint(ike.Get("initiator-spi"), "_", ike.Get("responder-spi")), State: fmt.Sprint(ike.Get("state"))}
			if children, _ := ike.Get("child-sas").(*vici.Message); children != nil {
				for _, k := range children.Keys() {
					if ch, _ := children.Get(k).(*vici.Message); ch != nil {
						sa.Children = append(sa.Children, fmt.Sprint(ch.Get("spi-in"), "/", ch.Get("spi-out"), " ", ch.Get("state")))
					}
				}
			}
			slices.Sort(sa.Children)
			out = append(out, sa)
		}
	}
	slices.SortFunc(out, func(a, b IKESA) int { return strings.Compare(a.SPIs, b.SPIs) })
	return out, nil
}

// Mirrored is the other end's view of a listing: one "spis in/out" entry
// per CHILD_SA (or "spis" for an IKE_SA without any), the CHILD_SA SPIs
// swapped, as the peer of the listed charon lists them; sorted.
func Mirrored(sas []IKESA) []string {
	var out []string
	for _, s := range sas {
		for _, ch := range s.Children {
			in, rest, _ := strings.Cut(ch, "/")
			outSPI, _, _ := strings.Cut(rest, " ")
			out = append(out, s.SPIs+" "+outSPI+"/"+in)
		}
		if len(s.Children) == 0 {
			out = append(out, s.SPIs)
		}
	}
	slices.Sort(out)
	return out
}

// Shape is a listing in the form the listed charon would give Mirrored
// of its peer's listing, and the states as "IKE/CHILD", sorted.
func Shape(sas []IKESA) (spis, states []string) {
	for _, s := range sas {
		for _, ch := range s.Children {
			sp, st, _ := strings.Cut(ch, " ")
			spis = append(spis, s.SPIs+" "+sp)
			states = append(states, s.State+"/"+st)
		}
		if len(s.Children) == 0 {
			spis = append(spis, s.SPIs)
			states = append(states, s.State)
		}
	}
	slices.Sort(spis)
	slices.Sort(states)
	return spis, states
}

// HoldsPeerSAs reports whether gw holds exactly the one IKE_SA and one
// CHILD_SA the client lists, with the same SPIs (seen from its side), in
// state want ("PASSIVE/INSTALLED", "ESTABLISHED/INSTALLED"), and says
// what each lists.
func HoldsPeerSAs(client, gw []IKESA, want string) (bool, string) {
	spis, states := Shape(gw)
	ok := len(client) == 1 && len(client[0].Children) == 1 && slices.Equal(spis, Mirrored(client)) &&
		len(states) == 1 && states[0] == want
	return ok, fmt.Sprintf("client lists %v, the gateway %v", client, gw)
}
