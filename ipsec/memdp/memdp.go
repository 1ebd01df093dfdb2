// Package memdp is an in-memory dataplane. It stands in for charon (VICI)
// and the kernel's XFRM tables in unit tests, the in-process cluster tests
// and the demo: it holds CHILD_SAs with their replay counters, announces
// changes the way VICI events would, and "sends" packets by advancing
// outbound sequence numbers, recording every number it used on a shared
// Wire so tests can prove that no sequence number is ever sent twice.
package memdp

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
)

// Wire records the outbound sequence numbers each node sent per SPI: the
// packet capture of the in-memory world.
type Wire struct {
	mu   sync.Mutex // guards runs
	runs map[uint32][]Run
}

// Run is a contiguous range of sequence numbers one node sent on one SPI.
type Run struct {
	Node        string
	First, Last uint64
}

// NewWire returns an empty wire.
func NewWire() *Wire { return &Wire{runs: make(map[uint32][]Run)} }

func (w *Wire) send(node string, spi uint32, first, last uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	runs := w.runs[spi]
	if n := len(runs); n > 0 && runs[n-1].Node == node && runs[n-1].Last+1 == first {
		runs[n-1].Last = last
		return
	}
	w.runs[spi] = append(runs, Run{Node: node, First: first, Last: last})
}

// Reused returns the SPIs on which some sequence number was sent twice.
func (w *Wire) Reused() []uint32 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []uint32
	for spi, runs := range w.runs {
		rs := append([]Run(nil), runs...)
		sort.Slice(rs, func(i, j int) bool { return rs[i].First < rs[j].First })
		for i := 1; i < len(rs); i++ {
			if rs[i].First <= rs[i-1].Last {
				out = append(out, spi)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Runs returns the runs seen on spi.
func (w *Wire) Runs(spi uint32) []Run {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Run(nil), w.runs[spi]...)
}

type entry struct {
	id       string
	sa       *sa.ChildSA
	oseq     uint64 // last outbound sequence number sent
	seq      uint64 // highest inbound sequence number seen
	outbound bool   // outbound state installed (this node may send)
}

// Dataplane is one node's memory dataplane.
type Dataplane struct {
	node string
	wire *Wire

	mu   sync.Mutex // guards the following fields
	sas  map[string]*entry
	subs map[chan<- sa.Change]*subscriber
	// ring orders the SAs for SendSome's round robin; cursor is where the
	// next round goes on. Deleted SAs leave the ring when a round passes.
	ring    []*entry
	cursor  int
	fenced  time.Time
	stopped bool
	// reestablished counts Reestablish calls (tests).
	reestablished int
}

// New returns an empty dataplane for node, sending on wire.
func New(node string, wire *Wire) *Dataplane {
	return &Dataplane{node: node, wire: wire, sas: make(map[string]*entry), subs: make(map[chan<- sa.Change]*subscriber)}
}

// subscriber is one Watch call. overflowed is closed when a change did not
// fit its channel: the watcher has missed a change and must resync, as it
// must after a broken VICI event session.
type subscriber struct {
	overflowed chan struct{}
	lost       bool
}

// ErrOverflow ends a Watch whose consumer fell so far behind that a change
// did not fit its channel. Nothing is dropped silently: the consumer
// resyncs with Export, as it does when charon's event stream breaks.
var ErrOverflow = errors.New("memdp: watcher fell behind and missed changes; resync")

func (d *Dataplane) putLocked(c *sa.ChildSA, e *entry) {
	e.id = c.ID
	if old, ok := d.sas[c.ID]; ok {
		// Replace in place, so the ring keeps one slot per SA.
		*old = *e
		return
	}
	d.sas[c.ID] = e
	d.ring = append(d.ring, e)
}

// Add makes SAs appear as charon would after IKE negotiations: installed in
// both directions and announced to watchers.
func (d *Dataplane) Add(sas ...*sa.ChildSA) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range sas {
		d.putLocked(c, &entry{sa: c, outbound: true})
		d.publishLocked(sa.Change{Op: sa.Upsert, ID: c.ID, SA: c})
	}
}

// Delete removes an SA as an expiry or a peer's delete would.
func (d *Dataplane) Delete(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.sas[id]; ok {
		delete(d.sas, id)
		e.id = "" // leaves the ring at the next round
		d.publishLocked(sa.Change{Op: sa.Delete, ID: id})
	}
}

func (d *Dataplane) publishLocked(c sa.Change) {
	for ch, sub := range d.subs {
		if sub.lost {
			continue
		}
		// Watchers own a buffered channel; a full one means the consumer is
		// far behind: its Watch ends with ErrOverflow and it resyncs.
		select {
		case ch <- c:
		default:
			sub.lost = true
			close(sub.overflowed)
		}
	}
}

// Send transmits n packets on every outbound SA this node holds, as traffic
// through the tunnels would, and receives n on every inbound one.
func (d *Dataplane) Send(n uint64) {
	if n == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	for _, e := range d.sas {
		d.sendLocked(e, n)
	}
}

func (d *Dataplane) sendLocked(e *entry, n uint64) {
	e.seq += n
	if !e.outbound {
		return
	}
	first := e.oseq + 1
	e.oseq += n
	d.wire.send(d.node, e.sa.Out.SPI, first, e.oseq)
}

// SendSome transmits n packets on at most max SAs, taking the SAs in turn
// from where the last call stopped: traffic whose cost per call is bounded
// however many tunnels there are. It returns how many SAs it sent on.
//
// Real ESP runs in the kernel, not in the agent's process; the demo and the
// load tests use SendSome so that the stand-in's own work does not starve
// the agents it stands beside (Send on 100,000 SAs every 2 ms was most of
// the demo's CPU).
func (d *Dataplane) SendSome(n uint64, max int) int {
	if n == 0 || max <= 0 {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped || len(d.ring) == 0 {
		return 0
	}
	sent := 0
	for visited := 0; sent < max && visited < len(d.ring); visited++ {
		if d.cursor >= len(d.ring) {
			d.compactLocked()
			if len(d.ring) == 0 {
				break
			}
		}
		e := d.ring[d.cursor]
		d.cursor++
		if e.id == "" {
			continue
		}
		d.sendLocked(e, n)
		sent++
	}
	return sent
}

// compactLocked drops deleted SAs from the ring and starts a new round.
func (d *Dataplane) compactLocked() {
	live := d.ring[:0]
	for _, e := range d.ring {
		if e.id != "" {
			live = append(live, e)
		}
	}
	clear(d.ring[len(live):])
	d.ring, d.cursor = live, 0
}

// Crash stops the node dead: no more packets, no more events, nothing
// cleaned up (its outbound SAs stay "installed" but nothing runs them).
func (d *Dataplane) Crash() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
}

// Outbound returns the IDs of SAs this node can send on.
func (d *Dataplane) Outbound() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	for id, e := range d.sas {
		if e.outbound {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// OSeq returns the last outbound sequence number sent on SA id.
func (d *Dataplane) OSeq(id string) (uint64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.sas[id]
	if !ok {
		return 0, false
	}
	return e.oseq, true
}

// Count returns how many SAs the node holds.
func (d *Dataplane) Count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sas)
}

// FencedAt is when Fence last ran (zero if never).
func (d *Dataplane) FencedAt() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fenced
}

// Export returns every SA the node holds.
func (d *Dataplane) Export(ctx context.Context) ([]*sa.ChildSA, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("exporting SAs: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*sa.ChildSA, 0, len(d.sas))
	for _, e := range d.sas {
		out = append(out, e.sa)
	}
	return out, nil
}

// Watch delivers changes until ctx ends.
func (d *Dataplane) Watch(ctx context.Context, out chan<- sa.Change) error {
	sub := &subscriber{overflowed: make(chan struct{})}
	d.mu.Lock()
	d.subs[out] = sub
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.subs, out)
		d.mu.Unlock()
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-sub.overflowed:
		return ErrOverflow
	}
}

// Replay reads the counters of every SA.
func (d *Dataplane) Replay(ctx context.Context) ([]sa.Replay, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("reading replay state: %w", err)
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]sa.Replay, 0, len(d.sas))
	for id, e := range d.sas {
		out = append(out, sa.Replay{ID: id, OSeq: e.oseq, Seq: e.seq, ReadAt: now})
	}
	return out, nil
}

// Install installs SAs, outbound starting after OSeq. Installing an SA that
// is present replaces it (an upsert), as the XFRM dataplane does.
func (d *Dataplane) Install(ctx context.Context, sas []sa.Install) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("installing SAs: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, in := range sas {
		if err := in.SA.Validate(); err != nil {
			return fmt.Errorf("installing SA: %w", err)
		}
		d.putLocked(in.SA, &entry{sa: in.SA, oseq: in.OSeq, seq: in.Replay.Seq, outbound: true})
	}
	d.stopped = false
	return nil
}

// Reestablish stands in for re-initiating the peers' IKE SAs after a
// takeover (there are no IKE SAs in memory): it counts the calls, so tests
// can tell when a node did it.
func (d *Dataplane) Reestablish(ctx context.Context, sas []*sa.ChildSA) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reestablished++
	return nil
}

// Reestablished returns how many times Reestablish ran.
func (d *Dataplane) Reestablished() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reestablished
}

// Fence removes every outbound SA.
func (d *Dataplane) Fence(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.sas {
		e.outbound = false
	}
	d.fenced = time.Now()
	return nil
}

// Synthetic returns n CHILD_SAs of road-warrior clients terminating on vip,
// with random AES-GCM keys: the tunnels of the demo and the tests.
func Synthetic(n int, vip netip.Addr) []*sa.ChildSA {
	out := make([]*sa.ChildSA, n)
	base := netip.MustParseAddr("198.51.100.0").As4()
	for i := range out {
		peer := netip.AddrFrom4([4]byte{base[0], base[1], byte(100 + i/250), byte(1 + i%250)})
		if i >= 250*100 {
			peer = netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		}
		inner := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), 32)
		key := func() []byte {
			k := make([]byte, 20) // AES-128 key + 4-byte salt
			_, _ = rand.Read(k)
			return k
		}
		state := func(src, dst netip.Addr, spi uint32) sa.State {
			return sa.State{Src: src, Dst: dst, Proto: sa.ProtoESP, SPI: spi, Mode: sa.ModeTunnel, Reqid: uint32(i + 1),
				ReplayWindow: 32, AEAD: &sa.Algo{Name: "rfc4106(gcm(aes))", Key: key(), ICVBits: 128},
				Encap: &sa.Encap{Type: sa.EncapESPInUDP, SrcPort: 4500, DstPort: 4500}}
		}
		in := state(peer, vip, 0xc0000000|uint32(i+1))
		outS := state(vip, peer, 0x80000000|uint32(i+1))
		outS.Encap = &sa.Encap{Type: sa.EncapESPInUDP, SrcPort: 4500, DstPort: 4500}
		c := &sa.ChildSA{
			ID: sa.MakeID(in),
			IKE: sa.IKE{UniqueID: uint32(i + 1), Name: "rw", LocalID: "vpn.example", RemoteID: fmt.Sprintf("client-%d", i+1),
				Local: netip.AddrPortFrom(vip, 4500), Remote: netip.AddrPortFrom(peer, 4500), NATRemote: true},
			Child: sa.Child{Name: "net", UniqueID: uint32(i + 1), LocalTS: []string{"198.18.1.0/24"}, RemoteTS: []string{inner.String()}},
			In:    in, Out: outS,
			Policies: []sa.Policy{
				{Dir: sa.DirOut, Selector: sa.Selector{Src: netip.MustParsePrefix("198.18.1.0/24"), Dst: inner},
					Templates: []sa.Template{{Src: vip, Dst: peer, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: uint32(i + 1)}}},
				{Dir: sa.DirIn, Selector: sa.Selector{Src: inner, Dst: netip.MustParsePrefix("198.18.1.0/24")},
					Templates: []sa.Template{{Src: peer, Dst: vip, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: uint32(i + 1)}}},
			},
		}
		out[i] = c
	}
	return out
}
