package ipsec

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/ipsec/vici"
)

// Watch follows charon's SA events and sends every change of the exported
// SA set to out until ctx ends.
//
// Events only say which IKE SAs to look at: after a short debounce the
// touched IKE SAs are listed again (one listing for all when there are
// many) together with their kernel states, and the result is compared
// with what was reported before. That makes the order of events, and a
// lost event, harmless. CHILD_SAs whose kernel states are not all there
// yet (a rekey installs the new outbound state late) are read again
// shortly after. A full resync runs when Watch starts, after charon
// restarted, and every Config.Reconcile.
//
// When charon goes away Watch reconnects for up to Config.ReconnectWait;
// after that it returns an error wrapping vici.ErrUnavailable.
func (d *Dataplane) Watch(ctx context.Context, out chan<- sa.Change) error {
	for {
		sub, err := d.subscribe(ctx)
		if err != nil {
			return err
		}
		err = d.watchSession(ctx, sub, out)
		_ = sub.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, vici.ErrUnavailable) {
			return err
		}
		d.log.Warn("ipsec: lost charon's event session; reconnecting", "err", err)
	}
}

// subscribe connects the event session, retrying with backoff for up to
// ReconnectWait.
func (d *Dataplane) subscribe(ctx context.Context) (*vici.Subscription, error) {
	deadline := time.Now().Add(d.cfg.ReconnectWait)
	backoff := 50 * time.Millisecond
	for {
		sub, err := d.vici.Subscribe(ctx)
		if err == nil {
			return sub, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if time.Now().Add(backoff).After(deadline) {
			return nil, fmt.Errorf("ipsec: subscribing to charon's SA events: %w", err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second)
	}
}

// eventOrErr is one result of Subscription.Next, read by a helper
// goroutine so the main loop can also wait on timers.
type eventOrErr struct {
	ev  vici.Event
	err error
}

func (d *Dataplane) watchSession(ctx context.Context, sub *vici.Subscription, out chan<- sa.Change) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan eventOrErr)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			ev, err := sub.Next(ctx)
			select {
			case events <- eventOrErr{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil && !errors.Is(err, vici.ErrMalformed) {
				return
			}
		}
	}()
	defer func() {
		cancel()
		<-readerDone
	}()

	// A new session may have missed anything: start with a full resync.
	if err := d.resync(ctx, out); err != nil {
		return err
	}
	reconcile := time.NewTicker(d.cfg.Reconcile)
	defer reconcile.Stop()
	dirty := map[uint32]bool{}
	retries := map[uint32]int{}
	full := false
	var debounce <-chan time.Time
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-events:
			if r.err != nil {
				if errors.Is(r.err, vici.ErrMalformed) {
					d.log.Warn("ipsec: unreadable SA event; resyncing", "err", r.err)
					full = true
				} else {
					return r.err
				}
			} else {
				for _, id := range touched(&r.ev) {
					dirty[id] = true
				}
			}
			if debounce == nil {
				debounce = time.After(d.cfg.Debounce)
			}
		case <-retry:
			retry = nil
			for id := range retries {
				dirty[id] = true
			}
			if debounce == nil {
				debounce = time.After(0)
			}
		case <-reconcile.C:
			full = true
			if debounce == nil {
				debounce = time.After(0)
			}
		case <-debounce:
			debounce = nil
			var incomplete []uint32
			var err error
			if full || len(dirty) > d.cfg.BulkThreshold {
				incomplete, err = d.sync(ctx, nil, out)
			} else {
				incomplete, err = d.sync(ctx, dirty, out)
			}
			if err != nil {
				return err
			}
			full = false
			clear(dirty)
			next := map[uint32]int{}
			for _, id := range incomplete {
				if n := retries[id] + 1; n <= d.cfg.IncompleteRetries {
					next[id] = n
				} else {
					d.log.Warn("ipsec: CHILD_SA kernel state still incomplete; leaving it to the next resync", "ike", id)
				}
			}
			retries = next
			if len(retries) > 0 && retry == nil {
				retry = time.After(d.cfg.IncompleteRetry)
			}
		}
	}
}

// touched returns the IKE SAs an event concerns.
func touched(ev *vici.Event) []uint32 {
	ids := []uint32{ev.IKE.UniqueID}
	if ev.OldIKE != nil {
		ids = append(ids, ev.OldIKE.UniqueID)
	}
	return ids
}

func (d *Dataplane) resync(ctx context.Context, out chan<- sa.Change) error {
	_, err := d.sync(ctx, nil, out)
	return err
}

// sync reads the IKE SAs in dirty (all when dirty is nil) and the kernel
// tables, reports the differences with what was reported before, and
// returns the IKE SAs with incomplete CHILD_SAs.
func (d *Dataplane) sync(ctx context.Context, dirty map[uint32]bool, out chan<- sa.Change) ([]uint32, error) {
	var ikes []vici.IKESA
	if dirty == nil {
		list, err := d.vici.ListSAs(ctx, vici.ListFilter{})
		if err != nil {
			return nil, err
		}
		ikes = list
	} else {
		for id := range dirty {
			list, err := d.vici.ListSAs(ctx, vici.ListFilter{IKEID: id})
			if err != nil {
				return nil, err
			}
			ikes = append(ikes, list...)
		}
	}
	if dirty == nil {
		if err := d.retireDue(ctx); err != nil {
			d.log.Warn("ipsec: removing retired inbound copies", "err", err)
		}
	}
	snap, err := d.readKernel(ctx)
	if err != nil {
		return nil, err
	}
	found, incomplete := d.assembleAll(ikes, snap)
	if dirty == nil {
		d.addInstalled(found, snap)
	}

	var changes []sa.Change
	d.mu.Lock()
	for id, k := range found {
		old, ok := d.known[id]
		if !ok || old.fp != k.fp {
			changes = append(changes, sa.Change{Op: sa.Upsert, ID: id, SA: k.sa})
		}
		d.known[id] = k
	}
	for id, old := range d.known {
		if _, ok := found[id]; ok {
			continue
		}
		// Gone if it belonged to an IKE SA that was read again; in a full
		// resync everything not found is gone.
		if dirty == nil || (old.ikeID != 0 && dirty[old.ikeID]) {
			changes = append(changes, sa.Change{Op: sa.Delete, ID: id})
			delete(d.known, id)
		}
	}
	if dirty == nil {
		d.synced = true
	}
	d.mu.Unlock()

	for _, c := range changes {
		select {
		case out <- c:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return incomplete, nil
}
