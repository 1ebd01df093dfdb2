package vrrp

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/lab/topo"
)

func validConfig() Config {
	return Config{
		Name: "gw1", Interface: "out0", RouterID: 51, Priority: 200, Advert: 100 * time.Millisecond,
		UnicastSrc:   netip.MustParseAddr("203.0.113.11"),
		UnicastPeers: []netip.Addr{netip.MustParseAddr("203.0.113.12")},
		VIPs: []VIP{
			{Addr: netip.MustParsePrefix("203.0.113.100/24"), Dev: "out0"},
			{Addr: netip.MustParsePrefix("198.18.1.1/24"), Dev: "in0"},
		},
	}
}

func TestRender(t *testing.T) {
	out, err := validConfig().Render()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"vrrp_version 3", "advert_int 0.1", "priority 200", "virtual_router_id 51",
		"unicast_src_ip 203.0.113.11", "\t\t203.0.113.12\n", "203.0.113.100/24 dev out0", "198.18.1.1/24 dev in0", "state BACKUP"} {
		if !strings.Contains(string(out), l) {
			t.Errorf("missing %q in:\n%s", l, out)
		}
	}
	for name, mutate := range map[string]func(*Config){
		"no name":      func(c *Config) { c.Name = "" },
		"router id 0":  func(c *Config) { c.RouterID = 0 },
		"priority 255": func(c *Config) { c.Priority = 255 },
		"advert 5ms":   func(c *Config) { c.Advert = 5 * time.Millisecond },
		"no peers":     func(c *Config) { c.UnicastPeers = nil },
		"no VIPs":      func(c *Config) { c.VIPs = nil },
		"no source":    func(c *Config) { c.UnicastSrc = netip.Addr{} },
		"no interface": func(c *Config) { c.Interface = "" },
	} {
		c := validConfig()
		mutate(&c)
		if _, err := c.Render(); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
}

// TestPrivilegedFailoverOnHost runs two keepalived on the host's kernel in
// the lab topology: gw1 takes the VIPs, and when it is killed gw2 does.
func TestPrivilegedFailoverOnHost(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: -short runs no lab")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: keepalived in network namespaces needs root; CI runs this as root")
	}
	if _, err := os.Stat(DefaultKeepalived); err != nil {
		t.Fatalf("%s missing: run `make lab-deps`", DefaultKeepalived)
	}
	if err := topo.SweepStale("tv"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tp, err := topo.Build(ctx, topo.Spec{Prefix: topo.HostPrefix("tv"), Gateways: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	dir := t.TempDir()
	kas := make([]*Keepalived, 2)
	for i, gw := range tp.Gateways {
		c := validConfig()
		c.Name, c.Priority = gw.Name, 200-100*i
		c.Dir, c.RunDir = filepath.Join(dir, gw.Name), filepath.Join(dir, "run", gw.Name)
		c.UnicastSrc = gw.Outer.Addr()
		c.UnicastPeers = []netip.Addr{tp.Gateways[1-i].Outer.Addr()}
		k, err := Start(ctx, gw, c)
		if err != nil {
			t.Fatal(err)
		}
		defer k.Close()
		kas[i] = k
	}
	vip := netip.MustParseAddr(topo.VIPOuter)
	inner := netip.MustParseAddr(topo.VIPInner)
	holds := func(n *topo.Node, a netip.Addr) bool {
		ok, err := n.HasAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	gw1, gw2 := tp.Gateways[0], tp.Gateways[1]
	waitFor("gw1 to hold both VIPs", func() bool { return holds(gw1, vip) && holds(gw1, inner) })
	time.Sleep(500 * time.Millisecond) // a few adverts
	if holds(gw2, vip) {
		t.Fatal("both gateways hold the VIP")
	}
	if err := kas[0].Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor("gw2 to take both VIPs", func() bool { return holds(gw2, vip) && holds(gw2, inner) })
	if !holds(gw1, vip) {
		t.Error("a SIGKILLed keepalived removed its VIPs: the crash was not a crash")
	}
	if err := kas[1].Close(); err != nil {
		t.Fatal(err)
	}
	if holds(gw2, vip) {
		t.Error("a stopped keepalived kept its VIPs")
	}
	if err := kas[1].Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
