package agent

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"time"

	"github.com/handoffvpn/handoff/internal/bulk"
	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/raftstore"
)

// installReplicated installs every replicated SA with its outbound sequence
// number jumped ahead. It returns the SAs and their plaintext hashes (the
// feed's starting point). SAs the standby stager already opened and
// decoded (see stager) are taken from it, so a takeover decodes only what
// changed since the last staging round.
//
// held, when not nil, is the set of CHILD_SAs (inbound SPIs) the carried
// IKE state holds; replicated CHILD_SAs of carried peers outside it are
// not installed (see retired). Their hashes stay: the log holds them
// until the feed deletes them.
func (a *Agent) installReplicated(ctx context.Context, held map[uint32]bool) ([]*sa.ChildSA, map[string][32]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.InstallTimeout)
	defer cancel()
	p, err := prepareInstall(ctx, a.store.FSM(), a.sealer, a.cfg, time.Now(), a.lane, a.staged)
	if err != nil {
		return nil, nil, fmt.Errorf("preparing %d replicated SAs: %w", len(p.Installs), err)
	}
	if len(p.Errs) > 0 {
		// An SA this node cannot read is lost to it; say so loudly but carry
		// every other tunnel.
		a.log.Error("some replicated SAs could not be opened", "count", len(p.Errs), "first", p.Errs[0])
	}
	if p.FromStage > 0 {
		a.log.Debug("takeover used staged SAs", "staged", p.FromStage, "decoded", len(p.Installs)-p.FromStage)
	}
	var dropped int
	if p.Installs, dropped = superseded(p.Installs); dropped > 0 {
		a.log.Info("not installing replicated CHILD_SAs a rekey replaced", "count", dropped)
	}
	if p.Installs, dropped = retired(p.Installs, held); dropped > 0 {
		a.log.Info("not installing replicated CHILD_SAs their peer retired (the carried IKE state holds none of them)", "count", dropped)
	}
	if err := a.dp.Install(ctx, p.Installs); err != nil {
		return nil, nil, fmt.Errorf("installing %d replicated SAs: %w", len(p.Installs), err)
	}
	sas := make([]*sa.ChildSA, len(p.Installs))
	for i := range p.Installs {
		sas[i] = p.Installs[i].SA
	}
	return sas, p.Hashes, nil
}

// PreparedInstall is the replicated SA set made ready for a takeover.
type PreparedInstall struct {
	// Installs holds every SA that could be opened, each with its
	// outbound sequence number started by SeqStart.
	Installs []sa.Install
	// Hashes is the plaintext hash per SA: the feed's starting point.
	Hashes map[string][32]byte
	// Errs names the SAs that could not be unsealed or decoded.
	Errs []error
	// FromStage counts the SAs taken already decoded from the stager.
	FromStage int
}

// PrepareInstall copies the replicated SAs and replay states out of fsm,
// unseals and decodes each SA and starts its outbound sequence number past
// anything the old active can have sent (SeqStart with cfg's jump
// settings; the staleness counted includes the hand-over grace, during
// which an old active that handed over on purpose still sends). It is the
// CPU part of a takeover's install phase; the performance driver measures
// it on its own.
func PrepareInstall(fsm *raftstore.FSM, sealer *raftstore.Sealer, cfg Config, now time.Time) PreparedInstall {
	p, _ := prepareInstall(context.Background(), fsm, sealer, cfg, now, nil, nil)
	return p
}

// prepareInstall is PrepareInstall in lane, taking decoded SAs from staged
// where their log index still matches. It ends early only when ctx does.
func prepareInstall(ctx context.Context, fsm *raftstore.FSM, sealer *raftstore.Sealer, cfg Config, now time.Time,
	lane *bulk.Lane, staged *stage) (PreparedInstall, error) {
	cfg.Defaults()
	var (
		entries []raftstore.SAEntry
		replay  map[string]raftstore.ReplayRecord
	)
	fsm.View(func(st *raftstore.State) {
		entries = make([]raftstore.SAEntry, 0, len(st.SAs))
		for _, e := range st.SAs {
			entries = append(entries, *e)
		}
		replay = make(map[string]raftstore.ReplayRecord, len(st.Replay))
		for id, r := range st.Replay {
			replay[id] = r
		}
	})
	p := PreparedInstall{Installs: make([]sa.Install, 0, len(entries)), Hashes: make(map[string][32]byte, len(entries))}
	err := lane.RunUrgent(ctx, len(entries), func(i int) error {
		e := &entries[i]
		var (
			c *sa.ChildSA
			h [32]byte
		)
		if staged != nil {
			if dc, dh, ok := staged.decoded(e.ID, e.Index); ok {
				c, h = dc, dh
				p.FromStage++
			}
		}
		if c == nil {
			pt, err := sealer.Open(e.ID, e.Sealed)
			if err != nil {
				p.Errs = append(p.Errs, err)
				return nil
			}
			c, err = sa.Unmarshal(pt)
			h = sha256.Sum256(pt)
			clear(pt)
			if err != nil {
				p.Errs = append(p.Errs, fmt.Errorf("decoding SA %s: %w", e.ID, err))
				return nil
			}
		}
		r := replay[e.ID]
		start := SeqStart(r.OSeq, fsm.AppliedAt(e.ID), now, cfg.ReplayInterval+cfg.HandoverGrace, cfg.MaxPacketRate, cfg.MinSeqJump)
		p.Installs = append(p.Installs, sa.Install{SA: c, OSeq: start,
			Replay: sa.Replay{ID: e.ID, OSeq: r.OSeq, Seq: r.Seq, Bitmap: r.Bitmap, ReadAt: r.ReadAt}})
		p.Hashes[e.ID] = h
		return nil
	})
	return p, err
}

// superseded is the takeover's guard behind the export's own rule
// (ipsec.rekeySuccessors: a REKEYED CHILD_SA is not exported once its
// successor is installed), for a log an older node wrote or a feed that
// had not listed again yet. It drops, from the installs, every CHILD_SA that
// a newer one of the same peer, name and traffic selectors replaced: a
// rekey's old CHILD_SA, which the old active still listed (its inbound
// state lingers for charon's delete_rekeyed_delay, 5 s, to catch
// stragglers) but no longer sent on, and whose peer deletes its own
// inbound copy at the end of that delay. Installed, it made the new active
// send on it: in the kernel lab a kill one second after a CHILD_SA rekey
// broke the tunnel four seconds later. Only packets in flight at the
// rekey, long before the takeover, could still need it.
func superseded(installs []sa.Install) (keep []sa.Install, dropped int) {
	// Most peers have one CHILD_SA: only those with more are looked at
	// closer (a takeover of 100,000 tunnels runs this in its critical
	// path).
	perPeer := make(map[peerKey]int, len(installs))
	shared := false
	for _, in := range installs {
		k := peerOf(in.SA)
		perPeer[k]++
		shared = shared || perPeer[k] > 1
	}
	if !shared {
		return installs, 0
	}
	type gen struct {
		peer     peerKey
		name, ts string
	}
	key := func(c *sa.ChildSA) gen {
		return gen{peerOf(c), c.Child.Name, strings.Join(c.Child.LocalTS, ",") + "|" + strings.Join(c.Child.RemoteTS, ",")}
	}
	newest := map[gen]time.Time{}
	for _, in := range installs {
		if perPeer[peerOf(in.SA)] < 2 {
			continue
		}
		k := key(in.SA)
		if t := in.SA.Child.InstalledAt; t.After(newest[k]) {
			newest[k] = t
		}
	}
	keep = installs[:0:0]
	for _, in := range installs {
		if perPeer[peerOf(in.SA)] > 1 && in.SA.Child.InstalledAt.Before(newest[key(in.SA)]) {
			dropped++
			continue
		}
		keep = append(keep, in)
	}
	return keep, dropped
}
