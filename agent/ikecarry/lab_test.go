package ikecarry

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/ipsec/hasync"
	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/lab/hostlab"
	"github.com/handoffvpn/handoff/raftstore"
)

// labPair is two gateways with charon and the ha plugin, each with its
// carrier on a real hasync.Conn (gw1's possibly wrapped), a client with a
// tunnel to gw1 (the active, activated), and the log the carriers share.
type labPair struct {
	site         *hostlab.HASite
	log          *fsmLog
	logs         *lockedLog
	logger       *slog.Logger
	c1, c2       *Carrier
	gw1, gw2, cl *hostlab.Charon
	runCtx       context.Context
}

func (p *labPair) dump() string {
	return fmt.Sprintf("client:\n%s\ngw1:\n%s\ngw2:\n%s", p.cl.LogTail(25), p.gw1.LogTail(20), p.gw2.LogTail(25))
}

// startLabPair builds it; wrap, if set, wraps gw1's channel. Everything
// stops at the test's end.
func startLabPair(t *testing.T, ctx context.Context, wrap func(Channel) Channel) *labPair {
	t.Helper()
	lab := hostlab.New(t)
	p := &labPair{site: lab.NewHASite(), logs: &lockedLog{}}
	p.logger = slog.New(slog.NewTextHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("carriers' logs:\n%s", p.logs.String())
		}
	})
	p.log = &fsmLog{fsm: raftstore.NewFSM(p.logger)}
	sealer := testSealer(t, 7)
	for _, id := range []string{"gw1", "gw2"} {
		if _, err := p.log.Apply(ctx, &raftstore.MemberCmd{ID: id, Address: id + ":7946", Role: raftstore.RoleGateway}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	runCtx, stop := context.WithCancel(ctx)
	p.runCtx = runCtx
	t.Cleanup(func() {
		stop()
		wg.Wait()
	})
	carrier := func(id string, ns *hostlab.Netns, wrap func(Channel) Channel) *Carrier {
		var conn *hasync.Conn
		if err := ns.Do(func() error {
			var err error
			conn, err = hasync.Listen(netip.MustParseAddrPort("127.0.0.2:4510"), netip.MustParseAddrPort("127.0.0.1:4510"), 0)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		var ch Channel = conn
		if wrap != nil {
			ch = wrap(conn)
		}
		c := New(Config{Node: id}, ch, p.log, p.log.fsm, sealer, p.logger.With("node", id))
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Run(runCtx)
		}()
		return c
	}
	p.c1, p.c2 = carrier("gw1", p.site.Gateways[0], wrap), carrier("gw2", p.site.Gateways[1], nil)
	p.gw1 = lab.StartCharon(p.site.Gateways[0], "gw1", hostlab.CharonConfig{Swanctl: hostlab.GatewaySwanctl(), Settings: hostlab.HASettings})
	p.gw2 = lab.StartCharon(p.site.Gateways[1], "gw2", hostlab.CharonConfig{Swanctl: hostlab.GatewaySwanctl(), Settings: hostlab.HASettings})
	p.cl = lab.StartCharon(p.site.Client, "client", hostlab.CharonConfig{Swanctl: hostlab.ClientSwanctl("2s")})
	if _, err := p.log.Apply(ctx, &raftstore.ClaimCmd{Node: "gw1", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.c1.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.cl.Initiate(ctx, "client"); err != nil {
		t.Fatalf("initiating: %v\n%s", err, p.dump())
	}
	return p
}

// takeOver kills gw1's charon, moves the address to gw2 and makes gw2
// claim and activate.
func (p *labPair) takeOver(t *testing.T, ctx context.Context) Carried {
	t.Helper()
	if err := p.gw1.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := p.site.MoveGatewayAddress(1); err != nil {
		t.Fatal(err)
	}
	if _, err := p.log.Apply(ctx, &raftstore.ClaimCmd{Node: "gw2", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	carried, err := p.c2.Activate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return carried
}

// A real client's IKE_SA survives the death of the gateway that made it:
// the active gateway's charon reports to its carrier, the chains go
// through the log (a real state machine), the standby's carrier feeds its
// own charon, which holds the IKE_SA and the CHILD_SA passive with the
// client's SPIs through a CHILD_SA rekey and an IKE_SA rekey. The active's
// charon is killed and its address moves; the standby activates; the
// client's DPD, a CHILD_SA rekey and an IKE_SA rekey complete against it,
// with the client's IKE_SA the same one (same SPIs), never re-initiated,
// and traffic flows through the rekeyed CHILD_SA. The new active's own
// reports become the log's chains; the old gateway's charon, restarted as
// a standby, is fed them and holds the client's SAs passive in turn.
func TestPrivilegedCarrierTakesOverARealClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := startLabPair(t, ctx, nil)
	c1, gw1, gw2, cl, site := p.c1, p.gw1, p.gw2, p.cl, p.site
	dump := p.dump

	// wait polls (bounded) until cond holds.
	wait := func(what string, cond func() (bool, string)) {
		t.Helper()
		var detail string
		for deadline := time.Now().Add(30 * time.Second); ; {
			var ok bool
			if ok, detail = cond(); ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("waited 30s for %s: %s\n%s", what, detail, dump())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	list := func(c *hostlab.Charon) []hostlab.IKESA {
		t.Helper()
		sas, err := c.ListSAs(ctx)
		if err != nil {
			t.Fatalf("%v\n%s", err, dump())
		}
		return sas
	}
	// holds waits until gw lists exactly the client's SAs, in state want
	// ("PASSIVE/INSTALLED" or "ESTABLISHED/INSTALLED").
	holds := func(step string, gw *hostlab.Charon, want string) []hostlab.IKESA {
		t.Helper()
		var c []hostlab.IKESA
		wait(step, func() (bool, string) {
			c = list(cl)
			return hostlab.HoldsPeerSAs(c, list(gw), want)
		})
		return c
	}

	up := holds("the standby to hold the client's SAs passive", gw2, "PASSIVE/INSTALLED")
	if out, err := cl.Swanctl(ctx, "--rekey", "--child", "client"); err != nil {
		t.Fatalf("rekeying the CHILD_SA: %v\n%s", err, out)
	}
	wait("the client's CHILD_SA rekey", func() (bool, string) {
		c := list(cl)
		return len(c) == 1 && len(c[0].Children) == 1 && c[0].Children[0] != up[0].Children[0], fmt.Sprint(c)
	})
	holds("the standby to follow the CHILD_SA rekey", gw2, "PASSIVE/INSTALLED")
	if out, err := cl.Swanctl(ctx, "--rekey", "--ike", "client"); err != nil {
		t.Fatalf("rekeying the IKE_SA: %v\n%s", err, out)
	}
	wait("the client's IKE_SA rekey", func() (bool, string) {
		c := list(cl)
		return len(c) == 1 && c[0].SPIs != up[0].SPIs && c[0].State == "ESTABLISHED", fmt.Sprint(c)
	})
	before := holds("the standby to follow the IKE_SA rekey", gw2, "PASSIVE/INSTALLED")

	// The takeover: gw1's charon dies, its address moves to gw2, gw2
	// claims and activates.
	carried := p.takeOver(t, ctx)
	if len(carried.IKEs) != 1 || len(carried.Children) != 1 {
		t.Fatalf("carried %v %v, want the client's IKE_SA and CHILD_SA", carried.IKEs, carried.Children)
	}
	holds("the new active to take the client's SAs over", gw2, "ESTABLISHED/INSTALLED")

	// DPD every 2 s from the client (an empty INFORMATIONAL when the
	// IKE_SA is idle): gw2 answers them.
	answered := func() int { return strings.Count(readFile(t, gw2.LogPath()), "generating INFORMATIONAL response") }
	from := answered()
	wait("the new active to answer two DPDs", func() (bool, string) {
		n := answered() - from
		return n >= 2, fmt.Sprintf("%d answered", n)
	})
	after := list(cl)
	if len(after) != 1 || after[0].SPIs != before[0].SPIs || after[0].State != "ESTABLISHED" {
		t.Fatalf("after the takeover and the client's DPDs the client lists %v, before %v\n%s", after, before, dump())
	}

	// The client's CHILD_SA rekey and IKE_SA rekey complete against gw2.
	if out, err := cl.Swanctl(ctx, "--rekey", "--child", "client"); err != nil {
		t.Fatalf("rekeying the CHILD_SA against the new active: %v\n%s\n%s", err, out, dump())
	}
	wait("the CHILD_SA rekey against the new active", func() (bool, string) {
		c := list(cl)
		return len(c) == 1 && c[0].SPIs == before[0].SPIs && len(c[0].Children) == 1 && c[0].Children[0] != before[0].Children[0], fmt.Sprint(c)
	})
	holds("the new active to hold the rekeyed CHILD_SA", gw2, "ESTABLISHED/INSTALLED")
	if out, err := cl.Swanctl(ctx, "--rekey", "--ike", "client"); err != nil {
		t.Fatalf("rekeying the IKE_SA against the new active: %v\n%s\n%s", err, out, dump())
	}
	wait("the IKE_SA rekey against the new active", func() (bool, string) {
		c := list(cl)
		return len(c) == 1 && c[0].SPIs != before[0].SPIs && c[0].State == "ESTABLISHED", fmt.Sprint(c)
	})
	final := holds("the new active to hold the rekeyed IKE_SA", gw2, "ESTABLISHED/INSTALLED")
	// One authentication: the client never set up a new IKE_SA (rekeys
	// run CREATE_CHILD_SA, not IKE_AUTH).
	if n := strings.Count(readFile(t, cl.LogPath()), "generating IKE_AUTH request"); n != 1 {
		t.Fatalf("the client authenticated %d times, want only the first\n%s", n, dump())
	}

	// Traffic through the CHILD_SA the client rekeyed with the new active.
	if out, err := site.Client.Exec(ctx, "ping", "-c", "3", "-W", "2", "-I", hostlab.ClientInner.String(), hostlab.GatewayInner.String()); err != nil {
		t.Fatalf("ping through the tunnel after the takeover: %v\n%s\n%s", err, out, dump())
	}

	// gw1's charon comes back as a standby: its carrier deactivates (as
	// the agent's fence does), charon's restart signal makes it feed the
	// whole log, now gw2's chains, and gw1 holds the client's SAs passive.
	_ = c1.Deactivate(ctx) // charon is dead: the segment message may bounce
	if err := gw1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	holds("the restarted old active to hold the client's SAs passive", gw1, "PASSIVE/INSTALLED")
	if got := list(gw1); got[0].SPIs != final[0].SPIs {
		t.Fatalf("the old active holds %v, the client %v", got, final)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// lockedLog is a log sink the carriers' goroutines share.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// losingChannel stands in for a report lost with a killed active: while
// lose is set, the IKE_MID_RESPONDER reports of the wrapped channel never
// reach the carrier.
type losingChannel struct {
	Channel
	lose atomic.Bool
	lost atomic.Int64
}

func (l *losingChannel) Receive(ctx context.Context, fn func(*hasync.Message), bad func([]byte, error)) error {
	return l.Channel.Receive(ctx, func(m *hasync.Message) {
		if l.lose.Load() && m.Type == hasync.IKEMIDResponder {
			l.lost.Add(1)
			return
		}
		fn(m)
	}, bad)
}

// The kill case the log cannot cover alone: the active answers the
// client's DPD, and dies before the report of its message ID is committed.
// The new active expects the old ID and ignores the client's next request
// (charon logs "received message ID X, expected Y, ignored"); the
// reconciler tells charon to expect X, and the client's retransmission is
// answered: the client keeps its IKE_SA. Without the repair the client
// would give up and restart.
func TestPrivilegedReconcilerRepairsALostMessageID(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var lossy *losingChannel
	p := startLabPair(t, ctx, func(ch Channel) Channel {
		lossy = &losingChannel{Channel: ch}
		return lossy
	})
	gw1, gw2, cl := p.gw1, p.gw2, p.cl
	dump := p.dump
	wait := func(what string, limit time.Duration, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(limit); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waited %v for %s\n%s", limit, what, dump())
			}
		}
	}
	listed := func(c *hostlab.Charon) []hostlab.IKESA {
		sas, err := c.ListSAs(ctx)
		if err != nil {
			t.Fatalf("%v\n%s", err, dump())
		}
		return sas
	}
	wait("the standby to hold the client's IKE_SA passive", 30*time.Second, func() bool {
		g := listed(gw2)
		return len(g) == 1 && g[0].State == "PASSIVE" && len(g[0].Children) == 1
	})
	before := listed(cl)

	// gw1 answers one more DPD, and its report is lost; then it dies.
	answered := func(c *hostlab.Charon) int {
		return strings.Count(readFile(t, c.LogPath()), "generating INFORMATIONAL response")
	}
	lossy.lose.Store(true)
	from := answered(gw1)
	wait("gw1 to answer a DPD whose report is lost", 20*time.Second, func() bool { return answered(gw1) > from && lossy.lost.Load() > 0 })
	p.takeOver(t, ctx)
	vc := vici.New(vici.Config{Socket: gw2.Socket(), Logger: p.logger})
	defer vc.Close()
	rctx, stopReconciler := context.WithCancel(p.runCtx)
	reconciled := make(chan error, 1)
	go func() { reconciled <- p.c2.Reconcile(rctx, vc, time.Minute) }()
	defer func() {
		stopReconciler()
		<-reconciled
	}()

	// The client's next DPD is one ahead of what gw2 expects: ignored,
	// repaired, and its retransmission answered.
	wait("gw2 to ignore the client's request", 20*time.Second, func() bool {
		return strings.Contains(readFile(t, gw2.LogPath()), "expected") && strings.Contains(readFile(t, gw2.LogPath()), "ignored")
	})
	from2 := answered(gw2)
	wait("gw2 to answer the client after the repair", 30*time.Second, func() bool { return answered(gw2) > from2 })
	if !strings.Contains(p.logs.String(), "repaired a carried IKE_SA's message ID") {
		t.Fatalf("the reconciler logged no repair\n%s", dump())
	}
	// Two more DPDs answered, the client's IKE_SA the one it had.
	from3 := answered(gw2)
	wait("two more DPDs answered", 20*time.Second, func() bool { return answered(gw2) >= from3+2 })
	after := listed(cl)
	if len(after) != 1 || after[0].SPIs != before[0].SPIs || after[0].State != "ESTABLISHED" {
		t.Fatalf("the client lists %v, before %v\n%s", after, before, dump())
	}
	if n := strings.Count(readFile(t, cl.LogPath()), "generating IKE_AUTH request"); n != 1 {
		t.Fatalf("the client authenticated %d times\n%s", n, dump())
	}
}
