package ipsec

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/ipsec/xfrm"
)

// errIncomplete: charon reports a CHILD_SA whose kernel states are not all
// there (yet): after a rekey charon installs the new outbound state only
// once the old one is deleted.
var errIncomplete = errors.New("CHILD_SA kernel state incomplete")

// exportable reports whether charon's CHILD_SA state means it has kernel
// state worth carrying: INSTALLED, or in a rekey still in progress. A
// rekeyed CHILD_SA lingers as DELETED (its inbound state catches stragglers)
// and is not exported.
func exportable(c *vici.ChildSA) bool {
	switch c.State {
	case "INSTALLED", "REKEYING", "REKEYED":
		return c.HasSPIs()
	}
	return false
}

func protoNumber(p string) (uint8, error) {
	switch p {
	case "ESP", "":
		return sa.ProtoESP, nil
	case "AH":
		return sa.ProtoAH, nil
	}
	return 0, fmt.Errorf("protocol %q", p)
}

// snapshot indexes one read of the kernel tables.
type snapshot struct {
	// states by (destination, SPI, protocol); marks disambiguate.
	states   map[stateAddr][]*xfrm.State
	policies []*xfrm.Policy
}

type stateAddr struct {
	dst   netip.Addr
	spi   uint32
	proto uint8
}

func newSnapshot(states []*xfrm.State, policies []*xfrm.Policy) *snapshot {
	s := &snapshot{states: make(map[stateAddr][]*xfrm.State, len(states)), policies: policies}
	for _, st := range states {
		k := stateAddr{st.Dst, st.SPI, st.Proto}
		s.states[k] = append(s.states[k], st)
	}
	return s
}

// find returns the state at dst/spi/proto whose mark is the one charon
// reports (value and mask; zero for none).
func (s *snapshot) find(dst netip.Addr, spi uint32, proto uint8, mark, mask uint32) *xfrm.State {
	cands := s.states[stateAddr{dst, spi, proto}]
	for _, st := range cands {
		var v, m uint32
		if st.Mark != nil {
			v, m = st.Mark.Value, st.Mark.Mask
		}
		if v == mark && m == mask {
			return st
		}
	}
	if len(cands) == 1 && mark == 0 && mask == 0 {
		return cands[0]
	}
	return nil
}

// policiesFor returns the policies whose templates point at the CHILD_SA's
// states: same reqid, and the template's endpoints those of its inbound or
// outbound state.
func (s *snapshot) policiesFor(in, out *sa.State) []sa.Policy {
	var pols []sa.Policy
	for _, p := range s.policies {
		for _, t := range p.Templates {
			if t.Reqid != in.Reqid && t.Reqid != out.Reqid {
				continue
			}
			if (t.Dst == out.Dst && (!t.Src.IsValid() || t.Src == out.Src)) || (t.Dst == in.Dst && (!t.Src.IsValid() || t.Src == in.Src)) {
				pols = append(pols, p.Policy)
				break
			}
		}
	}
	return pols
}

// assemble builds the model of one CHILD_SA from charon's report and the
// kernel snapshot. now anchors charon's relative times.
func assemble(ike *vici.IKESA, c *vici.ChildSA, snap *snapshot, now time.Time) (*sa.ChildSA, []string, error) {
	proto, err := protoNumber(c.Protocol)
	if err != nil {
		return nil, nil, fmt.Errorf("CHILD_SA %s{%d}: %w", c.Name, c.UniqueID, err)
	}
	in := snap.find(ike.LocalHost, c.SPIIn, proto, c.MarkIn, c.MarkMaskIn)
	out := snap.find(ike.RemoteHost, c.SPIOut, proto, c.MarkOut, c.MarkMaskOut)
	if in == nil || out == nil {
		return nil, nil, fmt.Errorf("CHILD_SA %s{%d} spi in %08x out %08x: %w (inbound found: %v, outbound found: %v)",
			c.Name, c.UniqueID, c.SPIIn, c.SPIOut, errIncomplete, in != nil, out != nil)
	}
	child := &sa.ChildSA{
		IKE: sa.IKE{
			UniqueID:     ike.UniqueID,
			Name:         ike.Name,
			LocalID:      ike.LocalID,
			RemoteID:     ike.RemoteID,
			Local:        ike.Local(),
			Remote:       ike.Remote(),
			InitiatorSPI: ike.InitiatorSPI,
			ResponderSPI: ike.ResponderSPI,
			NATRemote:    ike.NATRemote,
		},
		Child: sa.Child{
			Name:     c.Name,
			UniqueID: c.UniqueID,
			LocalTS:  c.LocalTS,
			RemoteTS: c.RemoteTS,
		},
		In:       in.State,
		Out:      out.State,
		Policies: snap.policiesFor(&in.State, &out.State),
	}
	// charon reports whole seconds; anchor them to whole seconds so a
	// re-read of an unchanged SA gives the same model.
	base := now.Truncate(time.Second)
	if ike.Established > 0 || ike.State == "ESTABLISHED" {
		child.IKE.EstablishedAt = base.Add(-ike.Established).UTC()
	}
	if !in.AddTime.IsZero() {
		// The kernel's add time is exact and absolute.
		child.Child.InstalledAt = in.AddTime
	} else {
		child.Child.InstalledAt = base.Add(-c.Installed).UTC()
	}
	if c.RekeyIn > 0 {
		child.Child.RekeyAt = base.Add(c.RekeyIn).UTC()
	}
	child.ID = sa.MakeID(child.In)
	if err := child.Validate(); err != nil {
		return nil, nil, fmt.Errorf("CHILD_SA %s{%d}: %w", c.Name, c.UniqueID, err)
	}
	var unsupported []string
	for _, u := range in.Unsupported {
		unsupported = append(unsupported, "inbound "+u)
	}
	for _, u := range out.Unsupported {
		unsupported = append(unsupported, "outbound "+u)
	}
	return child, unsupported, nil
}

// fingerprint is what decides whether an SA changed between two reads: the
// encoding without the times derived from charon's relative clock.
func fingerprint(c *sa.ChildSA) string {
	cp := *c
	cp.IKE.EstablishedAt = time.Time{}
	cp.Child.RekeyAt = time.Time{}
	cp.Child.InstalledAt = time.Time{}
	return string(sa.Marshal(&cp))
}
