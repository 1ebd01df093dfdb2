package vicitest

import (
	"fmt"
	"github.com/handoffvpn/handoff/ipsec/vici/internal/wire"
	"io"
	"net"
	"os"
	"sync"
)

// Recorder is a proxy between VICI clients and a real charon socket that
// writes what passes through as a transcript the Server can play back.
type Recorder struct {
	ln       net.Listener
	upstream string

	// mu guards out and pending.
	mu  sync.Mutex
	out io.Writer

	wg sync.WaitGroup
}

// NewRecorder listens on path and forwards every session to upstream.
func NewRecorder(path, upstream string, out io.Writer) (*Recorder, error) {
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("vicitest: recorder listening on %s: %w", path, err)
	}
	r := &Recorder{ln: ln, upstream: upstream, out: out}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Add(1)
			go r.proxy(c)
		}
	}()
	return r, nil
}

// Close stops accepting sessions and waits for open ones to end.
func (r *Recorder) Close() error {
	err := r.ln.Close()
	r.wg.Wait()
	return err
}

func (r *Recorder) write(st Step) {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = io.WriteString(r.out, st.Format())
}

func (r *Recorder) proxy(client net.Conn) {
	defer r.wg.Done()
	defer client.Close()
	up, err := net.Dial("unix", r.upstream)
	if err != nil {
		r.write(Step{Kind: '#', Name: "recorder: " + err.Error()})
		return
	}
	defer up.Close()
	// streaming is the stream event of the command in flight, if any.
	var mu sync.Mutex
	streaming := map[string]bool{}
	inCommand := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer client.Close()
		for {
			p, err := wire.ReadPacket(up)
			if err != nil {
				return
			}
			switch p.Type {
			case wire.CmdResponse:
				mu.Lock()
				inCommand = false
				mu.Unlock()
				r.write(Step{Kind: '<', Name: "response", Body: p.Msg})
			case wire.Event:
				mu.Lock()
				stream := inCommand && streaming[p.Name]
				mu.Unlock()
				kind := byte('!')
				if stream {
					kind = '<'
				}
				r.write(Step{Kind: kind, Name: p.Name, Body: p.Msg})
			}
			if wire.WritePacket(client, p) != nil {
				return
			}
		}
	}()
	for {
		p, err := wire.ReadPacket(client)
		if err != nil {
			break
		}
		switch p.Type {
		case wire.CmdRequest:
			mu.Lock()
			inCommand = true
			mu.Unlock()
			r.write(Step{Kind: '>', Name: p.Name, Body: p.Msg})
		case wire.EventRegister, wire.EventUnregister:
			mu.Lock()
			// govici registers a streamed command's event right before
			// the command and unregisters it right after.
			streaming[p.Name] = p.Type == wire.EventRegister
			mu.Unlock()
		}
		if wire.WritePacket(up, p) != nil {
			break
		}
	}
	_ = up.Close()
	<-done
}
