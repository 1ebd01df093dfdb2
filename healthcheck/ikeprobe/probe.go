package ikeprobe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Probe errors, matched with errors.Is.
var (
	// ErrNoReply: nothing came back before the timeout.
	ErrNoReply = errors.New("no IKE reply")
	// ErrUnreachable: the target refused the datagram (ICMP port or host
	// unreachable): nothing listens on the port.
	ErrUnreachable = errors.New("IKE port unreachable")
	// ErrWrongSPI: a valid IKE response that does not carry our SPI.
	ErrWrongSPI = errors.New("IKE response for another SPI")
	// ErrRejected: the responder answered with an error notify other than
	// INVALID_KE_PAYLOAD and NO_PROPOSAL_CHOSEN (our request is broken, or
	// the responder is).
	ErrRejected = errors.New("IKE request rejected")
)

// Mode says what the probe asks of the responder.
type Mode uint8

const (
	// Stateless (the default) sends the key exchange in a group the SA
	// payload does not propose. The responder answers INVALID_KE_PAYLOAD
	// (or NO_PROPOSAL_CHOSEN when no proposal fits) and destroys the
	// IKE_SA right away, so probing never fills the half-open table.
	Stateless Mode = iota
	// Full sends a compliant request whose KE matches the first proposed
	// group. A responder that accepts answers with a full IKE_SA_INIT
	// response and keeps a half-open IKE_SA until half_open_timeout: use
	// it only to test the full handshake path, rarely.
	Full
)

func (m Mode) String() string {
	if m == Full {
		return "full"
	}
	return "stateless"
}

// DefaultTimeout bounds Run when its context has no deadline.
const DefaultTimeout = time.Second

// Config configures a Probe.
type Config struct {
	// Target is the gateway's IKE address and port (500, or 4500 for
	// NAT-T).
	Target netip.AddrPort
	// NATT sends behind the non-ESP marker; port 4500 implies it.
	NATT bool
	Mode Mode
	// KEGroup is the group of the key exchange (ECP or curve25519).
	// Default: curve25519 in Stateless mode, ecp256 in Full mode.
	KEGroup Group
	// Groups are the DH groups proposed. Default: ecp256 ecp384 ecp521
	// modp3072 modp2048 (Stateless); in Full mode KEGroup goes first.
	// In Stateless mode they must not contain KEGroup.
	Groups []Group
	// Retransmit resends the request at this interval while waiting
	// (0: send once; the Checker's fall count absorbs a lost datagram).
	Retransmit time.Duration
	// Dial opens the UDP socket (net.Dialer.DialContext by default); tests
	// pass one that dials inside a network namespace.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// Probe is a health check that sends one IKE_SA_INIT per run.
type Probe struct {
	cfg  Config
	name string
}

// New validates cfg and fills its defaults.
func New(cfg Config) (*Probe, error) {
	if !cfg.Target.IsValid() || cfg.Target.Port() == 0 {
		return nil, fmt.Errorf("creating IKE probe: invalid target %v", cfg.Target)
	}
	if cfg.Target.Port() == 4500 {
		cfg.NATT = true
	}
	if cfg.KEGroup == 0 {
		cfg.KEGroup = Curve25519
		if cfg.Mode == Full {
			cfg.KEGroup = ECP256
		}
	}
	if cfg.KEGroup.curve() == nil {
		return nil, fmt.Errorf("creating IKE probe: KE group %v: only ECP and curve25519 are supported", cfg.KEGroup)
	}
	if len(cfg.Groups) == 0 {
		cfg.Groups = []Group{ECP256, ECP384, ECP521, MODP3072, MODP2048}
	}
	cfg.Groups = slices.Clone(cfg.Groups)
	switch cfg.Mode {
	case Stateless:
		if slices.Contains(cfg.Groups, cfg.KEGroup) {
			return nil, fmt.Errorf("creating IKE probe: stateless mode needs a KE group outside the proposal, but %v is proposed", cfg.KEGroup)
		}
	case Full:
		cfg.Groups = slices.DeleteFunc(cfg.Groups, func(g Group) bool { return g == cfg.KEGroup })
		cfg.Groups = append([]Group{cfg.KEGroup}, cfg.Groups...)
	default:
		return nil, fmt.Errorf("creating IKE probe: unknown mode %d", cfg.Mode)
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	name := "ike:" + cfg.Target.String()
	if cfg.NATT {
		name += "/natt"
	}
	return &Probe{cfg: cfg, name: name}, nil
}

// Name is "ike:ADDR:PORT" (with "/natt" behind the non-ESP marker).
func (p *Probe) Name() string { return p.name }

// Run sends one probe and returns nil when charon answered.
func (p *Probe) Run(ctx context.Context) error {
	_, err := p.Probe(ctx)
	return err
}

// Result is what one successful probe saw.
type Result struct {
	Response *Response
	RTT      time.Duration
	// Raw is the reply datagram without the non-ESP marker.
	Raw []byte
}

// Probe sends an IKE_SA_INIT and waits for the reply until ctx ends (or
// DefaultTimeout without a deadline). It returns an error wrapping
// ErrNoReply, ErrUnreachable, ErrWrongSPI, ErrMalformed or ErrRejected
// when the gateway did not answer as a live responder does.
func (p *Probe) Probe(ctx context.Context) (*Result, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	conn, err := p.cfg.Dial(ctx, "udp", p.cfg.Target.String())
	if err != nil {
		return nil, fmt.Errorf("probing %s: opening UDP socket: %w", p.cfg.Target, err)
	}
	defer conn.Close()
	// Unblock reads when ctx ends, whether by deadline or by cancel.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	local, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		return nil, fmt.Errorf("probing %s: reading local address: %w", p.cfg.Target, err)
	}
	req, err := NewRequest(p.cfg.Groups, p.cfg.KEGroup, local, p.cfg.Target)
	if err != nil {
		return nil, fmt.Errorf("probing %s: %w", p.cfg.Target, err)
	}
	msg, err := req.Marshal()
	if err != nil {
		return nil, fmt.Errorf("probing %s: %w", p.cfg.Target, err)
	}
	if p.cfg.NATT {
		msg = append(slices.Clone(nonESPMarker), msg...)
	}

	start := time.Now()
	if _, err := conn.Write(msg); err != nil {
		return nil, p.ioError(ctx, "sending IKE_SA_INIT", err)
	}
	if p.cfg.Retransmit > 0 {
		// The retransmitter is owned by this call: it stops when the
		// reply is in (or the wait failed) and is waited for.
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.retransmit(conn, msg, done)
		}()
		defer wg.Wait()
		defer close(done)
	}
	// One datagram decides: the socket is connected to the target, so only
	// the target can answer, and a bad answer is a fault of the gateway.
	buf := make([]byte, 65535)
	n, err := conn.Read(buf)
	if err != nil {
		return nil, p.ioError(ctx, "reading the reply", err)
	}
	rtt := time.Since(start)
	raw := buf[:n]
	if p.cfg.NATT {
		if len(raw) < 4 || !bytes.Equal(raw[:4], nonESPMarker) {
			return nil, fmt.Errorf("probing %s: %w: reply of %d bytes on the NAT-T port without the non-ESP marker", p.cfg.Target, ErrMalformed, len(raw))
		}
		raw = raw[4:]
	}
	resp, err := ParseResponse(raw)
	if err != nil {
		return nil, fmt.Errorf("probing %s: %w", p.cfg.Target, err)
	}
	if !resp.Matches(req.SPI) {
		return nil, fmt.Errorf("probing %s: %w: reply carries SPI %016x, we sent %016x", p.cfg.Target, ErrWrongSPI, resp.SPIi, req.SPI)
	}
	if resp.Kind == KindError {
		return nil, fmt.Errorf("probing %s: %w: notify type %d", p.cfg.Target, ErrRejected, resp.Notify.Type)
	}
	return &Result{Response: resp, RTT: rtt, Raw: slices.Clone(raw)}, nil
}

// retransmit resends msg every Retransmit until done is closed or a write
// fails (the socket was closed).
func (p *Probe) retransmit(conn net.Conn, msg []byte, done <-chan struct{}) {
	t := time.NewTicker(p.cfg.Retransmit)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if _, err := conn.Write(msg); err != nil {
				return
			}
		}
	}
}

func (p *Probe) ioError(ctx context.Context, doing string, err error) error {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return fmt.Errorf("probing %s: %s: %w: %w", p.cfg.Target, doing, ErrUnreachable, err)
	case ctx.Err() != nil:
		return fmt.Errorf("probing %s: %s: %w: %w", p.cfg.Target, doing, ErrNoReply, context.Cause(ctx))
	}
	return fmt.Errorf("probing %s: %s: %w", p.cfg.Target, doing, err)
}
