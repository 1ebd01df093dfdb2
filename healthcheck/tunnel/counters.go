package tunnel

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/strongswan/govici/vici"

	"github.com/handoffvpn/handoff/healthcheck/internal/vicidial"
)

// Counter errors.
var (
	// ErrNoChildSA: no installed CHILD_SA matches.
	ErrNoChildSA = errors.New("no matching CHILD_SA")
	// ErrStalled: traffic was expected but the inbound counters did not
	// move since the previous run.
	ErrStalled = errors.New("CHILD_SA counters stalled")
)

// CountersConfig configures a Counters check.
type CountersConfig struct {
	// Socket is charon's VICI socket.
	Socket string
	// IKE is the connection (IKE_SA) name to look in ("" for all), Child
	// the CHILD_SA name.
	IKE, Child string
	// Expect reports whether traffic should have arrived since the
	// previous run (an echo check ran, clients are connected). Nil means
	// always: the check then suits a canary tunnel kept busy by an Echo.
	Expect func() bool
}

// Counters passes while the inbound packet counters of the matching
// CHILD_SAs move between runs. The first run only takes a baseline.
type Counters struct {
	cfg CountersConfig

	mu   sync.Mutex // guards the following fields (runs may overlap Status readers)
	last map[string]ChildCounters
	at   time.Time
}

// NewCounters returns the check.
func NewCounters(cfg CountersConfig) (*Counters, error) {
	if cfg.Socket == "" || cfg.Child == "" {
		return nil, errors.New("creating CHILD_SA counter check: socket and child name are required")
	}
	return &Counters{cfg: cfg}, nil
}

// Name is "child-counters:IKE/CHILD".
func (c *Counters) Name() string { return "child-counters:" + c.cfg.IKE + "/" + c.cfg.Child }

// ChildCounters is one CHILD_SA's traffic counters as VICI list-sas gives
// them.
type ChildCounters struct {
	IKE, Child, UniqueID string
	BytesIn, PacketsIn   uint64
	BytesOut, PacketsOut uint64
	State                string
}

// maxListEvents bounds the list-sa events one ListChildren call takes (one
// per matching IKE_SA).
const maxListEvents = 4096

// ListChildren returns the counters of every CHILD_SA named child (any
// name if "") under the IKE_SAs of connection ike (any if ""), over a
// fresh VICI session.
//
// It does not use govici's CallStreaming: in v0.8.0 that hands events and
// the final command response to the caller through two channels read by
// one select, which picks at random when both are ready, so the stream can
// end before the last list-sa events are delivered (seen in the lab as an
// empty list for an established CHILD_SA). Instead it subscribes to
// list-sa on its own session and calls list-sas: the session's reader
// hands each event to the subscriber channel before it reads the next
// packet, so once the call returns every event is already in the channel.
func ListChildren(ctx context.Context, socket, ike, child string) ([]ChildCounters, error) {
	s, err := vicidial.Session(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	// Subscribe takes no context: closing the session is what ends it
	// when charon does not answer.
	stop := context.AfterFunc(ctx, func() { _ = s.Close() })
	defer stop()

	events := make(chan vici.Event, maxListEvents)
	s.NotifyEvents(events)
	if err := s.Subscribe("list-sa"); err != nil {
		return nil, fmt.Errorf("subscribing to VICI list-sa: %w", errors.Join(err, ctx.Err()))
	}
	req := vici.NewMessage()
	if ike != "" {
		if err := req.Set("ike", ike); err != nil {
			return nil, fmt.Errorf("building list-sas request: %w", err)
		}
	}
	if _, err := s.Call(ctx, "list-sas", req); err != nil {
		return nil, fmt.Errorf("calling VICI list-sas: %w", err)
	}
	if len(events) == cap(events) {
		return nil, fmt.Errorf("calling VICI list-sas: more than %d IKE_SAs match %q: narrow the check", maxListEvents, ike)
	}
	var out []ChildCounters
	for {
		var ev vici.Event
		select {
		case e, ok := <-events:
			if !ok {
				// The session closed (ctx ended) after the call
				// returned: the buffer was drained first.
				return out, nil
			}
			ev = e
		default:
			return out, nil
		}
		if ev.Name != "list-sa" || ev.Message == nil {
			continue
		}
		m := ev.Message
		for _, ikeName := range m.Keys() {
			sa, ok := m.Get(ikeName).(*vici.Message)
			if !ok {
				continue
			}
			children, ok := sa.Get("child-sas").(*vici.Message)
			if !ok {
				continue
			}
			for _, key := range children.Keys() {
				ch, ok := children.Get(key).(*vici.Message)
				if !ok {
					continue
				}
				cc, err := childCounters(ikeName, ch)
				if err != nil {
					return nil, err
				}
				if child == "" || cc.Child == child {
					out = append(out, cc)
				}
			}
		}
	}
}

func childCounters(ike string, m *vici.Message) (ChildCounters, error) {
	str := func(k string) string { s, _ := m.Get(k).(string); return s }
	cc := ChildCounters{IKE: ike, Child: str("name"), UniqueID: str("uniqueid"), State: str("state")}
	for _, f := range []struct {
		key string
		dst *uint64
	}{{"bytes-in", &cc.BytesIn}, {"packets-in", &cc.PacketsIn}, {"bytes-out", &cc.BytesOut}, {"packets-out", &cc.PacketsOut}} {
		v := str(f.key)
		if v == "" {
			continue // charon omits counters it could not query
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return cc, fmt.Errorf("reading CHILD_SA %s counters: %s = %q: %w", cc.Child, f.key, v, err)
		}
		*f.dst = n
	}
	return cc, nil
}

// Run reads the counters and compares them with the previous run's.
func (c *Counters) Run(ctx context.Context) error {
	all, err := ListChildren(ctx, c.cfg.Socket, c.cfg.IKE, c.cfg.Child)
	if err != nil {
		return err
	}
	now := map[string]ChildCounters{}
	for _, cc := range all {
		if cc.State == "INSTALLED" {
			now[cc.UniqueID] = cc
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	prev, prevAt := c.last, c.at
	c.last, c.at = now, time.Now()
	if len(now) == 0 {
		return fmt.Errorf("reading counters: %w: %s/%s", ErrNoChildSA, c.cfg.IKE, c.cfg.Child)
	}
	if prev == nil || (c.cfg.Expect != nil && !c.cfg.Expect()) {
		return nil
	}
	for id, cc := range now {
		old, seen := prev[id]
		// A CHILD_SA that was not there before (rekeyed) counts as
		// moving once it has carried anything.
		if (!seen && cc.PacketsIn > 0) || (seen && cc.PacketsIn > old.PacketsIn) {
			return nil
		}
	}
	return fmt.Errorf("reading counters: %w: %s since %v ago", ErrStalled, describe(now), time.Since(prevAt).Round(time.Millisecond))
}

func describe(m map[string]ChildCounters) string {
	var parts []string
	for _, cc := range m {
		parts = append(parts, fmt.Sprintf("%s/%s #%s packets in %d out %d", cc.IKE, cc.Child, cc.UniqueID, cc.PacketsIn, cc.PacketsOut))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
