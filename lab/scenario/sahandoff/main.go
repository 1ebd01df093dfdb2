// Command sahandoff is the SA handoff scenario, run inside the UML lab
// guest: a client with a tunnel to gw1 and probe traffic through it; gw1's
// CHILD_SAs are exported through the real dataplane (package ipsec: VICI
// plus kernel XFRM) and replicated the agent's way: sealed and committed
// by agent.SACommitter into a two-node Raft log (mutual TLS over the
// guest's loopback), replay counters synced as a ReplayBatchCmd; gw2's
// node reads them back with agent.PrepareInstall (outbound sequence
// numbers jumped ahead) and installs them, the VIPs move (added on gw2 with
// gratuitous ARP first, then removed from gw1), and gw1 dies (charon
// killed, links down). gw2 then carries the tunnel. After that gw2
// re-establishes the IKE SA (Dataplane.Reestablish), the client rekeys its
// CHILD_SA and IKE SA and, after an idle spell, sends DPD: second_gap_ms is
// the largest gap across those, reestablish_gap_ms the one of the switch
// Reestablish causes itself. The client gives up on an unanswered
// request after 4.4 s, so without -reestablish the second outage (the
// client restarting its tunnel) falls inside the measured phases.
//
// It writes one JSON object; the first six fields are the contract of
// `make lab-sa-handoff`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/perf"
	"github.com/handoffvpn/handoff/ipsec"
	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/ipsec/vici/vicitest"
	"github.com/handoffvpn/handoff/ipsec/xfrm"
	"github.com/handoffvpn/handoff/lab/guest"
	"github.com/handoffvpn/handoff/lab/site"
	"github.com/handoffvpn/handoff/lab/swan"
	"github.com/handoffvpn/handoff/lab/topo"
	"github.com/handoffvpn/handoff/lab/traffic"
	"github.com/handoffvpn/handoff/raftstore"
)

// Result is the scenario's JSON result.
type Result struct {
	SAs                     int     `json:"sas"`
	GapMS                   float64 `json:"gap_ms"`
	ProbesLostAfterTakeover int     `json:"probes_lost_after_takeover"`
	ClientReplayErrors      int     `json:"client_replay_errors"`
	SeqReuse                int     `json:"seq_reuse"`
	SecondGapMS             float64 `json:"second_gap_ms"`

	// The takeover stream: probes lost while the SAs and VIPs moved.
	ProbesSent         int     `json:"probes_sent"`
	ProbesLostInSwitch int     `json:"probes_lost_in_switch"`
	HandoffMS          float64 `json:"handoff_ms"`
	ReplayReadMS       float64 `json:"replay_read_ms"`
	InstallMS          float64 `json:"install_ms"`
	SeqJump            uint64  `json:"seq_jump"`
	// gw1's outbound sequence number as exported, the number gw2's
	// outbound state started after, and the highest one seen on the wire.
	Gw1OSeqRead   uint64  `json:"gw1_oseq_read"`
	Gw2OSeqStart  uint64  `json:"gw2_oseq_start"`
	WireMaxSeq    uint32  `json:"wire_max_seq"`
	ReestablishMS float64 `json:"reestablish_ms"`
	// The switch Reestablish itself causes (the client replacing its IKE
	// SA and CHILD_SA on INITIAL_CONTACT).
	ReestablishGapMS float64        `json:"reestablish_gap_ms"`
	ReestablishLost  int            `json:"reestablish_probes_lost"`
	ReestablishErr   string         `json:"reestablish_error,omitempty"`
	SecondPhaseLost  int            `json:"second_phase_probes_lost"`
	ClientIKEBefore  []uint32       `json:"client_ike_ids_before"`
	ClientIKEAfter   []uint32       `json:"client_ike_ids_after"`
	ClientXFRMErrors int            `json:"client_xfrm_errors"`
	Encap            bool           `json:"udp_encap"`
	Reestablish      bool           `json:"reestablish"`
	MakeBeforeBreak  bool           `json:"make_before_break"`
	IntervalMS       float64        `json:"interval_ms"`
	ClientXFRMStat   map[string]int `json:"client_xfrm_stat"`
}

func main() {
	fs := flag.NewFlagSet("sahandoff", flag.ExitOnError)
	interval := fs.Duration("interval", 5*time.Millisecond, "probe interval (200 pps)")
	encap := fs.Bool("encap", true, "force UDP encapsulation (port 4500)")
	reestablish := fs.Bool("reestablish", true, "re-establish the IKE SA from gw2 after the takeover")
	dpd := fs.Duration("dpd", 2*time.Second, "client DPD delay")
	mbb := fs.Bool("make-before-break", false, "re-establish without INITIAL_CONTACT (ipsec.ReestablishConfig.MakeBeforeBreak)")
	record := fs.Bool("record-vici", false, "record gw2's VICI session as reestablish.transcript in the scratch directory (ipsec/testdata)")
	guest.Main(fs, func(ctx context.Context, env *guest.Env) (any, error) {
		return run(ctx, env, *interval, *encap, *reestablish, *mbb, *record, *dpd)
	})
}

func run(ctx context.Context, env *guest.Env, interval time.Duration, encap, reest, mbb, record bool, dpd time.Duration) (res Result, err error) {
	res = Result{Encap: encap, Reestablish: reest, MakeBeforeBreak: mbb, IntervalMS: float64(interval.Microseconds()) / 1000}
	log := env.Log
	s, err := site.Start(ctx, site.Options{
		Gateways: 2, StaticVIPs: true,
		Profile: swan.Profile{Encap: encap, DPDDelay: dpd},
		// The client gives up on an unanswered request after 4.4 s (LAB.md),
		// so a second outage shows within the measured phases.
		ClientRetransmit: swan.Retransmit{Timeout: time.Second, Tries: 2, Base: 1.4},
		Dir:              env.Dir, RunDir: env.RunDir, Log: log, LogLevel: 2,
	})
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, s.Close()) }()
	if err := env.NoteNamespaces(s.Topo.Namespaces()); err != nil {
		return res, err
	}
	if _, err := s.Connect(ctx); err != nil {
		return res, err
	}

	gw1, gw2 := s.Topo.Gateways[0], s.Topo.Gateways[1]
	dp1, close1, err := dataplane(gw1, s.Gateways[0].Socket(), log, ipsec.ReestablishConfig{})
	if err != nil {
		return res, err
	}
	defer close1()
	gw2Sock := s.Gateways[1].Socket()
	if record {
		f, err := os.Create(env.Path("reestablish.transcript"))
		if err != nil {
			return res, err
		}
		defer f.Close()
		fmt.Fprintf(f, "# gw2's VICI session in lab/scenario/sahandoff, recorded %s from charon 5.9.8\n", time.Now().UTC().Format(time.RFC3339))
		rec, err := vicitest.NewRecorder(filepath.Join(env.RunDir, "gw2-record.vici"), gw2Sock, f)
		if err != nil {
			return res, err
		}
		defer rec.Close()
		gw2Sock = filepath.Join(env.RunDir, "gw2-record.vici")
	}
	tmpl, err := s.Profile.ReestablishTemplate()
	if err != nil {
		return res, err
	}
	dp2, close2, err := dataplane(gw2, gw2Sock, log, ipsec.ReestablishConfig{Template: tmpl, Timeout: 5 * time.Second, MakeBeforeBreak: mbb})
	if err != nil {
		return res, err
	}
	defer close2()
	clientVICI := vici.New(vici.Config{Socket: s.Client.Socket(), Logger: log})
	defer clientVICI.Close()
	clientIKE, err := clientIKEIDs(ctx, clientVICI)
	if err != nil {
		return res, err
	}

	// The SA set is replicated ahead of a failure (the agent feeds it
	// continuously): export it while the tunnel is up and commit it to a
	// Raft log whose leader stands for gw1's agent and whose follower for
	// gw2's.
	if err := loopbackUp(); err != nil {
		return res, err
	}
	rc, err := perf.StartCluster(ctx, perf.ClusterOptions{Nodes: 2, Dir: env.Path("raft"), HeartbeatTimeout: time.Second, Logger: log})
	if err != nil {
		return res, fmt.Errorf("starting the Raft log: %w", err)
	}
	defer func() { err = errors.Join(err, rc.Close()) }()
	leader := rc.Leader()
	follower := rc.Followers(leader)[0]
	sas, err := dp1.Export(ctx)
	if err != nil {
		return res, fmt.Errorf("exporting gw1's SAs: %w", err)
	}
	if len(sas) == 0 {
		return res, errors.New("gw1 exported no SA")
	}
	changes := make(map[string]sa.Change, len(sas))
	for _, c := range sas {
		changes[c.ID] = sa.Change{Op: sa.Upsert, ID: c.ID, SA: c}
	}
	if _, _, err := agent.NewSACommitter(leader, rc.Sealer, 0, log, nil, nil).Commit(ctx, changes); err != nil {
		return res, fmt.Errorf("replicating gw1's SAs: %w", err)
	}

	// Stream A: carries through the handoff.
	// Short (1.5 s, the handoff in its middle), so that a UML stall
	// elsewhere is unlikely to be taken for the handoff's gap.
	probeA, err := s.Probe(ctx, traffic.ProbeConfig{Interval: interval, Count: int(1500 * time.Millisecond / interval)})
	if err != nil {
		return res, err
	}
	if err := sleep(ctx, 750*time.Millisecond); err != nil {
		return res, err
	}

	// The handoff, in one process as it must be (every process start costs
	// ~100 ms in UML): the replay counters synced into the log as the
	// agent's last sync would, read back on gw2's node with the jump,
	// installed, the VIPs moved, gw1 killed.
	t0 := time.Now()
	replays, err := dp1.Replay(ctx)
	if err != nil {
		return res, fmt.Errorf("reading gw1's replay counters: %w", err)
	}
	records := make([]raftstore.ReplayRecord, 0, len(replays))
	for _, r := range replays {
		records = append(records, raftstore.ReplayRecord{ID: r.ID, OSeq: r.OSeq, Seq: r.Seq, Bitmap: r.Bitmap, ReadAt: r.ReadAt})
	}
	if _, err := leader.Apply(ctx, &raftstore.ReplayBatchCmd{Records: records}); err != nil {
		return res, fmt.Errorf("syncing gw1's replay counters: %w", err)
	}
	if err := leader.Barrier(ctx); err != nil {
		return res, err
	}
	res.ReplayReadMS = ms(time.Since(t0))
	var cfg agent.Config
	cfg.Defaults()
	prep, err := replicated(ctx, follower, rc.Sealer, cfg, len(sas))
	if err != nil {
		return res, err
	}
	res.SAs = len(prep.Installs)
	for _, in := range prep.Installs {
		r := in.Replay
		res.SeqJump = in.OSeq - r.OSeq
		res.Gw1OSeqRead, res.Gw2OSeqStart = r.OSeq, in.OSeq
	}
	t1 := time.Now()
	if err := dp2.Install(ctx, prep.Installs); err != nil {
		return res, fmt.Errorf("installing on gw2: %w", err)
	}
	res.InstallMS = ms(time.Since(t1))
	// VIPs: add on gw2 and announce, then remove from gw1.
	for _, v := range []struct{ dev, addr string }{{topo.OuterIf, topo.VIPOuter}, {topo.InnerIf, topo.VIPInner}} {
		if err := gw2.AddAddr(v.dev, netip.MustParsePrefix(v.addr+"/24")); err != nil {
			return res, err
		}
		if err := garp(gw2, v.dev, netip.MustParseAddr(v.addr)); err != nil {
			return res, err
		}
	}
	for _, v := range []struct{ dev, addr string }{{topo.OuterIf, topo.VIPOuter}, {topo.InnerIf, topo.VIPInner}} {
		if err := gw1.DelAddr(v.dev, netip.MustParsePrefix(v.addr+"/24")); err != nil {
			return res, err
		}
	}
	res.HandoffMS = ms(time.Since(t0))
	// gw1 dies.
	if err := s.Gateways[0].Kill(); err != nil {
		return res, err
	}
	if err := gw1.LinksDown(); err != nil {
		return res, err
	}
	log.Info("handoff done", "sas", len(sas), "took", time.Since(t0), "replay_read", res.ReplayReadMS, "install", res.InstallMS)

	repA, err := probeA.Wait(ctx)
	if err != nil {
		return res, err
	}
	res.GapMS, res.ProbesSent, res.ProbesLostInSwitch = repA.GapMS(), repA.Sent, repA.Lost

	// Stream B: gw2 alone carries the tunnel.
	repB, err := probe(ctx, s, interval, 2*time.Second, nil)
	if err != nil {
		return res, err
	}
	res.ProbesLostAfterTakeover = repB.Lost
	res.ProbesSent += repB.Sent

	// Stream C1: gw2 re-establishes the IKE SA (INITIAL_CONTACT makes
	// the client replace its IKE SA and CHILD_SA: the one planned switch).
	repC1, err := probe(ctx, s, interval, 2*time.Second, func(ctx context.Context) error {
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
		if reest {
			t := time.Now()
			if err := dp2.Reestablish(ctx, sas); err != nil {
				res.ReestablishErr = err.Error()
				log.Warn("reestablish", "err", err)
			}
			res.ReestablishMS = ms(time.Since(t))
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	// Stream C2: the client's next rekeys, of its CHILD_SA and its IKE SA.
	// Unanswered, the client gives up 4.4 s later and restarts: the
	// stream lasts long enough to see that.
	repC2, err := probe(ctx, s, interval, 6*time.Second, func(ctx context.Context) error {
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
		if _, err := clientVICI.Rekey(ctx, vici.RekeyRequest{Child: swan.ChildName}); err != nil {
			log.Warn("client child rekey", "err", err)
		}
		if err := sleep(ctx, 800*time.Millisecond); err != nil {
			return err
		}
		if _, err := clientVICI.Rekey(ctx, vici.RekeyRequest{IKE: swan.ConnName}); err != nil {
			log.Warn("client IKE rekey", "err", err)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	// Idle: no inbound ESP, so the client sends DPD; then stream D sees
	// whether the client kept its IKE SA.
	if err := sleep(ctx, dpd+dpd/2); err != nil {
		return res, err
	}
	repD, err := probe(ctx, s, interval, 6*time.Second, nil)
	if err != nil {
		return res, err
	}
	res.ReestablishGapMS, res.ReestablishLost = repC1.GapMS(), repC1.Lost
	res.SecondGapMS = max(repC2.GapMS(), repD.GapMS())
	res.SecondPhaseLost = repC2.Lost + repD.Lost
	res.ProbesSent += repC1.Sent + repC2.Sent + repD.Sent
	after, err := clientIKEIDs(ctx, clientVICI)
	if err != nil {
		return res, err
	}
	res.ClientIKEBefore, res.ClientIKEAfter = sortedIDs(clientIKE), sortedIDs(after)

	capRep := s.Capture.Report()
	res.SeqReuse = capRep.Reused
	for _, st := range capRep.SPIs {
		if st.Senders == 2 {
			res.WireMaxSeq = st.MaxSeq
		}
	}
	stat, err := xfrmStat(s.Topo.Client)
	if err != nil {
		return res, err
	}
	res.ClientXFRMStat = stat
	res.ClientReplayErrors = stat["XfrmInStateSeqError"]
	for _, v := range stat {
		res.ClientXFRMErrors += v
	}
	log.Info("scenario", "A", repA, "B", repB, "C1", repC1, "C2", repC2, "D", repD, "capture", capRep)
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// probe runs one probe stream for d, with during running alongside.
func probe(ctx context.Context, s *site.Site, interval, d time.Duration, during func(context.Context) error) (traffic.ProbeReport, error) {
	p, err := s.Probe(ctx, traffic.ProbeConfig{Interval: interval, Count: int(d / interval)})
	if err != nil {
		return traffic.ProbeReport{}, err
	}
	var derr error
	if during != nil {
		derr = during(ctx)
	}
	rep, err := p.Wait(ctx)
	return rep, errors.Join(derr, err)
}

// dataplane opens the real dataplane of a gateway: its charon's VICI
// socket and its namespace's XFRM tables.
func dataplane(n *topo.Node, sock string, lg *slog.Logger, rc ipsec.ReestablishConfig) (*ipsec.Dataplane, func(), error) {
	x, err := xfrm.Open(xfrm.Options{Netns: "/run/netns/" + n.NS, Logger: lg})
	if err != nil {
		return nil, nil, err
	}
	v := vici.New(vici.Config{Socket: sock, Logger: lg})
	dp, err := ipsec.New(ipsec.Config{VICI: v, XFRM: x, Logger: lg, Reestablish: rc})
	if err != nil {
		x.Close()
		v.Close()
		return nil, nil, err
	}
	return dp, func() { x.Close(); v.Close() }, nil
}

func clientIKEIDs(ctx context.Context, c *vici.Client) (map[uint32]bool, error) {
	ikes, err := c.ListSAs(ctx, vici.ListFilter{})
	if err != nil {
		return nil, fmt.Errorf("listing the client's SAs: %w", err)
	}
	ids := map[uint32]bool{}
	for _, ike := range ikes {
		if ike.State == "ESTABLISHED" {
			ids[ike.UniqueID] = true
		}
	}
	return ids, nil
}

func sortedIDs(m map[uint32]bool) []uint32 {
	out := make([]uint32, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// xfrmStat reads /proc/net/xfrm_stat of node.
func xfrmStat(n *topo.Node) (map[string]int, error) {
	var b []byte
	err := n.Do(func() error {
		var err error
		b, err = os.ReadFile("/proc/thread-self/net/xfrm_stat")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading xfrm_stat of %s: %w", n.Name, err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			v, err := strconv.Atoi(f[1])
			if err == nil {
				out[f[0]] = v
			}
		}
	}
	return out, nil
}

// garp announces ip at dev's MAC with a gratuitous ARP request and reply
// on the segment, sent from n's namespace.
func garp(n *topo.Node, dev string, ip netip.Addr) error {
	return n.Do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		defer unix.Close(fd)
		bcast := [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6, Addr: bcast}
		a := ip.As4()
		for _, op := range []byte{1, 2} {
			f := make([]byte, 0, 42)
			f = append(f, bcast[:6]...)
			f = append(f, ifi.HardwareAddr...)
			f = append(f, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op)
			f = append(f, ifi.HardwareAddr...)
			f = append(f, a[:]...)
			if op == 1 {
				f = append(f, 0, 0, 0, 0, 0, 0)
			} else {
				f = append(f, bcast[:6]...)
			}
			f = append(f, a[:]...)
			if err := unix.Sendto(fd, f, 0, to); err != nil {
				return fmt.Errorf("sending gratuitous ARP for %s on %s: %w", ip, dev, err)
			}
		}
		return nil
	})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// replicated waits until the follower holds want SAs with their replay
// state and prepares their install as a taking-over agent does.
func replicated(ctx context.Context, follower *raftstore.Store, sealer *raftstore.Sealer, cfg agent.Config, want int) (agent.PreparedInstall, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		changed := follower.FSM().Changed()
		var sas, replays int
		follower.FSM().View(func(st *raftstore.State) { sas, replays = len(st.SAs), len(st.Replay) })
		if sas >= want && replays >= want {
			p := agent.PrepareInstall(follower.FSM(), sealer, cfg, time.Now())
			if len(p.Errs) > 0 {
				return p, fmt.Errorf("opening the replicated SAs: %w", errors.Join(p.Errs...))
			}
			return p, nil
		}
		select {
		case <-ctx.Done():
			return agent.PreparedInstall{}, fmt.Errorf("gw2's node holds %d of %d SAs (%d replay states): %w", sas, want, replays, ctx.Err())
		case <-changed:
		}
	}
}

// loopbackUp brings up the guest's own loopback, where the Raft nodes
// talk (the guest's init leaves it down).
func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding the guest's loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing the guest's loopback up: %w", err)
	}
	return nil
}
