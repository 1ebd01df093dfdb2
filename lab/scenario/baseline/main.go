// Command baseline is the lab's conventional-failover scenario, run inside
// the UML guest, and the yardstick for Handoff's own failover: two gateways
// with keepalived (VRRPv3, unicast peers, sub-second adverts) moving both
// VIPs, a client with DPD and dpd_action=restart, a probe stream through the
// tunnel, and gateway 1 dying (keepalived and charon SIGKILLed and, by
// default, its links taken down). Nothing carries the SAs over: the client
// notices through DPD and builds a new IKE SA with gateway 2. The result is
// the gap the client saw and how it splits up.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"time"

	"github.com/handoffvpn/handoff/lab/guest"
	"github.com/handoffvpn/handoff/lab/site"
	"github.com/handoffvpn/handoff/lab/swan"
	"github.com/handoffvpn/handoff/lab/topo"
	"github.com/handoffvpn/handoff/lab/traffic"
	"github.com/handoffvpn/handoff/lab/vrrp"
)

type config struct {
	interval    time.Duration
	advert      time.Duration
	dpd         time.Duration
	rtTimeout   time.Duration
	rtTries     int
	rtBase      float64
	warmup      time.Duration
	tail        time.Duration
	maxDuration time.Duration
	death       string
	encap       bool
}

// result is the baseline's JSON line.
type result struct {
	Scenario   string  `json:"scenario"`
	GapMS      float64 `json:"gap_ms"`
	ProbesSent int     `json:"probes_sent"`
	ProbesLost int     `json:"probes_lost"`
	Reordered  int     `json:"reordered"`
	// Times after the kill.
	VIPMovedMS   float64 `json:"vip_moved_ms"`
	IKEDownMS    float64 `json:"ike_down_ms"`
	TunnelReupMS float64 `json:"tunnel_reup_ms"`
	GapStartMS   float64 `json:"gap_start_ms"`
	// Settings.
	IntervalMS         float64 `json:"interval_ms"`
	AdvertMS           int64   `json:"advert_ms"`
	DPDDelayMS         int64   `json:"dpd_delay_ms"`
	RetransmitGiveUpMS int64   `json:"retransmit_giveup_ms"`
	Death              string  `json:"death"`
	Encap              bool    `json:"udp_encap"`
	// Evidence.
	ESPSeqReused int    `json:"esp_seq_reused"`
	SPIsSeen     int    `json:"spis_seen"`
	TunnelUpMS   int64  `json:"tunnel_up_ms"`
	BootMS       int64  `json:"boot_ms"`
	Kernel       string `json:"kernel"`
}

func main() {
	fs := flag.NewFlagSet("baseline", flag.ExitOnError)
	var c config
	fs.DurationVar(&c.interval, "interval", 5*time.Millisecond, "probe interval")
	fs.DurationVar(&c.advert, "advert", 100*time.Millisecond, "VRRP advertisement interval")
	fs.DurationVar(&c.dpd, "dpd", time.Second, "client DPD delay")
	fs.DurationVar(&c.rtTimeout, "retransmit-timeout", 500*time.Millisecond, "client IKE retransmit timeout")
	fs.IntVar(&c.rtTries, "retransmit-tries", 1, "client IKE retransmits before giving up")
	fs.Float64Var(&c.rtBase, "retransmit-base", 1.8, "client IKE retransmit backoff base")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "probe time before gateway 1 dies")
	fs.DurationVar(&c.tail, "tail", time.Second, "probe time after traffic resumed")
	fs.DurationVar(&c.maxDuration, "max", 40*time.Second, "upper bound of the probe stream")
	fs.StringVar(&c.death, "death", "node", "how gateway 1 dies: node (links down, processes killed) or procs (processes killed, VIPs taken off its live kernel)")
	fs.BoolVar(&c.encap, "encap", true, "force UDP encapsulation (port 4500)")
	guest.Main(fs, func(ctx context.Context, env *guest.Env) (any, error) {
		return baseline(ctx, env, c)
	})
}

func baseline(ctx context.Context, env *guest.Env, c config) (res result, err error) {
	rt := swan.Retransmit{Timeout: c.rtTimeout, Tries: c.rtTries, Base: c.rtBase}
	res = result{
		Scenario: "baseline", BootMS: env.BootTime().Milliseconds(), Kernel: guest.KernelRelease(),
		IntervalMS: float64(c.interval.Microseconds()) / 1000, AdvertMS: c.advert.Milliseconds(),
		DPDDelayMS: c.dpd.Milliseconds(), RetransmitGiveUpMS: rt.GiveUp().Milliseconds(),
		Death: c.death, Encap: c.encap,
	}
	if c.death != "node" && c.death != "procs" {
		return res, fmt.Errorf("unknown -death %q", c.death)
	}
	s, err := site.Start(ctx, site.Options{
		Gateways: 2, Profile: swan.Profile{Encap: c.encap, DPDDelay: c.dpd},
		ClientRetransmit: rt, Dir: env.Dir, RunDir: env.RunDir, Log: env.Log,
	})
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, s.Close()) }()
	if err := env.NoteNamespaces(s.Topo.Namespaces()); err != nil {
		return res, err
	}
	gw1, gw2 := s.Topo.Gateways[0], s.Topo.Gateways[1]

	kas := make([]*vrrp.Keepalived, 2)
	defer func() {
		for _, k := range kas {
			if k != nil {
				err = errors.Join(err, k.Close())
			}
		}
	}()
	for i, gw := range s.Topo.Gateways {
		peer := s.Topo.Gateways[1-i]
		k, err := vrrp.Start(ctx, gw, vrrp.Config{
			Name: gw.Name, Dir: env.Path(gw.Name), RunDir: env.RunDir + "/" + gw.Name,
			Interface: topo.OuterIf, RouterID: 51, Priority: 200 - 100*i, Advert: c.advert,
			UnicastSrc: gw.Outer.Addr(), UnicastPeers: []netip.Addr{peer.Outer.Addr()},
			VIPs: []vrrp.VIP{
				{Addr: netip.MustParsePrefix(topo.VIPOuter + "/24"), Dev: topo.OuterIf},
				{Addr: netip.MustParsePrefix(topo.VIPInner + "/24"), Dev: topo.InnerIf},
			},
			Log: env.Log,
		})
		if err != nil {
			return res, err
		}
		kas[i] = k
	}
	vip := netip.MustParseAddr(topo.VIPOuter)
	if err := waitStable(ctx, gw1, gw2, vip, 10*time.Second); err != nil {
		return res, err
	}
	env.Log.Info("gw1 holds the VIPs")

	// Subscribe before connecting: the first CHILD_SA's child-updown event
	// can trail the initiate reply, and must not be taken for the
	// re-establishment later.
	events, err := s.Client.Events(ctx, "ike-updown", "child-updown")
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, events.Close()) }()
	up, err := s.Connect(ctx)
	if err != nil {
		return res, err
	}
	res.TunnelUpMS = up.Milliseconds()
	if _, err := events.WaitChildUp(ctx, swan.ChildName); err != nil {
		return res, err
	}

	p, err := s.Probe(ctx, traffic.ProbeConfig{Interval: c.interval, Count: int(c.maxDuration / c.interval)})
	if err != nil {
		return res, err
	}
	defer p.Stop()
	if err := sleep(ctx, c.warmup); err != nil {
		return res, err
	}
	if _, got, _ := p.Progress(); got == 0 {
		return res, fmt.Errorf("no echoes through the tunnel before the failure")
	}

	// Gateway 1 dies.
	tKill := time.Now()
	if err := kill(gw1, kas[0], s.Gateways[0], c.death); err != nil {
		return res, fmt.Errorf("killing gw1: %w", err)
	}
	env.Log.Info("gw1 killed", "death", c.death, "took", time.Since(tKill))

	vipAt := make(chan time.Time, 1)
	go func() { vipAt <- waitAddr(ctx, gw2, vip) }()

	wctx, cancel := context.WithTimeout(ctx, c.maxDuration-c.warmup-c.tail)
	defer cancel()
	ikeDown, reup, err := waitReestablished(wctx, events, tKill)
	if err != nil {
		return res, fmt.Errorf("client did not re-establish through gw2: %w", err)
	}
	res.IKEDownMS = ms(ikeDown.Sub(tKill))
	res.TunnelReupMS = ms(reup.Sub(tKill))
	// Traffic resumed when an echo arrives after the new CHILD_SA is up.
	for {
		if _, _, last := p.Progress(); last.After(reup) {
			break
		}
		if err := sleep(wctx, 5*time.Millisecond); err != nil {
			return res, fmt.Errorf("no echo after the tunnel came back: %w", err)
		}
	}
	if err := sleep(ctx, c.tail); err != nil {
		return res, err
	}
	p.Stop()
	rep, err := p.Wait(ctx)
	if err != nil {
		return res, err
	}
	if t := <-vipAt; !t.IsZero() {
		res.VIPMovedMS = ms(t.Sub(tKill))
	}
	res.GapMS, res.ProbesSent, res.ProbesLost, res.Reordered = rep.GapMS(), rep.Sent, rep.Lost, rep.Reordered
	res.GapStartMS = ms(rep.GapStart.Sub(tKill))
	capRep := s.Capture.Report()
	res.ESPSeqReused, res.SPIsSeen = capRep.Reused, len(capRep.SPIs)
	env.Log.Info("baseline done", "report", rep, "capture", capRep)
	if states, err := site.KernelStates(gw2); err != nil || len(states) < 2 {
		return res, fmt.Errorf("gw2 carries %d kernel SAs after the failover (%v)", len(states), err)
	}
	return res, nil
}

// waitStable waits until a holds addr and b does not, for a few adverts in
// a row.
func waitStable(ctx context.Context, a, b *topo.Node, addr netip.Addr, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	stable := 0
	for stable < 30 {
		onA, errA := a.HasAddr(addr)
		onB, errB := b.HasAddr(addr)
		if err := errors.Join(errA, errB); err != nil {
			return err
		}
		if onA && !onB {
			stable++
		} else {
			stable = 0
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("waiting for %s to hold %s alone: %w", a.Name, addr, err)
		}
	}
	return nil
}

// waitAddr polls until n holds addr and returns when it saw it (zero on
// ctx's end).
func waitAddr(ctx context.Context, n *topo.Node, addr netip.Addr) time.Time {
	for {
		if ok, err := n.HasAddr(addr); err == nil && ok {
			return time.Now()
		}
		if sleep(ctx, 5*time.Millisecond) != nil {
			return time.Time{}
		}
	}
}

// waitReestablished waits for the client's IKE SA to go down and a CHILD_SA
// to come up again after the kill, returning when each event arrived.
func waitReestablished(ctx context.Context, ev *swan.Events, after time.Time) (down, up time.Time, err error) {
	for {
		select {
		case e, ok := <-ev.C:
			if !ok {
				return down, up, fmt.Errorf("client VICI session ended")
			}
			if e.Timestamp.Before(after) {
				continue
			}
			switch {
			case e.Name == "ike-updown" && e.Message.Get("up") != "yes" && down.IsZero():
				down = e.Timestamp
			case e.Name == "child-updown" && e.Message.Get("up") == "yes":
				if down.IsZero() {
					down = e.Timestamp
				}
				return down, e.Timestamp, nil
			}
		case <-ctx.Done():
			return down, up, ctx.Err()
		}
	}
}

// kill makes gw1 die. "node": its links go down first (a crashed machine
// stops forwarding and answering ARP at once), then keepalived and charon
// are SIGKILLed. "procs": keepalived and charon are SIGKILLed, the kernel
// stays up with its SAs, and the VIPs are taken off it as a cloud
// provider's move would; without that a live kernel keeps answering ARP
// for the VIPs and the client's new IKE_SA_INIT never reaches gw2.
func kill(gw *topo.Node, k *vrrp.Keepalived, c *swan.Charon, death string) error {
	if death == "node" {
		if err := gw.LinksDown(); err != nil {
			return err
		}
		return errors.Join(k.Kill(), c.Kill())
	}
	if err := errors.Join(k.Kill(), c.Kill()); err != nil {
		return err
	}
	return errors.Join(
		gw.DelAddr(topo.OuterIf, netip.MustParsePrefix(topo.VIPOuter+"/24")),
		gw.DelAddr(topo.InnerIf, netip.MustParsePrefix(topo.VIPInner+"/24")),
	)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
