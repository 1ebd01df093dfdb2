package hasync

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"
)

// Conn is Handoff's end of the ha plugin's channel on one gateway: a UDP
// socket bound to the address charon's `remote` setting names and
// connected to charon's `local`. The plugin connects its own socket the
// same way, so each end hears only the other: a datagram from any other
// address or port is dropped by the kernel before it is read.
//
// The channel is neither authenticated nor encrypted and carries key
// material (see the package comment): both ends must be on one host
// (loopback), and what Receive hands over must be treated as secret.
type Conn struct {
	udp *net.UDPConn
}

// DefaultReadBuffer is the socket receive buffer Listen asks for: a mass
// rekey makes charon send thousands of datagrams at once, and the plugin
// never retransmits one that was dropped.
const DefaultReadBuffer = 4 << 20

// maxDatagram bounds what one read takes: the plugin's own buffer is
// `buflen` (2048 by default); 64 KiB holds any UDP payload.
const maxDatagram = 1 << 16

// Listen binds local (Handoff's address, charon's `remote`) and connects
// to charon (charon's `local`); both carry the port, Port in production.
// readBuffer ≤ 0 means DefaultReadBuffer.
func Listen(local, charon netip.AddrPort, readBuffer int) (*Conn, error) {
	if !local.IsValid() || !charon.IsValid() {
		return nil, fmt.Errorf("opening the ha channel: need both addresses with ports (local %v, charon %v)", local, charon)
	}
	udp, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(local), net.UDPAddrFromAddrPort(charon))
	if err != nil {
		return nil, fmt.Errorf("opening the ha channel %v → %v: %w", local, charon, err)
	}
	if readBuffer <= 0 {
		readBuffer = DefaultReadBuffer
	}
	if err := udp.SetReadBuffer(readBuffer); err != nil {
		udp.Close()
		return nil, fmt.Errorf("opening the ha channel: setting its receive buffer to %d bytes: %w", readBuffer, err)
	}
	return &Conn{udp: udp}, nil
}

// Receive reads datagrams until ctx ends and hands each one that decodes
// to fn, in arrival order; fn owns the message (its buffer is not
// reused). A datagram that does not decode goes to bad with the reason,
// and reading goes on: one malformed datagram must not stop the stream.
// Receive returns ctx's error when ctx ends, or the socket's when it
// fails (charon gone: the kernel reports the refused datagrams as
// ECONNREFUSED on a connected socket, which Receive skips).
func (c *Conn) Receive(ctx context.Context, fn func(*Message), bad func([]byte, error)) error {
	stop := context.AfterFunc(ctx, func() { _ = c.udp.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, maxDatagram)
	for {
		n, err := c.udp.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if isRefused(err) {
				continue
			}
			return fmt.Errorf("reading the ha channel: %w", err)
		}
		// One buffer for every read; each datagram gets a copy of its own
		// size (a mass rekey is thousands of them).
		d := slices.Clone(buf[:n])
		m, err := Decode(d)
		if err != nil {
			if bad != nil {
				bad(d, err)
			}
			continue
		}
		fn(m)
	}
}

// Send writes datagrams to charon in order, pausing gap between two: the
// plugin's dispatcher is a single thread reading one datagram at a time,
// with no acknowledgement, and a burst larger than its socket buffer is
// lost without a trace. It stops when ctx ends.
func (c *Conn) Send(ctx context.Context, datagrams [][]byte, gap time.Duration) error {
	for i, d := range datagrams {
		if i > 0 && gap > 0 {
			t := time.NewTimer(gap)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("sending to charon's ha plugin: %d of %d sent: %w", i, len(datagrams), ctx.Err())
			case <-t.C:
			}
		} else if err := ctx.Err(); err != nil {
			return fmt.Errorf("sending to charon's ha plugin: %d of %d sent: %w", i, len(datagrams), err)
		}
		if _, err := c.udp.Write(d); err != nil {
			return fmt.Errorf("sending to charon's ha plugin: datagram %d of %d: %w", i+1, len(datagrams), err)
		}
	}
	return nil
}

// LocalAddr is the address Listen bound.
func (c *Conn) LocalAddr() netip.AddrPort { return c.udp.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close closes the socket; a Receive in progress returns.
func (c *Conn) Close() error { return c.udp.Close() }

// isRefused: an earlier datagram to charon met a closed port (charon not
// running yet, or restarting) and the kernel reports it on this read.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
