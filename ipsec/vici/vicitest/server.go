package vicitest

import (
	"context"
	"errors"
	"fmt"
	"github.com/handoffvpn/handoff/ipsec/vici/internal/wire"
	"net"
	"os"
	"sync"
	"time"
)

// Handler answers a command that no transcript step expects: it returns
// the events to stream (named after the command's stream event) and the
// reply.
type Handler func(req *Msg) (events []*Msg, resp *Msg)

// streamEvent is the event each streamed command sends.
var streamEvent = map[string]string{
	"list-sas":      "list-sa",
	"list-conns":    "list-conn",
	"list-policies": "list-policy",
	"list-certs":    "list-cert",
}

// Server is a fake charon VICI socket. See the package doc.
type Server struct {
	path string

	// mu guards the following fields.
	mu       sync.Mutex
	ln       net.Listener
	conns    map[*conn]struct{}
	steps    []Step
	pos      int
	errs     []error
	handlers map[string]Handler
	requests []string // command names in the order they arrived
	changed  chan struct{}
	closed   bool

	wg   sync.WaitGroup
	stop chan struct{}
}

type conn struct {
	c      net.Conn
	wmu    sync.Mutex
	events map[string]bool // guarded by Server.mu
}

// NewServer listens on a unix socket at path and plays steps.
func NewServer(path string, steps []Step) (*Server, error) {
	s := &Server{
		path:     path,
		conns:    map[*conn]struct{}{},
		steps:    steps,
		handlers: map[string]Handler{},
		changed:  make(chan struct{}),
		stop:     make(chan struct{}),
	}
	if err := s.listen(); err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go s.run()
	return s, nil
}

// Path returns the socket path.
func (s *Server) Path() string { return s.path }

// Handle registers a handler for cmd, used when no transcript step is
// waiting for a command.
func (s *Server) Handle(cmd string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[cmd] = h
}

// Requests returns the command names received so far.
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// Err returns every mismatch between the transcript and what the client
// did, and whether steps are left unplayed.
func (s *Server) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	errs := append([]error(nil), s.errs...)
	if s.pos < len(s.steps) {
		st := s.steps[s.pos]
		errs = append(errs, fmt.Errorf("transcript line %d (%c %s) and later not played", st.Line, st.Kind, st.Name))
	}
	return errors.Join(errs...)
}

// WaitDone waits until every transcript step was played.
func (s *Server) WaitDone(ctx context.Context) error {
	for {
		s.mu.Lock()
		done, ch := s.pos >= len(s.steps), s.changed
		s.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the transcript: %w (%v)", ctx.Err(), s.Err())
		}
	}
}

// Push sends an event to every session subscribed to name.
func (s *Server) Push(name string, m *Msg) int {
	s.mu.Lock()
	var targets []*conn
	for c := range s.conns {
		if c.events[name] {
			targets = append(targets, c)
		}
	}
	s.mu.Unlock()
	for _, c := range targets {
		_ = c.write(wire.Packet{Type: wire.Event, Name: name, Msg: m})
	}
	return len(targets)
}

// Subscribers returns how many sessions are subscribed to name.
func (s *Server) Subscribers(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		if c.events[name] {
			n++
		}
	}
	return n
}

// Restart drops every session and listens anew, like a restarted charon.
func (s *Server) Restart() error {
	s.Stop()
	return s.listen()
}

// Stop drops every session and stops listening, like a stopped charon
// (its socket file stays behind, as after a SIGKILL).
func (s *Server) Stop() {
	s.mu.Lock()
	ln := s.ln
	s.ln = nil
	conns := s.conns
	s.conns = map[*conn]struct{}{}
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	for c := range conns {
		_ = c.c.Close()
	}
	s.notify()
}

// Close stops the server and waits for its goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	s.Stop()
	s.wg.Wait()
	_ = os.Remove(s.path)
}

func (s *Server) listen() error {
	_ = os.Remove(s.path) // a stale socket from a "killed" charon
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		return fmt.Errorf("vicitest: listening on %s: %w", s.path, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cc := &conn{c: c, events: map[string]bool{}}
			s.mu.Lock()
			if s.ln != ln {
				s.mu.Unlock()
				_ = c.Close()
				return
			}
			s.conns[cc] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go s.serve(cc)
		}
	}()
	return nil
}

func (s *Server) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (c *conn) write(p wire.Packet) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return wire.WritePacket(c.c, p)
}

func (s *Server) serve(c *conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.c.Close()
		s.notify()
	}()
	for {
		p, err := wire.ReadPacket(c.c)
		if err != nil {
			return
		}
		switch p.Type {
		case wire.EventRegister, wire.EventUnregister:
			s.mu.Lock()
			c.events[p.Name] = p.Type == wire.EventRegister
			s.mu.Unlock()
			s.notify()
			if c.write(wire.Packet{Type: wire.EventConfirm}) != nil {
				return
			}
		case wire.CmdRequest:
			if !s.command(c, p) {
				return
			}
			s.notify()
		default:
			s.fail(fmt.Errorf("unexpected packet type %d from client", p.Type))
			return
		}
	}
}

func (s *Server) fail(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

// command answers one request from the transcript or a handler. It returns
// false when the session broke.
func (s *Server) command(c *conn, p wire.Packet) bool {
	s.mu.Lock()
	// A command that follows a pushed event in the transcript can arrive
	// before run() has moved past that event (the client reacts to the
	// event while run() is still returning from Push): let run() finish
	// the step first, as charon would have. Registrations are not
	// commands, so run() never waits for this one.
	deadline := time.NewTimer(pushWait)
	defer deadline.Stop()
	for s.pos < len(s.steps) && s.steps[s.pos].Kind == '!' {
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			s.fail(fmt.Errorf("command %q waited %v for the transcript's pushed events", p.Name, pushWait))
			return c.write(wire.Packet{Type: wire.CmdUnknown}) == nil
		case <-s.stop:
			return false
		}
		s.mu.Lock()
	}
	s.requests = append(s.requests, p.Name)
	var replies []Step
	if s.pos < len(s.steps) && s.steps[s.pos].Kind == '>' {
		want := s.steps[s.pos]
		if want.Name != p.Name {
			s.errs = append(s.errs, fmt.Errorf("transcript line %d: want command %q, got %q", want.Line, want.Name, p.Name))
			s.mu.Unlock()
			return c.write(wire.Packet{Type: wire.CmdUnknown}) == nil
		}
		if want.Body != nil && !want.Body.Equal(p.Msg) {
			s.errs = append(s.errs, fmt.Errorf("transcript line %d: %s request differs:\n got:\n%swant:\n%s", want.Line, p.Name, p.Msg.Format("  "), want.Body.Format("  ")))
		}
		s.pos++
		// Everything up to the reply belongs to this command: streamed
		// events, and events charon pushed to other sessions meanwhile.
		for s.pos < len(s.steps) && (s.steps[s.pos].Kind == '<' || s.steps[s.pos].Kind == '!') {
			st := s.steps[s.pos]
			if st.Kind == '!' && (st.Name == "restart" || st.Name == "stop") {
				break
			}
			replies = append(replies, st)
			s.pos++
			if st.Kind == '<' && st.Name == "response" {
				break
			}
		}
	} else if h, ok := s.handlers[p.Name]; ok {
		s.mu.Unlock()
		events, resp := h(p.Msg)
		s.mu.Lock()
		for _, e := range events {
			replies = append(replies, Step{Kind: '<', Name: streamEvent[p.Name], Body: e})
		}
		if resp == nil {
			resp = &Msg{}
		}
		replies = append(replies, Step{Kind: '<', Name: "response", Body: resp})
	} else {
		s.errs = append(s.errs, fmt.Errorf("unexpected command %q", p.Name))
		s.mu.Unlock()
		return c.write(wire.Packet{Type: wire.CmdUnknown}) == nil
	}
	subscribed := map[string]bool{}
	for k, v := range c.events {
		subscribed[k] = v
	}
	s.mu.Unlock()
	for _, r := range replies {
		body := r.Body
		if body == nil {
			body = &Msg{}
		}
		if r.Kind == '!' {
			s.Push(r.Name, body)
			continue
		}
		var err error
		if r.Name == "response" {
			err = c.write(wire.Packet{Type: wire.CmdResponse, Msg: body})
		} else if subscribed[r.Name] {
			err = c.write(wire.Packet{Type: wire.Event, Name: r.Name, Msg: body})
		}
		if err != nil {
			return false
		}
	}
	return true
}

// pushWait bounds how long a pushed event waits for a subscriber.
const pushWait = 10 * time.Second

// run plays the '!' steps when they come up.
func (s *Server) run() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		var st *Step
		if s.pos < len(s.steps) && s.steps[s.pos].Kind == '!' {
			st = &s.steps[s.pos]
		}
		ch := s.changed
		s.mu.Unlock()
		if st == nil {
			select {
			case <-ch:
				continue
			case <-s.stop:
				return
			}
		}
		switch st.Name {
		case "restart":
			if err := s.Restart(); err != nil {
				s.fail(err)
			}
		case "stop":
			s.Stop()
		default:
			if !s.waitSubscriber(st.Name) {
				s.fail(fmt.Errorf("transcript line %d: nobody subscribed to %s within %v", st.Line, st.Name, pushWait))
			}
			s.Push(st.Name, st.Body)
		}
		s.mu.Lock()
		s.pos++
		s.mu.Unlock()
		s.notify()
	}
}

func (s *Server) waitSubscriber(name string) bool {
	deadline := time.NewTimer(pushWait)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if s.Subscribers(name) > 0 {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		case <-s.stop:
			return false
		}
	}
}
