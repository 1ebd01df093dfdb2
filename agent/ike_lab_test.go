package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/agent/ikecarry"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/ipsec/egress"
	"github.com/handoffvpn/handoff/ipsec/hasync"
	"github.com/handoffvpn/handoff/lab/hostlab"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/raftstore"
)

// addressMover stands in for the linux provider's address move (which
// assumes one node per host) in a cluster whose agents share one process:
// a claim also moves the gateway address into the claimant's namespace.
type addressMover struct {
	providers.Provider
	site *hostlab.HASite
	gw   int
}

func (m addressMover) Claim(ctx context.Context, term uint64, rs []providers.Resource) error {
	if err := m.Provider.Claim(ctx, term, rs); err != nil {
		return err
	}
	return m.site.MoveGatewayAddress(m.gw)
}

// The agents carry a real client's IKE_SA through a takeover the cluster
// decides on its own: three nodes (two gateways with charon and the ha
// plugin, a witness) on real Raft; the active gateway's agent and charon
// die; the standby's agent takes over, activating the IKE_SA its charon
// holds passive before the address moves; the client's DPDs are answered,
// its CHILD_SA rekey completes against the new active, its IKE_SA keeps its
// SPIs and it never authenticates again; traffic flows through the rekeyed
// CHILD_SA; and the new active's agent writes the chains from then on.
func TestPrivilegedAgentsCarryAClientsIKESA(t *testing.T) {
	lab := hostlab.New(t)
	site := lab.NewHASite()
	conns := map[string]*hasync.Conn{}
	for i, id := range []string{"gw1", "gw2"} {
		if err := site.Gateways[i].Do(func() error {
			c, err := hasync.Listen(netip.MustParseAddrPort("127.0.0.2:4510"), netip.MustParseAddrPort("127.0.0.1:4510"), 0)
			conns[id] = c
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conns[id].Close() })
	}
	fences := map[string]*egress.Fence{}
	for i, id := range []string{"gw1", "gw2"} {
		var ns netns.NsHandle
		if err := site.Gateways[i].Do(func() error {
			var err error
			ns, err = netns.Get()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Close() })
		fences[id] = egress.New(int(ns))
	}
	gws := map[string]*hostlab.Charon{}
	for i, id := range []string{"gw1", "gw2"} {
		gws[id] = lab.StartCharon(site.Gateways[i], id, hostlab.CharonConfig{Swanctl: hostlab.GatewaySwanctl(), Settings: hostlab.HASettings})
	}
	cl := lab.StartCharon(site.Client, "client", hostlab.CharonConfig{Swanctl: hostlab.ClientSwanctl("2s")})
	dump := func() string {
		return fmt.Sprintf("client:\n%s\ngw1:\n%s\ngw2:\n%s", cl.LogTail(20), gws["gw1"].LogTail(20), gws["gw2"].LogTail(20))
	}

	e := start(t, cluster.Options{
		Nodes: specs("gw1", "gw2", "w3"),
		IKEChannel: func(node string) ikecarry.Channel {
			if c, ok := conns[node]; ok {
				return c
			}
			return nil
		},
		Egress: func(node string) agent.EgressFence {
			if f, ok := fences[node]; ok {
				return f
			}
			return nil
		},
		WrapProvider: func(node string, p providers.Provider) providers.Provider {
			gw := slices.Index([]string{"gw1", "gw2"}, node)
			if gw < 0 {
				return p
			}
			return addressMover{Provider: p, site: site, gw: gw}
		},
	})
	_, act := e.activeOn("gw1")
	if err := cl.Initiate(e.ctx, "client"); err != nil {
		t.Fatalf("initiating: %v\n%s", err, dump())
	}

	wait := func(what string, cond func() (bool, string)) {
		t.Helper()
		var detail string
		for deadline := time.Now().Add(20 * time.Second); ; {
			var ok bool
			if ok, detail = cond(); ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("waited 20s for %s: %s\n%s", what, detail, dump())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	list := func(c *hostlab.Charon) []hostlab.IKESA {
		t.Helper()
		sas, err := c.ListSAs(e.ctx)
		if err != nil {
			t.Fatalf("%v\n%s", err, dump())
		}
		return sas
	}
	holds := func(step string, gw *hostlab.Charon, want string) []hostlab.IKESA {
		t.Helper()
		var c []hostlab.IKESA
		wait(step, func() (bool, string) {
			c = list(cl)
			return hostlab.HoldsPeerSAs(c, list(gw), want)
		})
		return c
	}
	before := holds("the standby to hold the client's SAs passive", gws["gw2"], "PASSIVE/INSTALLED")
	// The standby sends no ESP; the active does (its tunnel works).
	for id, want := range map[string]bool{"gw1": false, "gw2": true} {
		if up, err := fences[id].Blocked(); err != nil || up != want {
			t.Fatalf("%s's egress fence up: %v (%v), want %v", id, up, err, want)
		}
	}

	if err := gws["gw1"].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Kill("gw1"); err != nil {
		t.Fatal(err)
	}
	next, act2 := e.waitActive(act.Term, "gw1")
	if next.Spec.ID != "gw2" {
		t.Fatalf("%s took over, want gw2", next.Spec.ID)
	}
	holds("the new active to take the client's SAs over", gws["gw2"], "ESTABLISHED/INSTALLED")
	if up, err := fences["gw2"].Blocked(); err != nil || up {
		t.Fatalf("the new active's egress fence is still up (%v)", err)
	}

	answered := func() int {
		b, _ := os.ReadFile(gws["gw2"].LogPath())
		return strings.Count(string(b), "generating INFORMATIONAL response")
	}
	from := answered()
	wait("the new active to answer two DPDs", func() (bool, string) {
		return answered()-from >= 2, fmt.Sprintf("%d answered", answered()-from)
	})
	if out, err := cl.Swanctl(e.ctx, "--rekey", "--child", "client"); err != nil {
		t.Fatalf("rekeying the CHILD_SA against the new active: %v\n%s\n%s", err, out, dump())
	}
	wait("the CHILD_SA rekey against the new active", func() (bool, string) {
		c := list(cl)
		return len(c) == 1 && c[0].SPIs == before[0].SPIs && len(c[0].Children) == 1 && c[0].Children[0] != before[0].Children[0], fmt.Sprint(c)
	})
	holds("the new active to hold the rekeyed CHILD_SA", gws["gw2"], "ESTABLISHED/INSTALLED")
	if b, _ := os.ReadFile(cl.LogPath()); strings.Count(string(b), "generating IKE_AUTH request") != 1 {
		t.Fatalf("the client authenticated again\n%s", dump())
	}
	if out, err := site.Client.Exec(e.ctx, "ping", "-c", "3", "-W", "2", "-I", hostlab.ClientInner.String(), hostlab.GatewayInner.String()); err != nil {
		t.Fatalf("ping through the tunnel after the takeover: %v\n%s\n%s", err, out, dump())
	}
	// The chains are the new active's now: the rekey was written at its
	// term.
	wait("the new active's chains in the log", func() (bool, string) {
		var terms []uint64
		next.Store.FSM().View(func(st *raftstore.State) {
			for _, c := range st.IKEChains {
				terms = append(terms, c.Term)
			}
		})
		return len(terms) == 1 && terms[0] >= act2.Term, fmt.Sprintf("chain terms %v, takeover term %d", terms, act2.Term)
	})
}
