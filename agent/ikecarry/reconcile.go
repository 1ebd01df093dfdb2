package ikecarry

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/handoffvpn/handoff/ipsec/hasync"
	"github.com/handoffvpn/handoff/ipsec/vici"
)

// MIDSource is the new active's charon over VICI (ipsec/vici.Client): its
// log names the requests it ignores for their message ID, its listing the
// IKE_SA a log line is about.
type MIDSource interface {
	Subscribe(ctx context.Context, events ...vici.EventKind) (*vici.Subscription, error)
	ListSAs(ctx context.Context, f vici.ListFilter) ([]vici.IKESA, error)
}

// ignoredMID is charon 5.9's line for a message whose ID is not the one
// it expects (task_manager_v2.c, process_message), before it decrypts it.
var ignoredMID = regexp.MustCompile(`^received message ID (\d+), expected (\d+), ignored$`)

// Reconcile repairs, for window after a takeover, the message IDs the log
// lost with the old active (docs/design/ike-continuity.md §2.5). The old
// active reports a request's message ID before it answers it; after a
// kill, the report of the last request can be missing (the peer then
// sends the next ID, one ahead) or the answer can be (the peer retransmits
// the last ID, one behind). charon ignores both, forever. On charon's
// "received message ID X, expected Y, ignored" for an IKE_SA it carried,
// with X one off Y, the carrier tells charon to expect X (the plugin's
// IKE_MID_RESPONDER): the peer's retransmission is then processed. Once
// per IKE_SA: a second mismatch is not a lost report. The ID is not
// authenticated (charon decides before decrypting), which bounds what an
// on-path attacker gains to a shift of one, once, within the window.
func (c *Carrier) Reconcile(ctx context.Context, src MIDSource, window time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	sub, err := src.Subscribe(ctx, vici.Log)
	if err != nil {
		return fmt.Errorf("reconciling message IDs: subscribing to charon's log: %w", err)
	}
	defer sub.Close()
	repaired := map[uint32]bool{}
	for {
		ev, err := sub.Next(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, vici.ErrMalformed):
			continue
		case err != nil:
			return fmt.Errorf("reconciling message IDs: reading charon's log: %w", err)
		}
		l := ev.Log
		if l == nil || l.IKEUniqueID == 0 || repaired[l.IKEUniqueID] {
			continue
		}
		m := ignoredMID.FindStringSubmatch(l.Msg)
		if m == nil {
			continue
		}
		got, err1 := strconv.ParseUint(m[1], 10, 32)
		want, err2 := strconv.ParseUint(m[2], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		if got != want+1 && got+1 != want {
			c.slog.Warn("ha channel: a peer's message ID is too far off to repair; it will restart its IKE_SA", "ike_sa", l.IKEName, "unique_id", l.IKEUniqueID, "received", got, "expected", want)
			repaired[l.IKEUniqueID] = true
			continue
		}
		id, ok, err := c.carriedIKE(ctx, src, l.IKEUniqueID)
		if err != nil {
			c.slog.Warn("ha channel: looking up an IKE_SA whose message ID is off", "unique_id", l.IKEUniqueID, "err", err)
			continue
		}
		repaired[l.IKEUniqueID] = true
		if !ok {
			continue
		}
		if err := c.ch.Send(ctx, [][]byte{hasync.MIDResponderMessage(id, uint32(got))}, 0); err != nil {
			return fmt.Errorf("reconciling message IDs: %w", err)
		}
		c.slog.Info("ha channel: repaired a carried IKE_SA's message ID lost with the old active", "ike_sa", l.IKEName, "unique_id", l.IKEUniqueID, "expected", want, "now", got)
	}
}

// carriedIKE finds the carried IKE_SA charon lists under uniqueID.
func (c *Carrier) carriedIKE(ctx context.Context, src MIDSource, uniqueID uint32) (hasync.IKEID, bool, error) {
	sas, err := src.ListSAs(ctx, vici.ListFilter{IKEID: uniqueID})
	if err != nil {
		return hasync.IKEID{}, false, err
	}
	if len(sas) != 1 {
		return hasync.IKEID{}, false, nil
	}
	var spii, spir [8]byte
	binary.BigEndian.PutUint64(spii[:], sas[0].InitiatorSPI)
	binary.BigEndian.PutUint64(spir[:], sas[0].ResponderSPI)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.active {
		return hasync.IKEID{}, false, nil
	}
	ikes, _ := c.lineage.Live()
	for _, id := range ikes {
		if id.SPIi == spii && id.SPIr == spir {
			return id, true, nil
		}
	}
	return hasync.IKEID{}, false, nil
}
