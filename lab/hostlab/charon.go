package hostlab

import (
	"context"
	"errors"
	"fmt"
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

// Plugins is the explicit load list of a host-lab charon: kernel-libipsec
// before kernel-netlink so that userspace ESP handles the SAs (the host
// kernel has no ESP) while kernel-netlink still handles addresses and routes.
const Plugins = "random nonce openssl aes sha1 sha2 hmac gcm pem pkcs1 x509 pubkey kdf kernel-libipsec kernel-netlink socket-default vici"

// CharonConfig is what differs between the charons of a lab.
type CharonConfig struct {
	// Swanctl is the swanctl.conf loaded after start (connections and
	// secrets).
	Swanctl string
	// Settings are extra strongswan.conf lines inside the charon-systemd
	// section, e.g. "block_threshold = 3".
	Settings string
}

// Charon is one charon-systemd running in a lab namespace. It has no PID
// file (charon-systemd writes none); the lab knows its PID from starting it.
type Charon struct {
	ns   *Netns
	name string
	dir  string
	cfg  CharonConfig

	mu   sync.Mutex // guards the following fields
	proc *charonProc
}

type charonProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and been reaped
}

// StartCharon writes the instance's strongswan.conf and swanctl.conf under
// the lab directory, starts charon-systemd in ns, waits for its VICI socket
// and loads the swanctl configuration. The charon is stopped in t.Cleanup.
func (l *Lab) StartCharon(ns *Netns, name string, cfg CharonConfig) *Charon {
	l.t.Helper()
	dir := filepath.Join(l.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		l.t.Fatalf("creating charon directory: %v", err)
	}
	c := &Charon{ns: ns, name: name, dir: dir, cfg: cfg}
	if err := c.writeConfig(); err != nil {
		l.t.Fatalf("charon %s: %v", name, err)
	}
	ns.mu.Lock()
	ns.charons = append(ns.charons, c)
	ns.mu.Unlock()
	if err := c.Start(context.Background()); err != nil {
		l.t.Fatalf("charon %s: %v\n%s", name, err, c.LogTail(40))
	}
	return c
}

func (c *Charon) writeConfig() error {
	conf := fmt.Sprintf(`charon-systemd {
	load_modular = no
	load = %s
	filelog {
		lab {
			path = %s
			time_format = %%H:%%M:%%S
			default = 1
			ike = 2
			flush_line = yes
		}
	}
	journal {
		default = -1
	}
	plugins {
		vici {
			socket = unix://%s
		}
	}
%s
}
`, Plugins, c.LogPath(), c.Socket(), c.cfg.Settings)
	if err := os.WriteFile(filepath.Join(c.dir, "strongswan.conf"), []byte(conf), 0o600); err != nil {
		return fmt.Errorf("writing strongswan.conf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, "swanctl.conf"), []byte(c.cfg.Swanctl), 0o600); err != nil {
		return fmt.Errorf("writing swanctl.conf: %w", err)
	}
	return nil
}

// Socket is the path of the instance's VICI socket.
func (c *Charon) Socket() string { return filepath.Join(c.dir, "charon.vici") }

// LogPath is the instance's charon log file.
func (c *Charon) LogPath() string { return filepath.Join(c.dir, "charon.log") }

// LogTail returns the last n lines of the charon log and its stderr.
func (c *Charon) LogTail(n int) string {
	var b strings.Builder
	for _, p := range []string{filepath.Join(c.dir, "stderr.log"), c.LogPath()} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "--- %s\n%s\n", filepath.Base(p), strings.Join(lines, "\n"))
	}
	return b.String()
}

// PID is the PID of the running charon, or 0 when none runs.
func (c *Charon) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return 0
	}
	select {
	case <-c.proc.done:
		return 0
	default:
		return c.proc.cmd.Process.Pid
	}
}

// Start starts charon if it does not run (again after Kill), waits for its
// VICI socket and loads the swanctl configuration.
func (c *Charon) Start(ctx context.Context) error {
	if c.PID() != 0 {
		return nil
	}
	// charon refuses to bind a socket file SIGKILL left behind.
	if err := os.Remove(c.Socket()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale VICI socket: %w", err)
	}
	bin, err := lookPath("charon-systemd")
	if err != nil {
		bin = CharonBinary
	}
	stderr, err := os.OpenFile(filepath.Join(c.dir, "stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening charon stderr log: %w", err)
	}
	defer stderr.Close()
	// ip netns exec execs charon in place, so the PID is charon's.
	cmd := exec.Command("ip", "netns", "exec", c.ns.name, bin)
	cmd.Env = append(os.Environ(), "STRONGSWAN_CONF="+filepath.Join(c.dir, "strongswan.conf"))
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	// Pdeathsig: a test process killed by a timeout takes charon with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting charon-systemd in %s: %w", c.ns.Tag, err)
	}
	p := &charonProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	c.mu.Lock()
	c.proc = p
	c.mu.Unlock()

	if err := c.waitSocket(ctx, p, 15*time.Second); err != nil {
		return err
	}
	if strings.TrimSpace(c.cfg.Swanctl) != "" {
		if _, err := c.Swanctl(ctx, "--load-all", "--noprompt", "--file", filepath.Join(c.dir, "swanctl.conf")); err != nil {
			return fmt.Errorf("loading swanctl.conf: %w", err)
		}
	}
	return nil
}

func (c *Charon) waitSocket(ctx context.Context, p *charonProc, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := net.DialTimeout("unix", c.Socket(), 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("charon exited before opening its VICI socket: %v", p.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("waiting for VICI socket %s: %w", c.Socket(), ctx.Err())
		case <-tick.C:
		}
	}
}

// Signal sends sig to the running charon (SIGSTOP, SIGCONT, ...).
func (c *Charon) Signal(sig syscall.Signal) error {
	pid := c.PID()
	if pid == 0 {
		return fmt.Errorf("signalling charon %s: not running", c.name)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("signalling charon %s (pid %d) with %v: %w", c.name, pid, sig, err)
	}
	return nil
}

// Kill kills charon with SIGKILL and waits until it is reaped. Its VICI
// socket file stays behind, as after a real crash.
func (c *Charon) Kill() error {
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("charon %s (pid %d) did not exit after SIGKILL", c.name, p.cmd.Process.Pid)
	}
}

// stop ends charon: SIGCONT in case a test left it stopped, SIGTERM, and
// SIGKILL when it has not exited within two seconds.
func (c *Charon) stop() error {
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(2 * time.Second):
	}
	return c.Kill()
}

// Swanctl runs swanctl against this instance's VICI socket.
func (c *Charon) Swanctl(ctx context.Context, args ...string) ([]byte, error) {
	args = append(args, "--uri", "unix://"+c.Socket())
	return run(ctx, "swanctl", args...)
}

// Session opens a VICI session to this instance; the caller closes it.
func (c *Charon) Session(ctx context.Context) (*vici.Session, error) {
	s, err := vici.NewSession(vici.WithSocketPath(c.Socket()),
		vici.WithDialContext(func(_ context.Context, network, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}))
	if err != nil {
		return nil, fmt.Errorf("opening VICI session to charon %s: %w", c.name, err)
	}
	return s, nil
}

// Initiate brings up a CHILD_SA (and its IKE_SA) and returns when it is
// installed.
func (c *Charon) Initiate(ctx context.Context, child string) error {
	_, err := c.Swanctl(ctx, "--initiate", "--child", child, "--timeout", "10")
	return err
}
