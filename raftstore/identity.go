package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// What a peer may do once TLS has authenticated it (issue 17).
//
// The handshake proves that the peer holds a key the cluster CA certified
// for a node ID (its certificate's CN), and tls.allowed_nodes and
// tls.deny_serials narrow which certificates get that far. That alone
// said nothing about what the peer may do: hashicorp/raft believes the
// identity an RPC claims (RPCHeader.ID and Addr, and the older Leader and
// Candidate fields), so gw2's certificate could speak as the leader
// "ghost", and any certificate the CA signed could run the cluster RPC's
// operator requests. peerAuthz holds the rules the transport applies to
// every RPC before Raft or an RPC handler sees it:
//
//   - the identity an RPC claims is its certificate's node ID, and the
//     address it claims is the one the Raft configuration has for it;
//   - that node is in this node's latest Raft configuration: membership is
//     the authorisation, so a certificate the CA signed for a node that is
//     not (or no longer) a member can do nothing but join;
//   - joining is the bounded exception. Any authenticated node may call
//     the cluster RPC "join", as itself (Store.handleRPC) and without
//     taking another member's address (Store.Join). A node that is joining
//     accepts AppendEntries and InstallSnapshot, and nothing else, from
//     the node it sent its join to, until that node appears in its own
//     configuration: the leader starts replicating to a new voter before
//     it answers the join, and the new node has no configuration yet to
//     check it against;
//   - a node whose configuration lags (it has not yet received the entry
//     that added the node now leading, as a node that just joined often
//     has not) asks the members it knows whether the sender of a
//     replication RPC is in their configuration, and at which address
//     (vouch). A member's word is enough: a member can already lead this
//     node as itself, so believing it adds no power, and without it such
//     a node would refuse its leader for ever.
type peerAuthz struct {
	self string
	// raft is set once Raft runs; until then every RPC is refused (there
	// is no configuration to check it against).
	raft atomic.Pointer[raft.Raft]
	// ask asks the node id at addr whether peer is in its configuration
	// (Store.askMember).
	ask func(ctx context.Context, id, addr, peer string) (peerAddr string, member bool, err error)
	log *slog.Logger

	mu sync.Mutex
	// joinVia holds the nodes this node sent a join to (see expectJoin),
	// with the address it reached them at.
	joinVia map[string]string
	// vouches caches what the members said about a peer, and asking
	// holds the asks in flight (one per peer; others wait for it).
	vouches map[string]vouch
	asking  map[string]chan struct{}
}

// vouch is what the members said about a peer: whether one of them has it
// in its configuration, at which address, and until when to believe it.
type vouch struct {
	member bool
	addr   string
	until  time.Time
}

const (
	// vouchFor is how long a member's word is taken before it is asked
	// again (the peer will normally be in this node's own configuration
	// long before).
	vouchFor = 30 * time.Second
	// refuteFor is how long "no member has it" stands: it bounds how
	// often a non-member's RPCs make this node ask the members.
	refuteFor = 2 * time.Second
	// askTimeout bounds one member's answer; vouchTimeout all of them.
	askTimeout   = 500 * time.Millisecond
	vouchTimeout = 2 * time.Second
	// maxVouches bounds the cache: each key is a certificate's CN.
	maxVouches = 256
)

func newPeerAuthz(self string, log *slog.Logger) *peerAuthz {
	return &peerAuthz{self: self, log: log, joinVia: make(map[string]string),
		vouches: make(map[string]vouch), asking: make(map[string]chan struct{})}
}

// errNotRunning: an RPC arrived before Raft started on this node.
var errNotRunning = errors.New("raft is not running on this node yet")

// configuration is this node's latest Raft configuration (committed or
// not: the one Raft itself goes by). Reading it does not wait for Raft's
// main loop.
func (a *peerAuthz) configuration() ([]raft.Server, error) {
	r := a.raft.Load()
	if r == nil {
		return nil, errNotRunning
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("reading the raft configuration: %w", err)
	}
	return f.Configuration().Servers, nil
}

// member returns id's entry in the configuration, if it has one.
func (a *peerAuthz) member(id string) (raft.Server, bool, error) {
	servers, err := a.configuration()
	if err != nil {
		return raft.Server{}, false, err
	}
	for _, s := range servers {
		if string(s.ID) == id {
			return s, true, nil
		}
	}
	return raft.Server{}, false, nil
}

// known reports whether peer may be heard at all now: a member, the node
// a join went to, or one a member vouched for.
func (a *peerAuthz) known(peer string) bool {
	if _, ok, _ := a.member(peer); ok {
		return true
	}
	if a.joiningVia(peer) {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.vouches[peer]
	return ok && v.member && time.Now().Before(v.until)
}

// expectJoin is called when this node is about to send a join to peer at
// addr, after the handshake that proved who peer is and before the
// request: from then on peer's replication RPCs are accepted (see
// peerAuthz). It reports whether peer was not expected already.
func (a *peerAuthz) expectJoin(peer, addr string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, had := a.joinVia[peer]
	a.joinVia[peer] = addr
	return !had
}

// forgetJoin withdraws expectJoin: the join went nowhere (refused, or
// the node was not the leader).
func (a *peerAuthz) forgetJoin(peer string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.joinVia, peer)
}

// forget drops what a join or the members said about peer: it is in this
// node's configuration now, which speaks for it from here on (and stops
// speaking for it when it is removed).
func (a *peerAuthz) forget(peer string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.joinVia, peer)
	delete(a.vouches, peer)
}

func (a *peerAuthz) joiningVia(peer string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.joinVia[peer]
	return ok
}

// checkRaft decides whether a Raft RPC that arrived on a connection whose
// certificate names peer may reach Raft. The error says why not, for the
// answer to the sender and the log. It may ask other members (vouched),
// until ctx ends.
func (a *peerAuthz) checkRaft(ctx context.Context, peer string, cmd any) error {
	kind, hdr, sender, replication := describeRPC(cmd)
	if kind == "" {
		return fmt.Errorf("unknown raft RPC %T from %q", cmd, peer)
	}
	if string(hdr.ID) != peer {
		return fmt.Errorf("%s claims to come from %q but its certificate is %q's", kind, hdr.ID, peer)
	}
	if len(hdr.Addr) == 0 {
		return fmt.Errorf("%s from %q carries no address", kind, peer)
	}
	if len(sender) > 0 && !bytes.Equal(sender, hdr.Addr) {
		return fmt.Errorf("%s from %q names %q as its sender but its header says %q", kind, peer, sender, hdr.Addr)
	}
	srv, ok, err := a.member(peer)
	switch {
	case err != nil:
		return fmt.Errorf("%s from %q: %w", kind, peer, err)
	case ok:
		a.forget(peer)
		if string(srv.Address) != string(hdr.Addr) {
			return fmt.Errorf("%s from %q claims address %q but the configuration has %q there", kind, peer, hdr.Addr, srv.Address)
		}
		return nil
	case replication && a.joiningVia(peer):
		// The leader this node asked to join: it has no configuration to
		// show for itself here yet (see peerAuthz). Its address is its
		// own to claim, as a member's would be before it joined.
		return nil
	case replication:
		v := a.vouched(ctx, peer)
		if !v.member {
			break
		}
		if v.addr != string(hdr.Addr) {
			return fmt.Errorf("%s from %q claims address %q but the members have it at %q", kind, peer, hdr.Addr, v.addr)
		}
		return nil
	}
	return fmt.Errorf("%s from %q: %q is not in this node's Raft configuration", kind, peer, peer)
}

// vouched returns what the members say about peer: from the cache, from
// an ask already in flight, or by asking them now (this blocks the one
// connection the RPC came on, at most vouchTimeout).
func (a *peerAuthz) vouched(ctx context.Context, peer string) vouch {
	a.mu.Lock()
	for {
		if v, ok := a.vouches[peer]; ok && time.Now().Before(v.until) {
			a.mu.Unlock()
			return v
		}
		wait, busy := a.asking[peer]
		if !busy {
			break
		}
		a.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return vouch{}
		}
		a.mu.Lock()
	}
	done := make(chan struct{})
	a.asking[peer] = done
	witnesses := a.witnessesLocked(peer)
	a.mu.Unlock()

	v := a.askAround(ctx, peer, witnesses)

	a.mu.Lock()
	if len(a.vouches) >= maxVouches {
		clear(a.vouches)
	}
	a.vouches[peer] = v
	delete(a.asking, peer)
	close(done)
	a.mu.Unlock()
	return v
}

// witness is a node asked to vouch: a member of this node's configuration
// or a node it sent a join to.
type witness struct{ id, addr string }

func (a *peerAuthz) witnessesLocked(peer string) []witness {
	var out []witness
	servers, _ := a.configuration()
	for _, s := range servers {
		if id := string(s.ID); id != a.self && id != peer {
			out = append(out, witness{id: id, addr: string(s.Address)})
		}
	}
	for id, addr := range a.joinVia {
		if id != a.self && id != peer && addr != "" && !slices.ContainsFunc(out, func(w witness) bool { return w.id == id }) {
			out = append(out, witness{id: id, addr: addr})
		}
	}
	return out
}

// askAround asks the witnesses in turn until one has peer in its
// configuration.
func (a *peerAuthz) askAround(ctx context.Context, peer string, witnesses []witness) vouch {
	refuted := vouch{until: time.Now().Add(refuteFor)}
	if a.ask == nil {
		return refuted
	}
	ctx, cancel := context.WithTimeout(ctx, vouchTimeout)
	defer cancel()
	for _, w := range witnesses {
		actx, acancel := context.WithTimeout(ctx, askTimeout)
		addr, ok, err := a.ask(actx, w.id, w.addr, peer)
		acancel()
		if err != nil {
			a.log.Debug("asking a member about a raft peer", "member", w.id, "peer", peer, "err", err)
			continue
		}
		if ok {
			a.log.Info("hearing a raft peer this node's configuration lacks: a member has it", "peer", peer, "address", addr, "member", w.id)
			return vouch{member: true, addr: addr, until: time.Now().Add(vouchFor)}
		}
	}
	return refuted
}

// describeRPC names a Raft request and returns the identity it claims:
// its header, the older sender field that repeats the header's address
// (AppendEntries and InstallSnapshot's Leader, RequestVote's Candidate),
// and whether a leader sends it to replicate (what a joining node takes
// from the node it joined through). kind is "" for a type it does not
// know, which is refused: a Raft upgrade that adds one must add it here.
func describeRPC(cmd any) (kind string, hdr raft.RPCHeader, sender []byte, replication bool) {
	switch c := cmd.(type) {
	case *raft.AppendEntriesRequest:
		//lint:ignore SA1019 raft still reads Leader when Addr is empty, and a forger may set it
		return "AppendEntries", c.RPCHeader, c.Leader, true
	case *raft.InstallSnapshotRequest:
		return "InstallSnapshot", c.RPCHeader, c.Leader, true
	case *raft.RequestVoteRequest:
		//lint:ignore SA1019 raft still reads Candidate when Addr is empty, and a forger may set it
		return "RequestVote", c.RPCHeader, c.Candidate, false
	case *raft.RequestPreVoteRequest:
		return "RequestPreVote", c.RPCHeader, nil, false
	case *raft.TimeoutNowRequest:
		return "TimeoutNow", c.RPCHeader, nil, false
	}
	return "", raft.RPCHeader{}, nil, false
}

// checkCall decides whether a cluster RPC from peer may be served: join
// from any authenticated node (the handler admits it only as the caller
// itself), everything else (leave, ping, health reports, forwarded
// operator requests) only from a member.
func (a *peerAuthz) checkCall(peer, op string) error {
	if op == opJoin {
		return nil
	}
	_, ok, err := a.member(peer)
	if err != nil {
		return fmt.Errorf("cluster RPC %q from %q: %w", op, peer, err)
	}
	if !ok {
		return fmt.Errorf("cluster RPC %q from %q refused: %q is not in this node's Raft configuration, and a non-member may only join", op, peer, peer)
	}
	return nil
}

// checkDialed decides whether the node that answered this node's Raft
// dial to addr is the one the configuration has at addr: a certificate
// the CA signed for another node (an address reassigned, a stale DNS
// entry, an impostor on the path) must not answer, or count as an
// acknowledgement, for a member.
func (a *peerAuthz) checkDialed(addr, peer string) error {
	servers, err := a.configuration()
	if err != nil {
		return fmt.Errorf("checking the raft peer at %s: %w", addr, err)
	}
	for _, s := range servers {
		if string(s.Address) == addr {
			if string(s.ID) != peer {
				return fmt.Errorf("raft peer at %s presented %q's certificate, but the configuration has %q there", addr, peer, s.ID)
			}
			return nil
		}
	}
	return fmt.Errorf("raft peer at %s (%q): no server at that address in the configuration", addr, peer)
}

// refusalLog logs refused peers, at most once per kind of refusal, peer
// and interval, with a count of the ones it left out: a removed node that
// keeps running asks for votes every election timeout, and each try is
// refused.
type refusalLog struct {
	log   *slog.Logger
	every time.Duration

	mu   sync.Mutex
	last map[string]refusal // by what and peer; guarded by mu
}

type refusal struct {
	at    time.Time
	quiet int
}

// maxRefusalPeers bounds refusalLog's memory: each key is a certificate's
// CN, which an attacker with several certificates chooses.
const maxRefusalPeers = 256

func newRefusalLog(log *slog.Logger, every time.Duration) *refusalLog {
	return &refusalLog{log: log, every: every, last: make(map[string]refusal)}
}

// refused logs err for peer (never key material: IDs, serials, addresses
// and the reason only).
func (r *refusalLog) refused(what, peer string, err error, attrs ...any) {
	now := time.Now()
	key := what + "\x00" + peer
	r.mu.Lock()
	e, seen := r.last[key]
	if seen && now.Sub(e.at) < r.every {
		e.quiet++
		r.last[key] = e
		r.mu.Unlock()
		return
	}
	if len(r.last) >= maxRefusalPeers {
		clear(r.last)
	}
	r.last[key] = refusal{at: now}
	r.mu.Unlock()
	args := append([]any{"peer", peer, "err", err}, attrs...)
	if e.quiet > 0 {
		args = append(args, "refused_since_last_logged", e.quiet)
	}
	r.log.Warn("refused "+what, args...)
}
