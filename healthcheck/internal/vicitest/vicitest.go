// Package vicitest is a fake VICI server for unit tests: it stands in for
// charon's vici plugin on a unix socket, answering the few commands the
// health checks send (version, stats, list-sas with its streamed list-sa
// events) from canned values, and can be told to hang like a stopped
// charon whose socket still accepts connections.
package vicitest

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/handoffvpn/handoff/internal/boundread"
)

// VICI packet and element types (strongSwan's vici README).
const (
	pktCmdRequest      = 0
	pktCmdResponse     = 1
	pktCmdUnknown      = 2
	pktEventRegister   = 3
	pktEventUnregister = 4
	pktEventConfirm    = 5
	pktEvent           = 7

	elemSectionStart = 1
	elemSectionEnd   = 2
	elemKeyValue     = 3

	// maxPacket is the largest packet charon's vici plugin reads.
	maxPacket = 1 << 20
)

// Item is one element of a message: a key with a value, or a section.
type Item struct {
	Key     string
	Value   string
	Section []Item // non-nil: a section
}

// KV and Sec build items.
func KV(k, v string) Item              { return Item{Key: k, Value: v} }
func Sec(k string, items ...Item) Item { return Item{Key: k, Section: append([]Item{}, items...)} }

// Server is the fake.
type Server struct {
	Path string

	ln net.Listener
	wg sync.WaitGroup

	mu      sync.Mutex // guards the following fields
	cmds    map[string]func() []Item
	streams map[string]streamDef
	hang    bool
	calls   map[string]int
	conns   []net.Conn
}

type streamDef struct {
	event string
	fn    func() [][]Item
}

// Start listens on a socket in t.TempDir and serves until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{
		Path:    filepath.Join(t.TempDir(), "charon.vici"),
		cmds:    map[string]func() []Item{},
		streams: map[string]streamDef{},
		calls:   map[string]int{},
	}
	ln, err := net.Listen("unix", s.Path)
	if err != nil {
		t.Fatal(err)
	}
	s.ln = ln
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.close)
	return s
}

// Handle answers cmd with the items fn returns.
func (s *Server) Handle(cmd string, fn func() []Item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmds[cmd] = fn
}

// Stream answers cmd with one event message per element of fn's result,
// then an empty response.
func (s *Server) Stream(cmd, event string, fn func() [][]Item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[cmd] = streamDef{event: event, fn: fn}
}

// SetHang makes the server read requests and never answer.
func (s *Server) SetHang(h bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hang = h
}

// Calls counts the requests for cmd.
func (s *Server) Calls(cmd string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[cmd]
}

func (s *Server) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *Server) serve(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	for {
		var l [4]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(l[:])
		if n > maxPacket {
			return
		}
		pkt, err := boundread.Exactly(c, int64(n))
		if err != nil || len(pkt) < 2 || len(pkt) < 2+int(pkt[1]) {
			return
		}
		typ := pkt[0]
		name := string(pkt[2 : 2+int(pkt[1])])
		s.mu.Lock()
		hang := s.hang
		if typ == pktCmdRequest {
			s.calls[name]++
		}
		cmd, hasCmd := s.cmds[name]
		stream, hasStream := s.streams[name]
		s.mu.Unlock()
		if hang {
			continue
		}
		var out [][]byte
		switch typ {
		case pktEventRegister, pktEventUnregister:
			out = append(out, []byte{pktEventConfirm})
		case pktCmdRequest:
			switch {
			case hasCmd:
				out = append(out, append([]byte{pktCmdResponse}, encode(cmd())...))
			case hasStream:
				for _, ev := range stream.fn() {
					p := append([]byte{pktEvent, byte(len(stream.event))}, stream.event...)
					out = append(out, append(p, encode(ev)...))
				}
				out = append(out, []byte{pktCmdResponse})
			default:
				out = append(out, []byte{pktCmdUnknown})
			}
		default:
			return
		}
		for _, p := range out {
			var b bytes.Buffer
			_ = binary.Write(&b, binary.BigEndian, uint32(len(p)))
			b.Write(p)
			if _, err := c.Write(b.Bytes()); err != nil {
				return
			}
		}
	}
}

func encode(items []Item) []byte {
	var b []byte
	for _, it := range items {
		if it.Section != nil {
			b = append(b, elemSectionStart, byte(len(it.Key)))
			b = append(b, it.Key...)
			b = append(b, encode(it.Section)...)
			b = append(b, elemSectionEnd)
			continue
		}
		b = append(b, elemKeyValue, byte(len(it.Key)))
		b = append(b, it.Key...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(it.Value)))
		b = append(b, it.Value...)
	}
	return b
}
