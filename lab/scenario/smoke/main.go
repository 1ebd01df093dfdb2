// Command smoke is the lab's smoke scenario, run inside the UML guest: one
// client and one gateway holding the VIPs, an IKEv2 tunnel with kernel ESP
// (kernel-netlink), and a bounded probe stream through it. Its result says
// how long the guest took to boot, how long the tunnel took to come up, how
// many probes went through, and what the wire and the kernel saw.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/handoffvpn/handoff/lab/guest"
	"github.com/handoffvpn/handoff/lab/site"
	"github.com/handoffvpn/handoff/lab/swan"
	"github.com/handoffvpn/handoff/lab/traffic"
)

// result is the smoke scenario's JSON line; the first five fields are the
// contract of `make lab-smoke`.
type result struct {
	BootMS      int64   `json:"boot_ms"`
	TunnelUpMS  int64   `json:"tunnel_up_ms"`
	ProbesSent  int     `json:"probes_sent"`
	ProbesLost  int     `json:"probes_lost"`
	Kernel      string  `json:"kernel"`
	Auth        string  `json:"auth"`
	Mode        string  `json:"mode"`
	Encap       bool    `json:"udp_encap"`
	IntervalMS  float64 `json:"interval_ms"`
	LargestGap  float64 `json:"largest_gap_ms"`
	Reordered   int     `json:"reordered"`
	RTTAvgMS    float64 `json:"rtt_avg_ms"`
	ESPPackets  int     `json:"esp_packets"`
	ESPSeqReuse int     `json:"esp_seq_reused"`
	XFRMStates  int     `json:"client_xfrm_states"`
	ESPAlgo     string  `json:"esp_algo"`
	SetupMS     int64   `json:"setup_ms"`
}

func main() {
	fs := flag.NewFlagSet("smoke", flag.ExitOnError)
	probes := fs.Int("probes", 1000, "probes to send through the tunnel")
	interval := fs.Duration("interval", 2*time.Millisecond, "probe interval")
	auth := fs.String("auth", "psk", "IKE authentication: psk or cert")
	encap := fs.Bool("encap", true, "force UDP encapsulation (port 4500)")
	mode := fs.String("mode", "s2s", "client mode: s2s (site-to-site) or rw (road warrior, virtual IP)")
	guest.Main(fs, func(ctx context.Context, env *guest.Env) (any, error) {
		return smoke(ctx, env, *probes, *interval, *auth, *encap, *mode)
	})
}

func smoke(ctx context.Context, env *guest.Env, probes int, interval time.Duration, auth string, encap bool, mode string) (res result, err error) {
	res = result{BootMS: env.BootTime().Milliseconds(), Kernel: guest.KernelRelease(), Auth: auth, Mode: mode, Encap: encap,
		IntervalMS: float64(interval.Microseconds()) / 1000}
	prof := swan.Profile{Encap: encap}
	switch auth {
	case "psk":
		prof.Auth = swan.AuthPSK
	case "cert":
		prof.Auth = swan.AuthCert
	default:
		return res, fmt.Errorf("unknown -auth %q", auth)
	}
	switch mode {
	case "s2s":
	case "rw":
		prof.RoadWarrior = true
	default:
		return res, fmt.Errorf("unknown -mode %q", mode)
	}

	t0 := time.Now()
	s, err := site.Start(ctx, site.Options{
		Gateways: 1, StaticVIPs: true, Profile: prof,
		Dir: env.Dir, RunDir: env.RunDir, Log: env.Log,
	})
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, s.Close()) }()
	if err := env.NoteNamespaces(s.Topo.Namespaces()); err != nil {
		return res, err
	}
	res.SetupMS = time.Since(t0).Milliseconds()

	up, err := s.Connect(ctx)
	if err != nil {
		return res, err
	}
	res.TunnelUpMS = up.Milliseconds()
	env.Log.Info("tunnel up", "took", up)

	p, err := s.Probe(ctx, traffic.ProbeConfig{Interval: interval, Count: probes})
	if err != nil {
		return res, err
	}
	rep, err := p.Wait(ctx)
	if err != nil {
		return res, err
	}
	res.ProbesSent, res.ProbesLost = rep.Sent, rep.Lost
	res.LargestGap, res.Reordered = rep.GapMS(), rep.Reordered
	res.RTTAvgMS = float64(rep.RTTAvg.Microseconds()) / 1000
	capRep := s.Capture.Report()
	res.ESPPackets, res.ESPSeqReuse = capRep.ESP, capRep.Reused
	states, err := site.KernelStates(s.Topo.Client)
	if err != nil {
		return res, err
	}
	res.XFRMStates = len(states)
	if len(states) > 0 {
		res.ESPAlgo = states[0].Algo
	}
	env.Log.Info("probes done", "report", rep, "capture", capRep)

	// The smoke test's claims, checked where the evidence is.
	switch {
	case rep.Sent != probes:
		return res, fmt.Errorf("sent %d of %d probes", rep.Sent, probes)
	case len(states) < 2:
		return res, fmt.Errorf("client has %d kernel XFRM states, want an inbound and an outbound one", len(states))
	case capRep.ESP < 2*rep.Received:
		// Every echoed probe crossed the client's port twice as ESP.
		return res, fmt.Errorf("only %d ESP packets on the wire for %d echoed probes: traffic bypassed the tunnel", capRep.ESP, rep.Received)
	}
	return res, nil
}
