// Package swan runs strongSwan for the lab: one charon (charon-systemd,
// which has no pid file, so several can run side by side) per network
// namespace, each with its own strongswan.conf, VICI socket and file log,
// and swanctl configurations rendered from Go templates with pre-shared
// keys or certificates from one lab CA.
//
// With the default plugin list charon uses kernel-netlink: real kernel XFRM
// states and policies (the UML guest). Daemon.Libipsec adds kernel-libipsec
// for host kernels without ESP. The package needs nothing but a way to start
// a process inside a namespace (Namespace), which topo.Node provides.
package swan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strongswan/govici/vici"
)

// Default binaries (Debian's charon-systemd and strongswan-swanctl).
const (
	DefaultCharon  = "/usr/sbin/charon-systemd"
	DefaultSwanctl = "/usr/sbin/swanctl"
)

// ErrExited: charon exited while it was expected to run.
var ErrExited = errors.New("charon exited")

// Namespace starts a process inside a network namespace.
type Namespace interface {
	Start(cmd *exec.Cmd) error
}

// Options configure one charon.
type Options struct {
	// Daemon is the strongswan.conf; Socket and LogFile default to RunDir/
	// charon.vici and Dir/charon.log.
	Daemon Daemon
	// Dir holds strongswan.conf, swanctl.conf, the credentials and the log
	// (in the lab: the node's directory in the scratch directory).
	Dir string
	// RunDir holds the VICI socket. It must be a real local file system
	// (tmpfs in the guest), not hostfs.
	RunDir string
	// Charon and Swanctl override the binaries.
	Charon, Swanctl string
	// StartTimeout bounds the wait for the VICI socket (default 15 s).
	StartTimeout time.Duration
	// Log receives progress; nil discards it.
	Log *slog.Logger
}

// Charon is one running charon.
type Charon struct {
	name    string
	opts    Options
	cmd     *exec.Cmd
	out     *os.File
	done    chan struct{}
	confEnv []string

	mu      sync.Mutex // guards the following fields
	waitErr error
	closed  bool
}

// Start writes strongswan.conf and starts charon in ns, returning once its
// VICI socket answers.
func Start(ctx context.Context, ns Namespace, opts Options) (*Charon, error) {
	d := &opts.Daemon
	if d.Name == "" || opts.Dir == "" || opts.RunDir == "" {
		return nil, fmt.Errorf("starting charon: name, Dir and RunDir are required")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Charon == "" {
		opts.Charon = DefaultCharon
	}
	if opts.Swanctl == "" {
		opts.Swanctl = DefaultSwanctl
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 15 * time.Second
	}
	if d.Socket == "" {
		d.Socket = filepath.Join(opts.RunDir, "charon.vici")
	}
	if d.LogFile == "" {
		d.LogFile = filepath.Join(opts.Dir, "charon.log")
	}
	for _, dir := range []string{opts.Dir, opts.RunDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("starting charon %s: %w", d.Name, err)
		}
	}
	conf, err := d.Render()
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(opts.Dir, "strongswan.conf")
	if err := os.WriteFile(confPath, conf, 0o644); err != nil {
		return nil, fmt.Errorf("writing %s: %w", confPath, err)
	}
	// A charon that was killed leaves its socket behind.
	if err := os.Remove(d.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale VICI socket %s: %w", d.Socket, err)
	}
	out, err := os.Create(filepath.Join(opts.Dir, "charon.out"))
	if err != nil {
		return nil, fmt.Errorf("creating charon output file: %w", err)
	}
	c := &Charon{
		name: d.Name,
		opts: opts,
		out:  out,
		done: make(chan struct{}),
		confEnv: []string{
			"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
			"STRONGSWAN_CONF=" + confPath,
			"SWANCTL_DIR=" + opts.Dir,
		},
	}
	c.cmd = exec.Command(opts.Charon)
	c.cmd.Env = c.confEnv
	c.cmd.Stdout = out
	c.cmd.Stderr = out
	// Its own process group: a signal to the scenario is not one to charon.
	// Pdeathsig: a test binary killed by its timeout must not leave charon
	// running on a host.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := ns.Start(c.cmd); err != nil {
		out.Close()
		return nil, fmt.Errorf("starting charon %s: %w", d.Name, err)
	}
	go func() {
		err := c.cmd.Wait()
		c.mu.Lock()
		c.waitErr = err
		c.mu.Unlock()
		out.Close()
		close(c.done)
	}()
	opts.Log.Debug("charon started", "node", d.Name, "pid", c.cmd.Process.Pid)
	if err := c.waitSocket(ctx); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

func (c *Charon) waitSocket(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.StartTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := (&net.Dialer{}).DialContext(ctx, "unix", c.Socket())
		if err == nil {
			return conn.Close()
		}
		select {
		case <-c.done:
			return fmt.Errorf("waiting for charon %s: %w (%v)\n%s", c.name, ErrExited, c.exitErr(), c.OutputTail())
		case <-ctx.Done():
			return fmt.Errorf("waiting for VICI socket of charon %s: %w", c.name, ctx.Err())
		case <-tick.C:
		}
	}
}

// Name is the node name.
func (c *Charon) Name() string { return c.name }

// LogFile is the path of the instance's charon log.
func (c *Charon) LogFile() string { return c.opts.Daemon.LogFile }

// Socket is the VICI socket path.
func (c *Charon) Socket() string { return c.opts.Daemon.Socket }

// PID is charon's process id.
func (c *Charon) PID() int { return c.cmd.Process.Pid }

// Done is closed when charon has exited.
func (c *Charon) Done() <-chan struct{} { return c.done }

func (c *Charon) exitErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waitErr
}

// OutputTail returns the end of charon's log, for error messages.
func (c *Charon) OutputTail() string {
	var b strings.Builder
	for _, p := range []string{filepath.Join(c.opts.Dir, "charon.out"), c.opts.Daemon.LogFile} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s\n", p, strings.Join(lines, "\n"))
	}
	return b.String()
}

// Load writes sw (and creds, if any) into the charon's directory and loads
// everything with swanctl --load-all.
func (c *Charon) Load(ctx context.Context, sw Swanctl, creds *Creds) error {
	conf, err := sw.Render()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.opts.Dir, "swanctl.conf"), conf, 0o600); err != nil {
		return fmt.Errorf("writing swanctl.conf of %s: %w", c.name, err)
	}
	if creds != nil {
		if err := creds.write(c.opts.Dir); err != nil {
			return fmt.Errorf("writing credentials of %s: %w", c.name, err)
		}
	}
	cmd := exec.CommandContext(ctx, c.opts.Swanctl, "--load-all", "--noprompt", "--uri", "unix://"+c.Socket())
	cmd.Env = c.confEnv
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("loading swanctl.conf into %s: %w\n%s", c.name, err, out)
	}
	c.opts.Log.Debug("swanctl loaded", "node", c.name)
	return nil
}

// Session opens a VICI session. The caller closes it.
func (c *Charon) Session(ctx context.Context) (*vici.Session, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := vici.NewSession(
		vici.WithSocketPath(c.Socket()),
		vici.WithDialContext(func(_ context.Context, network, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(dctx, network, addr)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("opening VICI session to %s: %w", c.name, err)
	}
	return s, nil
}

// Initiate initiates child (of IKE connection ike) and returns once it is
// established.
func (c *Charon) Initiate(ctx context.Context, ike, child string) error {
	s, err := c.Session(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	m := vici.NewMessage()
	if err := errors.Join(m.Set("ike", ike), m.Set("child", child), m.Set("timeout", "30000"), m.Set("loglevel", "-1")); err != nil {
		return fmt.Errorf("building initiate request: %w", err)
	}
	resp, err := s.Call(ctx, "initiate", m)
	if err != nil {
		return fmt.Errorf("initiating %s/%s on %s: %w", ike, child, c.name, err)
	}
	if err := resp.Err(); err != nil {
		return fmt.Errorf("initiating %s/%s on %s: %w", ike, child, c.name, err)
	}
	return nil
}

// ChildSA is the part of list-sas the lab looks at.
type ChildSA struct {
	IKE, Child string
	IKEState   string
	State      string
	Remote     string
	SPIIn      string
	SPIOut     string
	Encap      bool
}

// ChildSAs lists the established CHILD_SAs.
func (c *Charon) ChildSAs(ctx context.Context) ([]ChildSA, error) {
	s, err := c.Session(ctx)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var out []ChildSA
	for m, err := range s.CallStreaming(ctx, "list-sas", "list-sa", nil) {
		if err != nil {
			return nil, fmt.Errorf("listing SAs of %s: %w", c.name, err)
		}
		for _, ikeName := range m.Keys() {
			ike, ok := m.Get(ikeName).(*vici.Message)
			if !ok {
				continue
			}
			children, _ := ike.Get("child-sas").(*vici.Message)
			if children == nil {
				continue
			}
			for _, k := range children.Keys() {
				ch, ok := children.Get(k).(*vici.Message)
				if !ok {
					continue
				}
				out = append(out, ChildSA{
					IKE:      ikeName,
					Child:    str(ch.Get("name")),
					IKEState: str(ike.Get("state")),
					State:    str(ch.Get("state")),
					Remote:   str(ike.Get("remote-host")),
					SPIIn:    str(ch.Get("spi-in")),
					SPIOut:   str(ch.Get("spi-out")),
					Encap:    str(ch.Get("encap")) == "yes",
				})
			}
		}
	}
	return out, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// Events subscribes to VICI events on a session of its own (a streamed
// command must not share the session). Close the returned Events.
func (c *Charon) Events(ctx context.Context, names ...string) (*Events, error) {
	s, err := c.Session(ctx)
	if err != nil {
		return nil, err
	}
	ch := make(chan vici.Event, 256)
	s.NotifyEvents(ch)
	if err := s.Subscribe(names...); err != nil {
		s.Close()
		return nil, fmt.Errorf("subscribing to %v on %s: %w", names, c.name, err)
	}
	return &Events{C: ch, s: s}, nil
}

// Events is a VICI event subscription. C is closed when the session ends.
type Events struct {
	C      <-chan vici.Event
	s      *vici.Session
	mu     sync.Mutex // guards closed
	closed bool
}

// Close ends the subscription. Safe to call twice.
func (e *Events) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	return e.s.Close()
}

// WaitChildUp waits for a child-updown event reporting child up, and
// returns when it was received.
func (e *Events) WaitChildUp(ctx context.Context, child string) (time.Time, error) {
	for {
		select {
		case ev, ok := <-e.C:
			if !ok {
				return time.Time{}, fmt.Errorf("waiting for CHILD_SA %s: %w", child, ErrExited)
			}
			if ev.Name == "child-updown" && childUp(ev.Message, child) {
				return ev.Timestamp, nil
			}
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for CHILD_SA %s: %w", child, ctx.Err())
		}
	}
}

// childUp reports whether a child-updown event says child came up.
func childUp(m *vici.Message, child string) bool {
	if m == nil || str(m.Get("up")) != "yes" {
		return false
	}
	for _, ikeName := range m.Keys() {
		ike, ok := m.Get(ikeName).(*vici.Message)
		if !ok {
			continue
		}
		children, _ := ike.Get("child-sas").(*vici.Message)
		if children == nil {
			continue
		}
		for _, k := range children.Keys() {
			ch, ok := children.Get(k).(*vici.Message)
			if ok && str(ch.Get("name")) == child {
				return true
			}
		}
	}
	return false
}

// Kill ends charon with SIGKILL, as a crash would: it neither deletes its
// SAs nor tells its peers. It waits for the exit.
func (c *Charon) Kill() error {
	select {
	case <-c.done:
		return nil
	default:
	}
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing charon %s: %w", c.name, err)
	}
	<-c.done
	return nil
}

// Close stops charon (SIGTERM, SIGKILL after 5 s) and waits for it. Safe
// to call twice.
func (c *Charon) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	select {
	case <-c.done:
		return nil
	default:
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping charon %s: %w", c.name, err)
	}
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-c.done:
		return nil
	case <-t.C:
		c.opts.Log.Warn("charon ignored SIGTERM, killing it", "node", c.name)
		return c.Kill()
	}
}
