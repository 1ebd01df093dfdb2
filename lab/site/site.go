// Package site assembles a running lab site from the lab's parts: the
// namespace topology (lab/topo), one charon per client and gateway
// (lab/swan) with the standard profile, an echo server on the protected
// host and an ESP capture on the client's port of the outside segment
// (lab/traffic). Scenarios start a site, connect, probe, break things and
// read the instruments; later scenarios (SA handoff, Handoff agents,
// install-rate benchmarks) add their own steps on top.
//
// Nothing here is specific to the UML guest: with Options.Libipsec and a
// unique Options.Prefix the same site runs on a host kernel without ESP.
package site

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sync/errgroup"

	"github.com/handoffvpn/handoff/lab/swan"
	"github.com/handoffvpn/handoff/lab/topo"
	"github.com/handoffvpn/handoff/lab/traffic"
)

// EchoPort is the UDP port of the protected host's echo server.
const EchoPort = 9000

// Options describe a site.
type Options struct {
	// Gateways is the number of gateways (1..9).
	Gateways int
	// StaticVIPs puts the VIPs on gw1 (no VRRP).
	StaticVIPs bool
	// Profile is the IKE setup; its addresses and traffic selectors are
	// filled in from the topology plan. Auth defaults to a fresh PSK.
	Profile swan.Profile
	// ClientRetransmit is the client charon's retransmission schedule (it
	// bounds how fast DPD declares a gateway dead).
	ClientRetransmit swan.Retransmit
	// Libipsec runs charon with kernel-libipsec (host kernels).
	Libipsec bool
	// Prefix is prepended to namespace names (empty in the guest).
	Prefix string
	// Dir holds per-node configs and logs; RunDir the sockets.
	Dir, RunDir string
	// LogLevel of charon's file logs (default 1).
	LogLevel int
	// NoCapture skips the ESP capture.
	NoCapture bool
	// HA loads charon's ha plugin on the gateways (IKE continuity).
	HA  bool
	Log *slog.Logger
}

// Site is a running site. Close tears it down.
type Site struct {
	Topo     *topo.Topology
	Client   *swan.Charon
	Gateways []*swan.Charon // Gateways[0] runs in gw1
	Echo     *traffic.Echoer
	Capture  *traffic.Capture
	Profile  swan.Profile

	opts Options
	log  *slog.Logger

	mu     sync.Mutex // guards closed
	closed bool
}

// Start builds the topology and starts and configures every charon.
func Start(ctx context.Context, opts Options) (*Site, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &Site{opts: opts, log: opts.Log, Profile: opts.Profile}
	if err := s.start(ctx); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

func (s *Site) start(ctx context.Context) error {
	p := &s.Profile
	p.ClientAddr, p.GatewayAddr = topo.ClientOuter, topo.VIPOuter
	p.ClientTS, p.ProtectedTS, p.ClientNet = topo.ClientInner+"/32", topo.ProtectedNet, topo.ClientNet
	switch p.Auth {
	case "", swan.AuthPSK:
		p.Auth = swan.AuthPSK
		if p.PSK == "" {
			psk, err := swan.NewPSK()
			if err != nil {
				return err
			}
			p.PSK = psk
		}
	case swan.AuthCert:
		if p.CA == nil {
			if err := p.NewCerts(); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("starting site: unknown auth %q", p.Auth)
	}

	t0 := time.Now()
	tp, err := topo.Build(ctx, topo.Spec{
		Prefix: s.opts.Prefix, Gateways: s.opts.Gateways, StaticVIPs: s.opts.StaticVIPs,
		RoadWarrior: p.RoadWarrior, Log: s.log,
	})
	if err != nil {
		return err
	}
	s.Topo = tp
	s.log.Info("topology up", "took", time.Since(t0).Round(time.Millisecond))

	err = tp.Inside.Do(func() error {
		conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(topo.InsideHost), EchoPort)))
		if err != nil {
			return fmt.Errorf("listening for probes: %w", err)
		}
		s.Echo = traffic.NewEchoer(conn)
		return nil
	})
	if err != nil {
		return err
	}
	if !s.opts.NoCapture {
		// The client's port on the outside bridge sees every packet to and
		// from the client once, whichever gateway sends it.
		err = tp.Cloud.Do(func() error {
			c, err := traffic.OpenCapture(tp.Client.Name + "-o")
			s.Capture = c
			return err
		})
		if err != nil {
			return err
		}
	}

	// Start all charons at once: each takes a few hundred ms in UML.
	t0 = time.Now()
	s.Gateways = make([]*swan.Charon, len(tp.Gateways))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		c, err := s.startCharon(gctx, tp.Client, s.opts.ClientRetransmit, p.RoadWarrior || s.opts.Libipsec, false)
		if err != nil {
			return err
		}
		s.Client = c
		sw, creds := p.ClientConfig()
		return c.Load(gctx, sw, creds)
	})
	for i, gw := range tp.Gateways {
		g.Go(func() error {
			c, err := s.startCharon(gctx, gw, swan.Retransmit{}, s.opts.Libipsec, s.opts.HA)
			if err != nil {
				return err
			}
			s.Gateways[i] = c
			sw, creds := p.GatewayConfig()
			return c.Load(gctx, sw, creds)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	s.log.Info("charons up", "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

func (s *Site) startCharon(ctx context.Context, n *topo.Node, rt swan.Retransmit, routes, ha bool) (*swan.Charon, error) {
	return swan.Start(ctx, n, swan.Options{
		Daemon: swan.Daemon{
			Name:          n.Name,
			HA:            ha,
			Libipsec:      s.opts.Libipsec,
			InstallRoutes: routes,
			Retransmit:    rt,
			LogLevel:      s.opts.LogLevel,
		},
		Dir:    filepath.Join(s.opts.Dir, n.Name),
		RunDir: filepath.Join(s.opts.RunDir, n.Name),
		Log:    s.log,
	})
}

// Connect initiates the client's CHILD_SA and returns how long it took
// until charon reported it established.
func (s *Site) Connect(ctx context.Context) (time.Duration, error) {
	t0 := time.Now()
	if err := s.Client.Initiate(ctx, swan.ConnName, swan.ChildName); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// Probe starts a probe stream from the client's inner address to the echo
// server through the tunnel.
func (s *Site) Probe(ctx context.Context, cfg traffic.ProbeConfig) (*traffic.Prober, error) {
	var conn *net.UDPConn
	err := s.Topo.Client.Do(func() error {
		var err error
		conn, err = net.DialUDP("udp4",
			&net.UDPAddr{IP: net.ParseIP(topo.ClientInner)},
			&net.UDPAddr{IP: net.ParseIP(topo.InsideHost), Port: EchoPort})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening probe socket in client: %w", err)
	}
	p, err := traffic.StartProbe(ctx, conn, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return p, nil
}

// XFRMState is one kernel SA as the lab reports it (no keys).
type XFRMState struct {
	Src   string `json:"src"`
	Dst   string `json:"dst"`
	SPI   string `json:"spi"`
	Algo  string `json:"algo"`
	Encap bool   `json:"udp_encap"`
}

// KernelStates lists node's kernel XFRM states.
func KernelStates(n *topo.Node) ([]XFRMState, error) {
	states, err := n.Netlink().XfrmStateList(netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing XFRM states in %s: %w", n.Name, err)
	}
	out := make([]XFRMState, 0, len(states))
	for _, st := range states {
		x := XFRMState{Src: st.Src.String(), Dst: st.Dst.String(), SPI: strconv.FormatUint(uint64(st.Spi), 16), Encap: st.Encap != nil}
		switch {
		case st.Aead != nil:
			x.Algo = st.Aead.Name
		case st.Crypt != nil:
			x.Algo = st.Crypt.Name
		}
		out = append(out, x)
	}
	return out, nil
}

// Close stops every charon, the instruments and the topology. Safe to call
// twice.
func (s *Site) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, c := range append([]*swan.Charon{s.Client}, s.Gateways...) {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	if s.Capture != nil {
		errs = append(errs, s.Capture.Close())
	}
	if s.Echo != nil {
		errs = append(errs, s.Echo.Close())
	}
	if s.Topo != nil {
		errs = append(errs, s.Topo.Close())
	}
	return errors.Join(errs...)
}
