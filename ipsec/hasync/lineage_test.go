package hasync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"testing"
)

// The captured run (a CHILD_SA rekey, then an IKE_SA rekey, DPDs) leaves
// one live IKE_SA, the rekeyed one, and one live CHILD_SA, created under
// the IKE_SA the rekey retired: that IKE_SA stays in the lineage, deleted,
// and is replayed first so that the child's keys can be derived.
func TestLineageOfTheCapture(t *testing.T) {
	l := NewLineage()
	for i, m := range loadCapture(t) {
		if _, err := l.Apply(m); err != nil {
			t.Fatalf("datagram %d (%s): %v", i, m.Type, err)
		}
	}
	old := IKEID{Version: 2, SPIi: spi("e37c6b17be8393c7"), SPIr: spi("90dbbd0d482731b0")}
	cur := IKEID{Version: 2, SPIi: spi("964bdbc084895726"), SPIr: spi("f5c768d700a58385")}
	ikes, children := l.Live()
	if len(ikes) != 1 || ikes[0] != cur {
		t.Fatalf("live IKE_SAs %v, want only %s (the peer lists it)", ikes, cur)
	}
	if !slices.Equal(children, []uint32{0xa610042c}) {
		t.Fatalf("live CHILD_SAs %08x, want the rekeyed child a610042c (adff926d was deleted)", children)
	}
	got := describe(t, l.Replay())
	want := []string{
		"IKE_ADD " + old.String(), "IKE_UPDATE " + old.String(), "CHILD_ADD a610042c",
		"IKE_ADD " + cur.String(), "IKE_UPDATE " + cur.String(), "IKE_MID_RESPONDER " + cur.String() + " 3",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("replay:\n  %v\nwant\n  %v", got, want)
	}
}

// A chain of rekeys keeps each retired IKE_SA exactly as long as a child
// created under it lives; deleting the live IKE_SA with no successor takes
// the whole chain with it.
func TestLineageCompactsRetiredIKESAs(t *testing.T) {
	a, b, c := ike(1), ike(2), ike(3)
	l := NewLineage()
	apply(t, l,
		add(a), update(a, false), child(a, 0xa1), midR(a, 2),
		add(b, a), del(a), update(b, false), child(b, 0xb1), midR(b, 4),
		add(c, b), del(b), update(c, false), update(c, true), midI(c, 1), midR(c, 7))
	want := []string{
		"IKE_ADD " + a.String(), "IKE_UPDATE " + a.String(), "CHILD_ADD 000000a1",
		"IKE_ADD " + b.String(), "IKE_UPDATE " + b.String(), "CHILD_ADD 000000b1",
		"IKE_ADD " + c.String(), "IKE_UPDATE " + c.String(), "IKE_UPDATE " + c.String() + " vip",
		"IKE_MID_INITIATOR " + c.String() + " 1", "IKE_MID_RESPONDER " + c.String() + " 7",
	}
	if got := describe(t, l.Replay()); !slices.Equal(got, want) {
		t.Fatalf("replay:\n  %v\nwant\n  %v", got, want)
	}
	// The child made under a dies (named by the live IKE_SA, as charon
	// does): a goes; b stays for its own child.
	apply(t, l, childDel(c, 0xa1))
	want = want[3:]
	if got := describe(t, l.Replay()); !slices.Equal(got, want) {
		t.Fatalf("after a1's delete:\n  %v\nwant\n  %v", got, want)
	}
	apply(t, l, childDel(c, 0xb1))
	want = want[3:]
	if got := describe(t, l.Replay()); !slices.Equal(got, want) {
		t.Fatalf("after b1's delete:\n  %v\nwant\n  %v", got, want)
	}
	// A new child of c, then c deleted without a successor: nothing left.
	apply(t, l, child(c, 0xc1), del(c))
	if got := l.Replay(); len(got) != 0 {
		t.Fatalf("after the last IKE_SA's delete: %v", describe(t, got))
	}
	if ikes, children := l.Live(); len(ikes)+len(children) != 0 {
		t.Fatalf("live after the last delete: %v %v", ikes, children)
	}
	// The same again with the children alive: the delete of the live end
	// drops the predecessors kept for them too.
	l = NewLineage()
	apply(t, l, add(a), child(a, 0xa1), add(b, a), del(a), del(b))
	if got := l.Replay(); len(got) != 0 {
		t.Fatalf("a chain whose live IKE_SA died: %v", describe(t, got))
	}
}

// Messages the lineage cannot place are refused, named, and change
// nothing; control messages and a late MID of a deleted IKE_SA change
// nothing without an error.
func TestLineageRefusesWhatItCannotPlace(t *testing.T) {
	a, b := ike(1), ike(2)
	l := NewLineage()
	apply(t, l, add(a), update(a, false), child(a, 0xa1), midR(a, 3))
	before := describe(t, l.Replay())
	for _, tc := range []struct {
		name string
		m    []byte
		err  error
	}{
		{"MID for an unknown IKE_SA", midR(b, 1), ErrUnknownIKE},
		{"UPDATE for an unknown IKE_SA", update(b, false), ErrUnknownIKE},
		{"CHILD_ADD under an unknown IKE_SA", child(b, 0xb1), ErrUnknownIKE},
		{"IKE_DELETE of an unknown IKE_SA", del(b), ErrUnknownIKE},
		{"IKE_ADD twice", add(a), ErrDuplicate},
		{"CHILD_ADD twice", child(a, 0xa1), ErrDuplicate},
		{"CHILD_ADD without an inbound SPI", raw(ChildAdd, ikeAttr(AttrIKEID, a)), ErrMissingAttr},
		{"no IKE_SA at all", raw(IKEUpdate), ErrNoIKEID},
		{"an IKE_SA with a zero initiator SPI", add(IKEID{Version: 2}), ErrNoIKEID},
	} {
		changed, err := l.Apply(decode(t, tc.m))
		if !errors.Is(err, tc.err) || changed {
			t.Errorf("%s: changed %v, err %v, want %v", tc.name, changed, err, tc.err)
		}
		if got := describe(t, l.Replay()); !slices.Equal(got, before) {
			t.Fatalf("%s changed the lineage:\n  %v\nwas\n  %v", tc.name, got, before)
		}
	}
	for _, m := range [][]byte{SegmentMessage(Status, 1), SegmentMessage(Resync, 1), SegmentMessage(SegmentTake, 1), childDel(a, 0xdead)} {
		if changed, err := l.Apply(decode(t, m)); changed || err != nil {
			t.Errorf("%s: changed %v, err %v", decode(t, m).Type, changed, err)
		}
	}
	// A rekey retires a; the peer's DELETE request's MID for a comes after
	// a's IKE_DELETE and is dropped.
	apply(t, l, add(b, a), del(a))
	if changed, err := l.Apply(decode(t, midR(a, 4))); changed || err != nil {
		t.Errorf("late MID of a retired IKE_SA: changed %v, err %v", changed, err)
	}
	if changed, err := l.Apply(decode(t, add(ike(3), a))); !errors.Is(err, ErrDuplicate) || changed {
		t.Errorf("a second rekey of one IKE_SA: changed %v, err %v, want %v", changed, err, ErrDuplicate)
	}
}

// Chains keep their key through rekeys and compaction; TakeChanged names
// every chain a message touched (or ended) once; a chain's replay restores
// into another lineage under the same key and gives the same replay; a
// rekey of an IKE_SA the lineage never held starts a chain, as it does in
// the receiving charon.
func TestLineageChains(t *testing.T) {
	a, b, c, d := ike(1), ike(2), ike(3), ike(4)
	l := NewLineage()
	apply(t, l, add(a), update(a, false), child(a, 0xa1), add(c), update(c, false))
	if got := l.TakeChanged(); !slices.Equal(got, []IKEID{a, c}) {
		t.Fatalf("changed after two IKE_SAs: %v", got)
	}
	if got := l.TakeChanged(); len(got) != 0 {
		t.Fatalf("changed twice: %v", got)
	}
	// a is rekeyed by b; the child created under a is deleted, so a goes,
	// and the chain is still a's.
	apply(t, l, add(b, a), del(a), child(b, 0xb1), childDel(b, 0xa1), midR(b, 5))
	if got := l.TakeChanged(); !slices.Equal(got, []IKEID{a}) {
		t.Fatalf("changed after a's rekey: %v, want the chain of a", got)
	}
	if got := l.Chains(); !slices.Equal(got, []IKEID{c, a}) {
		t.Fatalf("chains %v, want keys c and a (by their oldest kept IKE_SA: c, then b)", got)
	}
	want := []string{"IKE_ADD " + b.String(), "CHILD_ADD 000000b1", "IKE_MID_RESPONDER " + b.String() + " 5"}
	if got := describe(t, l.Chain(a)); !slices.Equal(got, want) {
		t.Fatalf("chain a: %v, want %v", got, want)
	}
	if l.Chain(b) != nil {
		t.Fatal("a chain is found by its key only, not by a later IKE_SA's ID")
	}

	// Restored elsewhere, under its key, the chain replays the same and
	// follows the same messages.
	r := NewLineage()
	for _, key := range l.Chains() {
		if err := r.RestoreChain(key, l.Chain(key)); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.EqualFunc(r.Replay(), l.Replay(), bytes.Equal) || len(r.TakeChanged()) != 0 {
		t.Fatal("restored lineage differs, or reports restored chains as changed")
	}
	apply(t, r, midR(b, 6))
	if got := r.TakeChanged(); !slices.Equal(got, []IKEID{a}) {
		t.Fatalf("restored lineage: changed %v, want the chain of a", got)
	}
	if err := r.RestoreChain(a, l.Chain(a)); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("restoring a chain twice: %v", err)
	}
	before := r.Replay()
	if err := r.RestoreChain(d, [][]byte{add(d), child(ike(9), 1)}); !errors.Is(err, ErrUnknownIKE) {
		t.Fatalf("restoring a chain with a stray child: %v", err)
	}
	if err := r.RestoreChain(d, [][]byte{update(d, false)}); err == nil {
		t.Fatal("restoring a chain that does not start with IKE_ADD")
	}
	if !slices.EqualFunc(r.Replay(), before, bytes.Equal) {
		t.Fatal("a refused restore changed the lineage")
	}

	// Deleting the live IKE_SA ends the chain; a rekey of an IKE_SA never
	// seen starts one.
	apply(t, l, del(b), add(d, ike(99)), update(d, false))
	if got := l.TakeChanged(); !slices.Equal(got, []IKEID{a, d}) || l.Chain(a) != nil || l.Chain(d) == nil {
		t.Fatalf("after deleting b and a rekey of an unknown IKE_SA: changed %v", got)
	}
}

// The deletions Handoff writes itself are what the plugin would send,
// and keys read back.
func TestDeleteMessagesAndKeys(t *testing.T) {
	a := ike(7)
	a.Initiator = true
	if got, want := IKEDeleteMessage(a), del(a); !bytes.Equal(got, want) {
		t.Fatalf("IKE_DELETE % x, want % x", got, want)
	}
	if got, want := MIDResponderMessage(a, 7), midR(a, 7); !bytes.Equal(got, want) {
		t.Fatalf("IKE_MID_RESPONDER % x, want % x", got, want)
	}
	if got, want := ChildDeleteMessage(a, 0x5256023f), childDel(a, 0x5256023f); !bytes.Equal(got, want) {
		t.Fatalf("CHILD_DELETE % x, want % x", got, want)
	}
	back, err := ParseKey(a.Key())
	if err != nil || back != a {
		t.Fatalf("ParseKey(%q) = %v, %v", a.Key(), back, err)
	}
	for _, bad := range []string{"", "v2-01-02-i", "v2-0000000000000007-00000000000007ff-x", "v2-0000000000000007-00000000000007FF-i", "x"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}

// Every node applies the same log: the same messages must give the same
// replay, whatever the map order.
func TestLineageIsDeterministic(t *testing.T) {
	var msgs [][]byte
	for i := range 50 {
		id := ike(uint64(i + 1))
		msgs = append(msgs, add(id), update(id, false), child(id, uint32(0x1000+i)), midR(id, uint32(i)))
	}
	var first [][]byte
	for run := range 5 {
		l := NewLineage()
		apply(t, l, msgs...)
		got := l.Replay()
		if run == 0 {
			first = got
			continue
		}
		if !slices.EqualFunc(got, first, bytes.Equal) {
			t.Fatalf("run %d replayed a different order", run)
		}
	}
	if len(first) != 200 || !bytes.Equal(first[0], msgs[0]) || !bytes.Equal(first[199], msgs[199]) {
		t.Fatalf("replay of 50 peers: %d datagrams, not in creation order", len(first))
	}
}

// Builders for synthetic datagrams, in the layouts docs/design/ike-continuity.md
// describes (and the capture confirms).

func ike(n uint64) IKEID {
	var id IKEID
	id.Version = 2
	binary.BigEndian.PutUint64(id.SPIi[:], n)
	binary.BigEndian.PutUint64(id.SPIr[:], n<<8|0xff)
	return id
}

func ikeAttr(t AttrType, id IKEID) []byte {
	b := []byte{byte(t), id.Version}
	b = append(b, id.SPIi[:]...)
	b = append(b, id.SPIr[:]...)
	if id.Initiator {
		return append(b, 1)
	}
	return append(b, 0)
}

func u32Attr(t AttrType, v uint32) []byte { return binary.BigEndian.AppendUint32([]byte{byte(t)}, v) }

func raw(typ MsgType, attrs ...[]byte) []byte {
	b := []byte{Version, byte(typ)}
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func add(id IKEID, rekeys ...IKEID) []byte {
	attrs := [][]byte{ikeAttr(AttrIKEID, id)}
	for _, old := range rekeys {
		attrs = append(attrs, ikeAttr(AttrIKERekeyID, old))
	}
	return raw(IKEAdd, attrs...)
}

func update(id IKEID, vip bool) []byte {
	if vip {
		// REMOTE_VIP 10.3.0.1: port, AF_INET, address.
		return raw(IKEUpdate, ikeAttr(AttrIKEID, id), []byte{byte(AttrRemoteVIP), 0, 0, 2, 10, 3, 0, 1})
	}
	return raw(IKEUpdate, ikeAttr(AttrIKEID, id), u32Attr(AttrConditions, 0x4005))
}

// spiAttr encodes an SPI as charon's ha plugin does on a little-endian
// host: its bytes reversed (see Attr.SPI).
func spiAttr(t AttrType, spi uint32) []byte { return u32Attr(t, bits.ReverseBytes32(spi)) }

func child(id IKEID, in uint32) []byte {
	return raw(ChildAdd, ikeAttr(AttrIKEID, id), spiAttr(AttrInboundSPI, in), spiAttr(AttrOutboundSPI, ^in))
}

func childDel(id IKEID, in uint32) []byte {
	return raw(ChildDelete, ikeAttr(AttrIKEID, id), spiAttr(AttrInboundSPI, in))
}

func del(id IKEID) []byte { return raw(IKEDelete, ikeAttr(AttrIKEID, id)) }

func midI(id IKEID, mid uint32) []byte {
	return raw(IKEMIDInitiator, ikeAttr(AttrIKEID, id), u32Attr(AttrMID, mid))
}

func midR(id IKEID, mid uint32) []byte {
	return raw(IKEMIDResponder, ikeAttr(AttrIKEID, id), u32Attr(AttrMID, mid))
}

func decode(t *testing.T, b []byte) *Message {
	t.Helper()
	m, err := Decode(b)
	if err != nil {
		t.Fatalf("test datagram % x: %v", b, err)
	}
	return m
}

func apply(t *testing.T, l *Lineage, msgs ...[]byte) {
	t.Helper()
	for i, b := range msgs {
		if _, err := l.Apply(decode(t, b)); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

// describe names each replayed datagram by type, IKE_SA and what sets it
// apart (a child's SPI, a MID, virtual IPs).
func describe(t *testing.T, out [][]byte) []string {
	t.Helper()
	var s []string
	for _, b := range out {
		m := decode(t, b)
		id, _ := m.IKEID()
		switch m.Type {
		case ChildAdd:
			a, _ := m.Find(AttrInboundSPI)
			s = append(s, fmt.Sprintf("CHILD_ADD %08x", a.SPI()))
		case IKEMIDInitiator, IKEMIDResponder:
			a, _ := m.Find(AttrMID)
			s = append(s, fmt.Sprintf("%s %s %d", m.Type, id, a.Uint()))
		case IKEUpdate:
			if _, vip := m.Find(AttrRemoteVIP); vip {
				s = append(s, fmt.Sprintf("%s %s vip", m.Type, id))
			} else {
				s = append(s, fmt.Sprintf("%s %s", m.Type, id))
			}
		default:
			s = append(s, fmt.Sprintf("%s %s", m.Type, id))
		}
	}
	return s
}
