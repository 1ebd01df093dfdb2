package vici

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/ipsec/vici/internal/wire"

	govici "github.com/strongswan/govici/vici"
)

// EventKind names a VICI event.
type EventKind string

// The SA lifecycle events Handoff follows.
const (
	IKEUpdown   EventKind = "ike-updown"
	IKERekey    EventKind = "ike-rekey"
	ChildUpdown EventKind = "child-updown"
	ChildRekey  EventKind = "child-rekey"
	// Log is charon's log, as far as its vici logger forwards it (levels
	// up to 1); see Event.Log.
	Log EventKind = "log"
)

// SAEvents are the events a dataplane needs to follow SA changes.
var SAEvents = []EventKind{IKEUpdown, IKERekey, ChildUpdown, ChildRekey}

// Event is one parsed SA event.
type Event struct {
	Kind EventKind
	// Up is set for ike-updown and child-updown when the SA came up.
	Up bool
	// IKE is the IKE SA of the event: for child-updown with the affected
	// CHILD_SA as its only child; for ike-rekey the new IKE SA.
	IKE IKESA
	// OldIKE is the replaced IKE SA of an ike-rekey.
	OldIKE *IKESA
	// OldChild and NewChild are the CHILD_SAs of a child-rekey.
	OldChild, NewChild *ChildSA
	// Log is the entry of a log event.
	Log *LogEntry
	// Received is when the client read the event; charon's relative times
	// in it are anchored here.
	Received time.Time
}

// LogEntry is one log message of charon (a log event).
type LogEntry struct {
	Group string // IKE, ENC, CFG, ...
	Level int
	// IKEName and IKEUniqueID name the IKE_SA the message is about, if
	// any (IKEUniqueID 0: none).
	IKEName     string
	IKEUniqueID uint32
	Msg         string
}

// eventBuffer is how many events a Subscription holds before it stops
// reading from charon (charon then queues them on its side: nothing is
// dropped).
const eventBuffer = 4096

// Subscription receives events on a session of its own.
//
// It does not use govici's Subscribe: govici v0.8.0 holds its event lock
// while it waits for a registration to be confirmed, and its reader takes
// the same lock to dispatch an event, so an event that arrives between two
// registrations (ike-updown while child-updown is being registered)
// deadlocks the session for good. The event session is simple enough to
// speak directly: register, then read.
type Subscription struct {
	conn net.Conn
	ch   chan govici.Event
	// broken is closed when the reader stopped; err says why.
	broken chan struct{}
	err    error
	done   chan struct{}

	closeOnce sync.Once
	wg        sync.WaitGroup
}

// Subscribe opens a new session and registers for events (SAEvents if none
// are given). Commands keep running on the Client's own session.
func (c *Client) Subscribe(ctx context.Context, events ...EventKind) (*Subscription, error) {
	if len(events) == 0 {
		events = SAEvents
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	var d net.Dialer
	conn, err := d.DialContext(dctx, "unix", c.cfg.Socket)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("vici subscribe: connecting to charon at %s: %w: %w", c.cfg.Socket, ErrUnavailable, err)
	}
	// Registration is bounded by ctx and CallTimeout: close the
	// connection when either ends, which fails the pending read or write.
	rctx, rcancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer rcancel()
	stop := context.AfterFunc(rctx, func() { _ = conn.Close() })
	early, err := register(conn, events)
	if !stop() {
		_ = conn.Close()
		return nil, fmt.Errorf("vici subscribe: %w", rctx.Err())
	}
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("vici subscribe: %w", err)
	}
	sub := &Subscription{
		conn:   conn,
		ch:     make(chan govici.Event, eventBuffer+len(early)),
		broken: make(chan struct{}),
		done:   make(chan struct{}),
	}
	for _, ev := range early {
		sub.ch <- ev
	}
	sub.wg.Add(1)
	go sub.read()
	return sub, nil
}

// register registers every event and returns the events that arrived
// before the last confirmation.
func register(conn net.Conn, events []EventKind) ([]govici.Event, error) {
	var early []govici.Event
	for _, e := range events {
		if err := wire.WritePacket(conn, wire.Packet{Type: wire.EventRegister, Name: string(e)}); err != nil {
			return nil, fmt.Errorf("registering %s: %w: %w", e, ErrUnavailable, err)
		}
		for confirmed := false; !confirmed; {
			p, err := wire.ReadPacket(conn)
			if err != nil {
				return nil, fmt.Errorf("registering %s: %w: %w", e, ErrUnavailable, err)
			}
			switch p.Type {
			case wire.EventConfirm:
				confirmed = true
			case wire.EventUnknown:
				return nil, fmt.Errorf("registering %s: %w: charon does not know the event", e, ErrCommandFailed)
			case wire.Event:
				ev, err := toEvent(p)
				if err != nil {
					return nil, err
				}
				early = append(early, ev)
			default:
				return nil, fmt.Errorf("registering %s: %w: unexpected packet type %d", e, ErrMalformed, p.Type)
			}
		}
	}
	return early, nil
}

func toEvent(p wire.Packet) (govici.Event, error) {
	m, err := toMessage(p.Msg)
	if err != nil {
		return govici.Event{}, fmt.Errorf("%w: %s event: %w", ErrMalformed, p.Name, err)
	}
	return govici.Event{Name: p.Name, Message: m, Timestamp: time.Now()}, nil
}

// fromMessage converts a govici Message into a wire message.
func fromMessage(m *govici.Message) (*wire.Msg, error) {
	out := &wire.Msg{}
	if m == nil {
		return out, nil
	}
	for _, k := range m.Keys() {
		switch v := m.Get(k).(type) {
		case string:
			out.Items = append(out.Items, wire.Item{Key: k, Value: v})
		case []string:
			out.Items = append(out.Items, wire.Item{Key: k, IsList: true, List: append([]string(nil), v...)})
		case *govici.Message:
			sub, err := fromMessage(v)
			if err != nil {
				return nil, err
			}
			out.Items = append(out.Items, wire.Item{Key: k, Section: sub})
		default:
			return nil, fmt.Errorf("%s: unsupported element %T", k, v)
		}
	}
	return out, nil
}

// toMessage converts a decoded message into a govici Message, keeping the
// order of its elements, so one parser serves events and command replies.
func toMessage(w *wire.Msg) (*govici.Message, error) {
	m := govici.NewMessage()
	if w == nil {
		return m, nil
	}
	for _, it := range w.Items {
		var v any
		switch {
		case it.Section != nil:
			sub, err := toMessage(it.Section)
			if err != nil {
				return nil, err
			}
			v = sub
		case it.IsList:
			v = append([]string{}, it.List...)
		default:
			v = it.Value
		}
		if err := m.Set(it.Key, v); err != nil {
			return nil, fmt.Errorf("%s: %w", it.Key, err)
		}
	}
	return m, nil
}

func (s *Subscription) read() {
	defer s.wg.Done()
	for {
		p, err := wire.ReadPacket(s.conn)
		if err != nil {
			s.err = err
			close(s.broken)
			return
		}
		if p.Type != wire.Event {
			continue
		}
		ev, err := toEvent(p)
		if err != nil {
			// Hand the broken event on: Next reports it as ErrMalformed.
			ev = govici.Event{Name: p.Name, Timestamp: time.Now()}
		}
		select {
		case s.ch <- ev:
		case <-s.done:
			return
		}
	}
}

// Next returns the next event. It fails with ErrUnavailable when charon
// closed the session (it stopped or restarted), with ErrMalformed for an
// event it cannot parse (the subscription stays usable), with ErrClosed
// after Close, and with the context's error when ctx ends.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	select {
	case <-s.done:
		return Event{}, ErrClosed
	default:
	}
	// Queued events come first, even when the session already broke.
	select {
	case ev := <-s.ch:
		return parseEvent(ev)
	default:
	}
	select {
	case <-ctx.Done():
		return Event{}, ctx.Err()
	case <-s.done:
		return Event{}, ErrClosed
	case ev := <-s.ch:
		return parseEvent(ev)
	case <-s.broken:
		select {
		case ev := <-s.ch:
			return parseEvent(ev)
		default:
		}
		return Event{}, fmt.Errorf("vici events: %w: %w", ErrUnavailable, s.err)
	}
}

// Close ends the subscription's session and waits for its reader. It is
// safe to call more than once.
func (s *Subscription) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.done)
		err = s.conn.Close()
		s.wg.Wait()
	})
	return err
}

func parseEvent(ev govici.Event) (Event, error) {
	out := Event{Kind: EventKind(ev.Name), Received: ev.Timestamp}
	if out.Received.IsZero() {
		out.Received = time.Now()
	}
	if ev.Message == nil {
		return Event{}, fmt.Errorf("%w: %s event without a message", ErrMalformed, ev.Name)
	}
	var err error
	root := newSection(ev.Message, ev.Name, &err)
	switch out.Kind {
	case IKEUpdown, ChildUpdown:
		out.Up = root.yes("up")
		s, name := onlySection(root)
		if err == nil {
			out.IKE = parseIKE(s, name)
		}
		if err == nil && out.Kind == ChildUpdown && len(out.IKE.Children) != 1 {
			s.fail("child-sas", "%d CHILD_SAs, want one", len(out.IKE.Children))
		}
	case IKERekey:
		s, name := onlySection(root)
		if err != nil {
			break
		}
		oldS, okOld := s.sub("old")
		newS, okNew := s.sub("new")
		if !okOld || !okNew {
			s.fail("old/new", "missing")
			break
		}
		old := parseIKE(oldS, name)
		out.OldIKE = &old
		out.IKE = parseIKE(newS, name)
	case Log:
		out.Log = &LogEntry{Group: root.str("group"), Level: int(root.uint("level", 8)), IKEName: root.str("ikesa-name"), Msg: root.required("msg")}
		if root.has("ikesa-uniqueid") {
			out.Log.IKEUniqueID = uint32(root.uint("ikesa-uniqueid", 32))
		}
	case ChildRekey:
		s, name := onlySection(root)
		if err != nil {
			break
		}
		// The child-sas section holds one section per rekeyed child with
		// old and new inside; read the IKE SA without it first.
		children, ok := s.sub("child-sas")
		if !ok {
			s.fail("child-sas", "missing")
			break
		}
		out.IKE = parseIKE(withoutKey(s, "child-sas"), name)
		keys := children.m.Keys()
		if len(keys) != 1 {
			children.fail("", "%d rekeyed CHILD_SAs, want one", len(keys))
			break
		}
		pair, ok := children.sub(keys[0])
		if !ok {
			break
		}
		oldS, okOld := pair.sub("old")
		newS, okNew := pair.sub("new")
		if !okOld || !okNew {
			pair.fail("old/new", "missing")
			break
		}
		oldC, newC := parseChild(oldS, keys[0]), parseChild(newS, keys[0])
		out.OldChild, out.NewChild = &oldC, &newC
	default:
		return Event{}, fmt.Errorf("%w: unexpected event %q", ErrMalformed, ev.Name)
	}
	if err != nil {
		return Event{}, err
	}
	return out, nil
}

// withoutKey returns a copy of a section with one key left out.
func withoutKey(s section, key string) section {
	m := govici.NewMessage()
	for _, k := range s.m.Keys() {
		if k == key {
			continue
		}
		if err := m.Set(k, s.m.Get(k)); err != nil {
			s.fail(k, "copying: %v", err)
		}
	}
	return section{m: m, path: s.path, errp: s.errp}
}
