package vici

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/ipsec/vici/internal/wire"
	govici "github.com/strongswan/govici/vici"
)

// DefaultSocket is charon's compiled-in VICI socket.
const DefaultSocket = "/var/run/charon.vici"

// Sentinel errors, matched with errors.Is.
var (
	// ErrUnavailable: charon could not be reached or the session broke
	// (charon stopped or restarted). Retry later.
	ErrUnavailable = errors.New("charon unavailable")
	// ErrCommandFailed: charon answered the command with success=no.
	ErrCommandFailed = errors.New("vici command failed")
	// ErrMalformed: charon's reply or event did not have the expected shape.
	ErrMalformed = errors.New("malformed vici message")
	// ErrClosed: the Client or Subscription was closed.
	ErrClosed = errors.New("vici client closed")
)

// Config configures a Client.
type Config struct {
	// Socket is the path of charon's VICI unix socket (DefaultSocket if
	// empty).
	Socket string
	// DialTimeout bounds every connection attempt (default 2s).
	DialTimeout time.Duration
	// CallTimeout bounds every command and event registration whose
	// context has no earlier deadline (default 30s): a hung charon must
	// not wedge a caller that passed a long-lived context.
	CallTimeout time.Duration
	// Logger receives debug and warning messages (slog.Default if nil).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 2 * time.Second
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Client sends commands to charon over one session and opens a separate
// session for every Subscription. It is safe for concurrent use; commands
// run one at a time.
type Client struct {
	cfg Config
	log *slog.Logger

	// mu serializes commands (including the whole iteration of streamed
	// ones) and guards the following fields.
	mu         sync.Mutex
	sess       *govici.Session
	streamConn net.Conn
	closed     bool
}

// New returns a Client. It connects on first use.
func New(cfg Config) *Client {
	cfg = cfg.withDefaults()
	return &Client{cfg: cfg, log: cfg.Logger}
}

// Socket returns the VICI socket path the client talks to.
func (c *Client) Socket() string { return c.cfg.Socket }

// Close closes the command session. It is safe to call more than once.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return c.resetLocked()
}

// dial opens a new session bounded by ctx and the dial timeout.
func (c *Client) dial(ctx context.Context) (*govici.Session, error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	s, err := govici.NewSession(
		govici.WithSocketPath(c.cfg.Socket),
		// govici dials with context.Background(): substitute ours so a
		// hung or missing charon cannot block the caller.
		govici.WithDialContext(func(_ context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(dctx, network, addr)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connecting to charon at %s: %w: %w", c.cfg.Socket, ErrUnavailable, err)
	}
	return s, nil
}

func (c *Client) sessionLocked(ctx context.Context) (*govici.Session, error) {
	if c.closed {
		return nil, ErrClosed
	}
	if c.sess != nil {
		return c.sess, nil
	}
	s, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.sess = s
	c.log.Debug("vici: connected", "socket", c.cfg.Socket)
	return s, nil
}

func (c *Client) resetLocked() error {
	var err error
	if c.sess != nil {
		err = c.sess.Close()
		c.sess = nil
	}
	if c.streamConn != nil {
		_ = c.streamConn.Close()
		c.streamConn = nil
	}
	return err
}

// call runs one command. A reply with success=no is ErrCommandFailed and
// keeps the session; any other failure drops the session so that the next
// command redials (that is how a restarted charon is picked up).
func (c *Client) call(ctx context.Context, cmd string, req *govici.Message) (*govici.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	s, err := c.sessionLocked(ctx)
	if err != nil {
		return nil, fmt.Errorf("vici %s: %w", cmd, err)
	}
	resp, err := s.Call(ctx, cmd, req)
	if err != nil {
		if resp != nil {
			return nil, commandError(cmd, resp)
		}
		_ = c.resetLocked()
		return nil, c.transportError(ctx, cmd, err)
	}
	if resp == nil {
		_ = c.resetLocked()
		return nil, fmt.Errorf("vici %s: %w: empty reply", cmd, ErrMalformed)
	}
	return resp, nil
}

// stream runs a streamed command (list-sas) and returns the events it
// produced, in order.
//
// It does not use govici's CallStreaming: govici v0.8.0 queues stream events
// and the final reply on two channels and selects between them, so the
// reply can overtake queued events; the listing then comes back short and
// the leftover events are taken as replies to later commands. Streams run
// on a connection of their own, read by one loop in wire order.
func (c *Client) stream(ctx context.Context, cmd, event string, req *govici.Message) ([]*govici.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("vici %s: %w", cmd, ErrClosed)
	}
	if c.streamConn == nil {
		dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
		var d net.Dialer
		conn, err := d.DialContext(dctx, "unix", c.cfg.Socket)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("vici %s: connecting to charon at %s: %w: %w", cmd, c.cfg.Socket, ErrUnavailable, err)
		}
		c.streamConn = conn
	}
	conn := c.streamConn
	body, err := fromMessage(req)
	if err != nil {
		return nil, fmt.Errorf("vici %s: encoding request: %w", cmd, err)
	}
	// The context bounds the exchange: when it ends, an expired deadline
	// fails the pending read or write.
	_ = conn.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	msgs, err := runStream(conn, cmd, event, body)
	if !stop() && err != nil {
		err = ctx.Err()
	}
	if err != nil {
		if errors.Is(err, ErrCommandFailed) {
			return nil, fmt.Errorf("vici %s: %w", cmd, err)
		}
		_ = c.streamConn.Close()
		c.streamConn = nil
		if ctx.Err() != nil {
			return nil, fmt.Errorf("vici %s: %w", cmd, ctx.Err())
		}
		if errors.Is(err, ErrMalformed) {
			return nil, fmt.Errorf("vici %s: %w", cmd, err)
		}
		return nil, fmt.Errorf("vici %s: %w: %w", cmd, ErrUnavailable, err)
	}
	return msgs, nil
}

// runStream registers event, sends the command, collects the events up to
// the reply and unregisters again.
func runStream(conn net.Conn, cmd, event string, body *wire.Msg) ([]*govici.Message, error) {
	confirm := func(typ byte) error {
		if err := wire.WritePacket(conn, wire.Packet{Type: typ, Name: event}); err != nil {
			return err
		}
		for {
			p, err := wire.ReadPacket(conn)
			if err != nil {
				return err
			}
			switch p.Type {
			case wire.EventConfirm:
				return nil
			case wire.EventUnknown:
				return fmt.Errorf("%w: charon does not know event %s", ErrMalformed, event)
			case wire.Event:
				continue // a late event of an earlier stream
			default:
				return fmt.Errorf("%w: packet type %d while (un)registering %s", ErrMalformed, p.Type, event)
			}
		}
	}
	if err := confirm(wire.EventRegister); err != nil {
		return nil, err
	}
	if err := wire.WritePacket(conn, wire.Packet{Type: wire.CmdRequest, Name: cmd, Msg: body}); err != nil {
		return nil, err
	}
	var msgs []*govici.Message
	for done := false; !done; {
		p, err := wire.ReadPacket(conn)
		if err != nil {
			return nil, err
		}
		switch p.Type {
		case wire.Event:
			if p.Name != event {
				continue
			}
			m, err := toMessage(p.Msg)
			if err != nil {
				return nil, fmt.Errorf("%w: %s event: %w", ErrMalformed, event, err)
			}
			msgs = append(msgs, m)
		case wire.CmdResponse:
			resp, err := toMessage(p.Msg)
			if err != nil {
				return nil, fmt.Errorf("%w: reply: %w", ErrMalformed, err)
			}
			if resp.Err() != nil {
				msg, _ := resp.Get("errmsg").(string)
				return nil, fmt.Errorf("%w: %s", ErrCommandFailed, msg)
			}
			done = true
		case wire.CmdUnknown:
			return nil, fmt.Errorf("%w: charon does not know command %s", ErrMalformed, cmd)
		default:
			return nil, fmt.Errorf("%w: packet type %d in a %s stream", ErrMalformed, p.Type, cmd)
		}
	}
	if err := confirm(wire.EventUnregister); err != nil {
		return nil, err
	}
	return msgs, nil
}

func (c *Client) transportError(ctx context.Context, cmd string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("vici %s: %w", cmd, ctxErr)
	}
	return fmt.Errorf("vici %s: %w: %w", cmd, ErrUnavailable, err)
}

func commandError(cmd string, resp *govici.Message) error {
	msg, _ := resp.Get("errmsg").(string)
	if msg == "" {
		msg = "no error message"
	}
	return fmt.Errorf("vici %s: %w: %s", cmd, ErrCommandFailed, msg)
}
