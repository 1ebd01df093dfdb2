package agent

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/handoffvpn/handoff/agent/ikecarry"
	"github.com/handoffvpn/handoff/ipsec/egress"
	"github.com/handoffvpn/handoff/ipsec/sa"
)

// WithIKEChannel makes the agent carry the gateway's IKE_SAs across
// takeovers through ch, its end of the local charon's ha channel
// (ipsec/hasync.Conn; see package ikecarry): as active it replicates what
// charon reports, as a standby it feeds charon the replicated IKE_SAs,
// and a takeover activates them instead of re-initiating every peer.
func WithIKEChannel(ch ikecarry.Channel) Option {
	return func(a *Agent) { a.ikeCh = ch }
}

// WithIKEReconciler gives the carrier charon's VICI, to repair after a
// kill the message IDs the log lost with the old active (see
// ikecarry.Carrier.Reconcile).
func WithIKEReconciler(src ikecarry.MIDSource) Option { return func(a *Agent) { a.ikeMID = src } }

// ikeReconcileWindow is how long after a takeover message IDs are
// repaired: a peer's retransmissions of a request span under two minutes
// with charon's defaults (five, from 4 s growing by 1.8×), so one that
// was in flight at the kill shows up well within it.
const ikeReconcileWindow = 5 * time.Minute

// reconcileIKE starts the message-ID reconciler for the window; the
// returned channel is closed when it has stopped (ctx's end at the
// latest). With no carrier or no VICI it is closed at once.
func (a *Agent) reconcileIKE(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	if a.ike == nil || a.ikeMID == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		if err := a.ike.Reconcile(ctx, a.ikeMID, ikeReconcileWindow); err != nil && ctx.Err() == nil {
			a.log.Warn("message-ID reconciliation stopped", "err", err)
		}
	}()
	return done
}

// EgressFence keeps a standby from sending ESP (ipsec/egress): with IKE
// continuity its charon holds the carried CHILD_SAs' outbound states at
// sequence number 0 under the active's keys.
type EgressFence interface {
	Block() error
	Lift() error
}

// WithEgressFence sets the ESP egress fence the agent raises when it
// fences and lifts at a takeover once the carried CHILD_SAs' counters
// are jumped.
func WithEgressFence(f EgressFence) Option { return func(a *Agent) { a.egress = f } }

// StrayFencer is optionally implemented by dataplanes (ipsec.Dataplane):
// it deletes outbound states it did not install (see activateIKE).
type StrayFencer interface {
	FenceStrays(ctx context.Context) error
}

// newIKECarrier builds the carrier once the agent has its store, sealer
// and logger.
func (a *Agent) newIKECarrier() {
	if a.ikeCh == nil {
		return
	}
	a.ike = ikecarry.New(ikecarry.Config{Node: a.cfg.NodeID, ChildrenFed: a.dropStandbyOutbound},
		a.ikeCh, a.store, a.store.FSM(), a.sealer, a.log.With("part", "ike"))
}

// dropStandbyOutbound deletes the outbound states a standby's charon
// installed for the CHILD_SAs it was just fed (at sequence number 0,
// under keys the active uses): a standby keeps none, and a takeover
// installs them from the log with the jumped counters. With the ESP
// egress fence up this is the second guard; where the kernel has no
// nftables inet family (the lab guest) it is the only one, and a packet
// the standby sent between charon's install and this deletion (a few
// milliseconds) would still leave.
func (a *Agent) dropStandbyOutbound(ctx context.Context) {
	if a.IsActive() {
		return
	}
	if err := a.dp.Fence(ctx); err != nil {
		a.log.Error("deleting the outbound states charon installed on this standby", "err", err)
	}
}

// prepareIKE feeds the local charon the last committed IKE state before
// the takeover installs the CHILD_SAs (see ikecarry.Prepare), and returns
// the CHILD_SAs that state holds (nil without IKE continuity).
func (a *Agent) prepareIKE(ctx context.Context) map[uint32]bool {
	if a.ike == nil {
		return nil
	}
	held, err := a.ike.Prepare(ctx)
	if err != nil {
		a.log.Warn("feeding charon the last IKE state before the install", "err", err)
	}
	return held
}

// retired drops, from the installs of a takeover, the CHILD_SAs of carried
// peers that the carried IKE state does not hold: the peer retired them
// (a rekey's old CHILD_SA), its deletion reached the IKE state before the
// SA set, and installing them would make this node send on an SPI the
// peer deleted (seen in the kernel lab: a kill a second after a CHILD_SA
// rekey broke the tunnel four seconds later). held nil: no IKE state,
// nothing dropped.
func retired(installs []sa.Install, held map[uint32]bool) (keep []sa.Install, dropped int) {
	if held == nil {
		return installs, 0
	}
	carried := map[peerKey]bool{}
	for _, in := range installs {
		if held[in.SA.In.SPI] {
			carried[peerOf(in.SA)] = true
		}
	}
	keep = installs[:0:0]
	for _, in := range installs {
		if carried[peerOf(in.SA)] && !held[in.SA.In.SPI] {
			dropped++
			continue
		}
		keep = append(keep, in)
	}
	return keep, dropped
}

// peerKey names a peer: its IKE address and identity.
type peerKey struct {
	remote netip.AddrPort
	id     string
}

func peerOf(c *sa.ChildSA) peerKey { return peerKey{c.IKE.Remote, c.IKE.RemoteID} }

// runIKE runs the carrier until ctx ends.
func (a *Agent) runIKE(ctx context.Context) {
	if a.ike == nil {
		return
	}
	if err := a.ike.Run(ctx); err != nil {
		a.log.Error("ha channel stopped; IKE_SAs are not carried any more", "err", err)
	}
}

// activateIKE makes the local charon take over the IKE_SAs it holds
// passive. It returns the inbound SPIs of the CHILD_SAs whose IKE_SA came
// with them (nil when none, or when the carrier failed: every peer then
// falls back to re-establishment).
func (a *Agent) activateIKE(ctx context.Context) map[uint32]bool {
	if a.ike == nil {
		return nil
	}
	start := time.Now()
	carried, err := a.ike.Activate(ctx)
	if err != nil {
		a.log.Error("activating the carried IKE_SAs; every peer is re-established instead", "err", err)
		return nil
	}
	// The installed SAs replaced charon's copies with the jumped
	// counters; a CHILD_SA charon holds that the log did not bring still
	// has its outbound state at 0: it goes before the egress fence does.
	if sf, ok := a.dp.(StrayFencer); ok {
		if err := sf.FenceStrays(ctx); err != nil {
			a.log.Error("deleting stray outbound states; the ESP egress fence stays up", "err", err)
			return carried.Children
		}
	}
	if a.egress != nil {
		if err := a.egress.Lift(); err != nil && !errors.Is(err, egress.ErrUnsupported) {
			a.log.Error("lifting the ESP egress fence", "err", err)
		}
	}
	a.log.Info("activated the carried IKE_SAs", "ike_sas", len(carried.IKEs), "child_sas", len(carried.Children), "took", time.Since(start))
	return carried.Children
}

// deactivateIKE makes the local charon hold its IKE_SAs passive: a fenced
// node must not answer a peer (advancing message IDs its successor does
// not know) nor initiate anything.
func (a *Agent) deactivateIKE(ctx context.Context) error {
	var err error
	if a.egress != nil {
		// Up before charon can be fed anything (this runs at start too).
		switch berr := a.egress.Block(); {
		case errors.Is(berr, egress.ErrUnsupported):
			a.egressOnce.Do(func() {
				a.log.Warn("no ESP egress fence on this kernel; a standby deletes the outbound states its charon installs instead", "err", berr)
			})
		case berr != nil:
			err = berr
		}
	}
	if a.ike == nil {
		return err
	}
	return errors.Join(err, a.ike.Deactivate(ctx))
}

// quiesceIKE readies a planned hand-over (see ikecarry.Quiesce); on error
// the hand-over goes on, and the successor's reconciliation of message IDs
// is what is left.
func (a *Agent) quiesceIKE(ctx context.Context) {
	if a.ike == nil || !a.IsActive() {
		return
	}
	if err := a.ike.Quiesce(ctx); err != nil {
		a.log.Warn("readying the IKE_SAs for the hand-over", "err", err)
	}
}

// resumeIKE undoes quiesceIKE after a hand-over that did not happen.
func (a *Agent) resumeIKE(ctx context.Context) {
	if a.ike == nil || !a.IsActive() {
		return
	}
	if err := a.ike.Resume(ctx); err != nil {
		a.log.Error("making the IKE_SAs active again after a failed hand-over", "err", err)
	}
}

// notCarried returns the SAs of the peers whose IKE_SA the takeover did
// not carry: those are re-established. A peer is carried whole when any
// of its CHILD_SAs is (they share its IKE_SA).
func notCarried(sas []*sa.ChildSA, carried map[uint32]bool) []*sa.ChildSA {
	if len(carried) == 0 {
		return sas
	}
	held := map[peerKey]bool{}
	for _, c := range sas {
		if carried[c.In.SPI] {
			held[peerOf(c)] = true
		}
	}
	var out []*sa.ChildSA
	for _, c := range sas {
		if !held[peerOf(c)] {
			out = append(out, c)
		}
	}
	return out
}
