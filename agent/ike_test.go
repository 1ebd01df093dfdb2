package agent

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
)

// Re-establishment is the fallback: a peer any of whose CHILD_SAs came
// with a carried IKE_SA is left alone, whole; the others are all
// re-established; with nothing carried, everyone is.
func TestNotCarriedLeavesCarriedPeersAlone(t *testing.T) {
	child := func(remote string, spi uint32) *sa.ChildSA {
		return &sa.ChildSA{ID: remote + string(rune(spi)), IKE: sa.IKE{Remote: netip.MustParseAddrPort(remote), RemoteID: "peer@" + remote}, In: sa.State{SPI: spi}}
	}
	a1, a2 := child("192.0.2.10:4500", 0xa1), child("192.0.2.10:4500", 0xa2)
	b1 := child("192.0.2.11:4500", 0xb1)
	c1 := child("192.0.2.12:500", 0xc1)
	all := []*sa.ChildSA{a1, a2, b1, c1}
	if got := notCarried(all, map[uint32]bool{0xa2: true, 0xc1: true}); !slices.Equal(got, []*sa.ChildSA{b1}) {
		t.Fatalf("re-established %v, want only b's", got)
	}
	if got := notCarried(all, nil); !slices.Equal(got, all) {
		t.Fatalf("with nothing carried, re-established %d of %d", len(got), len(all))
	}
}

// A takeover does not install a replicated CHILD_SA of a carried peer
// that the carried IKE state does not hold (the peer retired it; its
// deletion reached the IKE state first); the peer's held CHILD_SAs and
// every CHILD_SA of a peer not carried are installed; with no IKE state
// nothing is dropped.
func TestRetiredChildSAsOfCarriedPeersAreNotInstalled(t *testing.T) {
	child := func(remote string, spi uint32) sa.Install {
		return sa.Install{SA: &sa.ChildSA{IKE: sa.IKE{Remote: netip.MustParseAddrPort(remote), RemoteID: "peer@" + remote}, In: sa.State{SPI: spi}}}
	}
	oldA, newA := child("192.0.2.10:4500", 0xa1), child("192.0.2.10:4500", 0xa2)
	b := child("192.0.2.11:4500", 0xb1)
	keep, dropped := retired([]sa.Install{oldA, newA, b}, map[uint32]bool{0xa2: true})
	if dropped != 1 || len(keep) != 2 || keep[0].SA != newA.SA || keep[1].SA != b.SA {
		t.Fatalf("kept %d (%v), dropped %d; want a's new CHILD_SA and b's", len(keep), keep, dropped)
	}
	if keep, dropped := retired([]sa.Install{oldA, newA, b}, nil); dropped != 0 || len(keep) != 3 {
		t.Fatalf("without IKE state: kept %d, dropped %d", len(keep), dropped)
	}
}

// Of a peer's CHILD_SAs with one name and one pair of traffic selectors,
// only the newest (the rekey's successor) is installed at a takeover;
// other peers and other selectors are left alone, as are generations the
// export could not date.
func TestSupersededChildSAsAreNotInstalled(t *testing.T) {
	at := time.Date(2026, 12, 8, 5, 0, 0, 0, time.UTC)
	child := func(remote, ts string, installed time.Time) sa.Install {
		return sa.Install{SA: &sa.ChildSA{IKE: sa.IKE{Remote: netip.MustParseAddrPort(remote), RemoteID: "peer@" + remote},
			Child: sa.Child{Name: "net", LocalTS: []string{"198.18.1.0/24"}, RemoteTS: []string{ts}, InstalledAt: installed}}}
	}
	old := child("192.0.2.10:4500", "198.51.100.10/32", at)
	cur := child("192.0.2.10:4500", "198.51.100.10/32", at.Add(time.Minute))
	other := child("192.0.2.10:4500", "198.51.100.11/32", at)
	peer2 := child("192.0.2.11:4500", "198.51.100.10/32", at)
	undated1, undated2 := child("192.0.2.12:4500", "198.51.100.12/32", time.Time{}), child("192.0.2.12:4500", "198.51.100.12/32", time.Time{})
	keep, dropped := superseded([]sa.Install{old, cur, other, peer2, undated1, undated2})
	if dropped != 1 || len(keep) != 5 || slices.ContainsFunc(keep, func(in sa.Install) bool { return in.SA == old.SA }) {
		t.Fatalf("kept %d, dropped %d; want all but the rekeyed CHILD_SA", len(keep), dropped)
	}
}
