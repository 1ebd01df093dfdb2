package hasync

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Lineage is the compacted IKE state of one gateway, built from the ha
// plugin's datagrams in the order the active charon sent them: for every
// live IKE_SA what a passive charon needs to hold it, and nothing a later
// message made obsolete. A standby replays it (Replay) into its own charon,
// byte for byte.
//
// What is kept per IKE_SA: its IKE_ADD; its last IKE_UPDATE and its last
// IKE_UPDATE with virtual IPs (the plugin sends them apart); its last
// IKE_MID_INITIATOR and IKE_MID_RESPONDER; the CHILD_ADD of every CHILD_SA
// created under it and not deleted since. A CHILD_ADD carries no keys: the
// receiver derives them from the SK_d of the IKE_SA the child was created
// under. So an IKE_SA replaced by a rekey stays, deleted, as long as a
// live CHILD_SA was created under it, and the replay goes oldest first:
// the old IKE_SA, its children, then its successor's IKE_ADD (which takes
// the children over and retires it on the receiver).
//
// Lineage is a pure function of the messages applied, in order: every
// node of a cluster that applies the same log holds the same lineage. It
// holds key material (the datagrams carry DH secrets and nonces): never
// log what it returns. Not safe for concurrent use.
type Lineage struct {
	// sas are the kept IKE_SAs by ID; seq orders them by creation.
	sas map[IKEID]*ikeState
	seq uint64
	// children maps a live CHILD_SA's inbound SPI to the IKE_SA it was
	// created under.
	children map[uint32]IKEID
	// changed are the chains (by key) changed since the last TakeChanged.
	changed chainSet
	// restoring, when not zero, is the key a chain being restored takes.
	restoring IKEID
}

type ikeState struct {
	seq uint64
	// chain is the key of the chain this IKE_SA belongs to: the first
	// IKE_SA of the chain as this lineage learned it, inherited by every
	// successor, so that a chain keeps its key through rekeys and
	// compaction (a replicated record of the chain is stored under it).
	chain   IKEID
	add     []byte
	update  []byte // last IKE_UPDATE without REMOTE_VIP
	vips    []byte // last IKE_UPDATE with REMOTE_VIP
	midI    []byte
	midR    []byte
	deleted bool
	// successor is the IKE_SA that rekeyed this one, predecessor the one
	// this one rekeyed and the lineage still keeps; the zero IKEID (no
	// IKE_SA has an initiator SPI of zero) means none.
	successor, predecessor IKEID
	// created are the CHILD_ADDs of the live children created under this
	// IKE_SA, in arrival order, by inbound SPI.
	created []childAdd
}

type childAdd struct {
	spi uint32
	raw []byte
}

// Errors Apply returns; the lineage is unchanged by a refused message.
var (
	ErrNoIKEID     = errors.New("hasync: message names no IKE_SA")
	ErrUnknownIKE  = errors.New("hasync: message for an IKE_SA the lineage does not hold")
	ErrDuplicate   = errors.New("hasync: IKE_SA or CHILD_SA added twice")
	ErrMissingAttr = errors.New("hasync: message lacks a required attribute")
)

// NewLineage returns an empty lineage.
func NewLineage() *Lineage {
	return &Lineage{sas: make(map[IKEID]*ikeState), children: make(map[uint32]IKEID), changed: make(chainSet)}
}

// Apply adds one datagram (as the active charon sent it) to the lineage.
// It reports whether the message changed what a standby needs: control
// messages (STATUS, RESYNC, SEGMENT_*) and IKEv1's IV change nothing and
// are not kept. A message the lineage cannot place (no IKE_SA, an IKE_SA
// it does not hold, a CHILD_SA added twice) is refused with an error
// naming it, and changes nothing: the plugin's transport is lossy, and a
// message after a lost one must not corrupt what is known.
func (l *Lineage) Apply(m *Message) (bool, error) {
	switch m.Type {
	case Status, Resync, SegmentDrop, SegmentTake, IKEIV:
		return false, nil
	}
	id, ok := m.IKEID()
	if !ok || id.SPIi == [8]byte{} {
		// An initiator SPI is never zero (RFC 7296, 3.1): the zero IKEID
		// marks "none" in the chains.
		return false, fmt.Errorf("%w: %s", ErrNoIKEID, m.Type)
	}
	raw := slices.Clone(m.Raw)
	switch m.Type {
	case IKEAdd:
		if err := l.addIKE(id, m, raw); err != nil {
			return false, err
		}
		l.touch(id)
		return true, nil
	case IKEDelete:
		if s := l.sas[id]; s != nil {
			// Marked before: a deletion can drop the whole chain.
			defer l.changed.touch(s.chain)
		}
		return l.deleteIKE(id)
	case ChildDelete:
		// By SPI, whichever IKE_SA the message names: after an IKE rekey
		// it names the successor, which took the child over. A child the
		// lineage does not hold changes nothing.
		spi, ok := m.Find(AttrInboundSPI)
		if !ok {
			return false, fmt.Errorf("%w: CHILD_DELETE for %s without INBOUND_SPI", ErrMissingAttr, id)
		}
		under, held := l.children[spi.SPI()]
		if !held {
			return false, nil
		}
		l.touch(under)
		return l.deleteChild(spi.SPI()), nil
	}
	s := l.sas[id]
	if s == nil || s.deleted {
		// A MID for an IKE_SA deleted by the request it counts (the
		// peer's DELETE) arrives after the IKE_DELETE: nothing to keep.
		if (m.Type == IKEMIDInitiator || m.Type == IKEMIDResponder) && s != nil {
			return false, nil
		}
		return false, fmt.Errorf("%w: %s for %s", ErrUnknownIKE, m.Type, id)
	}
	switch m.Type {
	case IKEUpdate:
		if _, vip := m.Find(AttrRemoteVIP); vip {
			s.vips = raw
		} else {
			s.update = raw
		}
	case IKEMIDInitiator:
		s.midI = raw
	case IKEMIDResponder:
		s.midR = raw
	case ChildAdd:
		spi, ok := m.Find(AttrInboundSPI)
		if !ok {
			return false, fmt.Errorf("%w: CHILD_ADD for %s without INBOUND_SPI", ErrMissingAttr, id)
		}
		in := spi.SPI()
		if _, dup := l.children[in]; dup {
			return false, fmt.Errorf("%w: CHILD_SA %08x under %s", ErrDuplicate, in, id)
		}
		s.created = append(s.created, childAdd{spi: in, raw: raw})
		l.children[in] = id
	default:
		return false, fmt.Errorf("hasync: %s is not a message the lineage knows", m.Type)
	}
	l.touch(id)
	return true, nil
}

// touch marks the chain of the IKE_SA id as changed.
func (l *Lineage) touch(id IKEID) {
	if s := l.sas[id]; s != nil {
		l.changed.touch(s.chain)
	}
}

type chainSet map[IKEID]struct{}

func (c chainSet) touch(key IKEID) { c[key] = struct{}{} }

func (l *Lineage) addIKE(id IKEID, m *Message, raw []byte) error {
	if _, dup := l.sas[id]; dup {
		return fmt.Errorf("%w: IKE_SA %s", ErrDuplicate, id)
	}
	s := &ikeState{seq: l.seq, add: raw, chain: id}
	if l.restoring != (IKEID{}) {
		s.chain = l.restoring
	}
	if a, ok := m.Find(AttrIKERekeyID); ok {
		// A rekey of an IKE_SA the lineage does not hold starts a chain:
		// the receiving charon derives the new IKE_SA's keys from the
		// OLD_SKD the message carries, with or without the old IKE_SA
		// (it only skips taking over children it does not have). That
		// is the first IKE_ADD of a compacted chain, and what follows a
		// lost datagram.
		old := a.IKEID()
		if p := l.sas[old]; p != nil {
			if p.hasSucc() {
				return fmt.Errorf("%w: IKE_SA %s rekeys %s, already rekeyed by %s", ErrDuplicate, id, old, p.successor)
			}
			p.successor, s.predecessor = id, old
			s.chain = p.chain
		}
	}
	l.seq++
	l.sas[id] = s
	return nil
}

// deleteIKE retires an IKE_SA. One replaced by a rekey stays while a live
// CHILD_SA was created under it; one with no successor takes its whole
// lineage with it (its children, and the predecessors kept for them).
func (l *Lineage) deleteIKE(id IKEID) (bool, error) {
	s := l.sas[id]
	if s == nil {
		return false, fmt.Errorf("%w: IKE_DELETE for %s", ErrUnknownIKE, id)
	}
	if s.deleted {
		return false, nil
	}
	if !s.hasSucc() {
		l.dropChain(id)
		return true, nil
	}
	s.deleted = true
	s.midI, s.midR = nil, nil
	l.compact(id)
	return true, nil
}

// dropChain removes id and every predecessor, with the children created
// under them.
func (l *Lineage) dropChain(id IKEID) {
	for {
		s := l.sas[id]
		if s == nil {
			return
		}
		for _, c := range s.created {
			delete(l.children, c.spi)
		}
		delete(l.sas, id)
		if !s.hasPred() {
			return
		}
		id = s.predecessor
	}
}

// deleteChild forgets a CHILD_SA, wherever it was created, and compacts.
func (l *Lineage) deleteChild(spi uint32) bool {
	under, ok := l.children[spi]
	if !ok {
		return false
	}
	delete(l.children, spi)
	s := l.sas[under]
	s.created = slices.DeleteFunc(s.created, func(c childAdd) bool { return c.spi == spi })
	l.compact(under)
	return true
}

// compact drops deleted IKE_SAs at the old end of id's chain that no live
// CHILD_SA needs any more. A deleted IKE_SA in the middle is kept while
// an older one is: its IKE_ADD carries the rekey that leads to its
// successor's keys.
func (l *Lineage) compact(id IKEID) {
	// Walk to the oldest of the chain.
	for s := l.sas[id]; s != nil && s.hasPred(); s = l.sas[id] {
		id = s.predecessor
	}
	for {
		s := l.sas[id]
		if s == nil || !s.deleted || len(s.created) > 0 || !s.hasSucc() {
			return
		}
		delete(l.sas, id)
		next := l.sas[s.successor]
		if next == nil {
			return
		}
		next.predecessor = IKEID{}
		id = s.successor
	}
}

// Replay returns the datagrams that give a passive charon every live
// IKE_SA and CHILD_SA of the lineage, in the order to send them: chains
// by creation of their oldest IKE_SA, each oldest first (IKE_ADD, the
// updates, the CHILD_ADDs created under it), and the message IDs of the
// chain's live IKE_SA last. The slices are the lineage's own: do not
// modify them.
func (l *Lineage) Replay() [][]byte {
	var out [][]byte
	for _, s := range l.roots() {
		out = l.appendChain(out, s)
	}
	return out
}

// roots are the oldest IKE_SAs of the chains, by creation.
func (l *Lineage) roots() []*ikeState {
	var roots []*ikeState
	for _, s := range l.sas {
		if !s.hasPred() {
			roots = append(roots, s)
		}
	}
	slices.SortFunc(roots, func(a, b *ikeState) int { return cmp.Compare(a.seq, b.seq) })
	return roots
}

func (l *Lineage) appendChain(out [][]byte, s *ikeState) [][]byte {
	var last *ikeState
	for ; s != nil; s = l.next(s) {
		out = appendNonNil(out, s.add, s.update, s.vips)
		for _, c := range s.created {
			out = append(out, c.raw)
		}
		last = s
	}
	return appendNonNil(out, last.midI, last.midR)
}

// Chains returns the keys of the lineage's chains, in the order of their
// oldest kept IKE_SA (the order Replay sends them in). A chain
// is an IKE_SA with the IKE_SAs it replaced by rekeys that the lineage
// still keeps; its key is its first IKE_SA's ID and stays the same
// through rekeys and compaction.
func (l *Lineage) Chains() []IKEID {
	roots := l.roots()
	keys := make([]IKEID, len(roots))
	for i, s := range roots {
		keys[i] = s.chain
	}
	return keys
}

// Chain returns the replay of one chain (see Replay), or nil when the
// lineage holds no chain with that key. The slices are the lineage's own.
func (l *Lineage) Chain(key IKEID) [][]byte {
	for _, s := range l.sas {
		if s.chain == key && !s.hasPred() {
			return l.appendChain(nil, s)
		}
	}
	return nil
}

// TakeChanged returns the keys of the chains changed (or ended) since
// the last call, and forgets them: what a replicator must write again
// (Chain) or delete (Chain returns nil).
func (l *Lineage) TakeChanged() []IKEID {
	keys := make([]IKEID, 0, len(l.changed))
	for k := range l.changed {
		keys = append(keys, k)
	}
	clear(l.changed)
	slices.SortFunc(keys, func(a, b IKEID) int { return strings.Compare(a.Key(), b.Key()) })
	return keys
}

// RestoreChain adds a chain from its replay (as Chain returned it, on
// this node or another) under its key: a new active's lineage starts from
// what the log holds. The chain must be new to the lineage; on error the
// lineage is unchanged. A restored chain is not reported by TakeChanged.
func (l *Lineage) RestoreChain(key IKEID, datagrams [][]byte) error {
	if key.SPIi == [8]byte{} {
		return fmt.Errorf("restoring a chain: %w", ErrNoIKEID)
	}
	if l.Chain(key) != nil {
		return fmt.Errorf("restoring chain %s: %w", key, ErrDuplicate)
	}
	msgs := make([]*Message, len(datagrams))
	for i, d := range datagrams {
		m, err := Decode(d)
		if err != nil {
			return fmt.Errorf("restoring chain %s: datagram %d: %w", key, i, err)
		}
		if i == 0 && m.Type != IKEAdd {
			return fmt.Errorf("restoring chain %s: it starts with %s, not IKE_ADD", key, m.Type)
		}
		msgs[i] = m
	}
	// Applied to a copy, so that a chain refused halfway leaves nothing.
	trial := l.clone()
	trial.restoring = key
	for i, m := range msgs {
		if _, err := trial.Apply(m); err != nil {
			return fmt.Errorf("restoring chain %s: datagram %d (%s): %w", key, i, m.Type, err)
		}
	}
	trial.restoring = IKEID{}
	trial.changed = l.changed
	*l = *trial
	return nil
}

// clone copies the lineage's bookkeeping; the datagrams are shared (they
// are never modified).
func (l *Lineage) clone() *Lineage {
	c := &Lineage{sas: make(map[IKEID]*ikeState, len(l.sas)), seq: l.seq, children: maps.Clone(l.children), changed: make(chainSet)}
	for id, s := range l.sas {
		cs := *s
		cs.created = slices.Clone(s.created)
		c.sas[id] = &cs
	}
	return c
}

func (s *ikeState) hasSucc() bool { return s.successor != IKEID{} }
func (s *ikeState) hasPred() bool { return s.predecessor != IKEID{} }

func (l *Lineage) next(s *ikeState) *ikeState {
	if !s.hasSucc() {
		return nil
	}
	return l.sas[s.successor]
}

// Live returns the IKE_SAs a standby's charon should hold (one per chain,
// the newest) and the inbound SPIs of their CHILD_SAs: what a
// reconciliation compares with VICI's list-sas.
func (l *Lineage) Live() (ikes []IKEID, childSPIs []uint32) {
	for id, s := range l.sas {
		if !s.deleted && !s.hasSucc() {
			ikes = append(ikes, id)
		}
	}
	slices.SortFunc(ikes, func(a, b IKEID) int { return cmp.Compare(l.sas[a].seq, l.sas[b].seq) })
	for spi := range l.children {
		childSPIs = append(childSPIs, spi)
	}
	slices.Sort(childSPIs)
	return ikes, childSPIs
}

func appendNonNil(out [][]byte, bs ...[]byte) [][]byte {
	for _, b := range bs {
		if b != nil {
			out = append(out, b)
		}
	}
	return out
}
