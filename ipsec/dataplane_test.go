package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/ipsec/vici/vicitest"
	"github.com/handoffvpn/handoff/ipsec/xfrm"
)

// TestExportExactlyCharonsSAs: the export holds the CHILD_SAs charon
// reports, each with its two kernel states and the policies that point at
// them; kernel states charon does not report, DELETED leftovers of a rekey
// and CHILD_SAs whose states are missing are left out.
func TestExportExactlyCharonsSAs(t *testing.T) {
	fc := newFakeCharon(t)
	x := newFakeXFRM()
	x.addChild(client, 0xc10270cc, 0xcbed4d52, 1, "198.51.100.10/32", 0x25e, 0x260)
	x.addChild(client, 0xc0ffee01, 0xc0ffee02, 1, "198.51.100.10/32", 7, 7)                             // rekeyed, DELETED in charon
	x.addChild(netip.MustParseAddr("203.0.113.3"), 0xc1000003, 0xc1000004, 2, "198.51.100.11/32", 0, 0) // not charon's
	x.addChild(netip.MustParseAddr("203.0.113.5"), 0xc1000005, 0xc1000006, 5, "198.51.100.12/32", 0, 0)
	x.removeOut(netip.MustParseAddr("203.0.113.5"), 0xc1000006)
	fc.set(
		&fakeIKE{name: "gw", id: 1, remote: netip.AddrPortFrom(client, 500), children: []*fakeChild{
			{name: "net", id: 1, state: "DELETED", reqid: 1, spiIn: 0xc0ffee01, spiOut: 0xc0ffee02, remoteTS: "198.51.100.10/32"},
			{name: "net", id: 2, state: "INSTALLED", reqid: 1, spiIn: 0xc10270cc, spiOut: 0xcbed4d52, remoteTS: "198.51.100.10/32"},
		}},
		&fakeIKE{name: "gw", id: 3, remote: netip.MustParseAddrPort("203.0.113.5:4500"), children: []*fakeChild{
			{name: "net", id: 4, state: "INSTALLED", reqid: 5, spiIn: 0xc1000005, spiOut: 0xc1000006, remoteTS: "198.51.100.12/32"},
		}},
	)
	d := newTestDataplane(t, fc, x, nil)
	sas, err := d.Export(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(sas) != 1 {
		t.Fatalf("exported %d SAs, want 1: %v", len(sas), sas)
	}
	c := sas[0]
	if c.ID != "203.0.113.100/c10270cc" || c.In.SPI != 0xc10270cc || c.Out.SPI != 0xcbed4d52 || c.Out.Dst != client {
		t.Errorf("exported %v", c)
	}
	if c.IKE.UniqueID != 1 || c.IKE.LocalID != "gw.example" || c.IKE.RemoteID != "client.example" || c.IKE.Remote != netip.AddrPortFrom(client, 500) || c.IKE.InitiatorSPI != 0x1001 {
		t.Errorf("IKE metadata %+v", c.IKE)
	}
	if c.Child.Name != "net" || c.Child.UniqueID != 2 || c.Child.RemoteTS[0] != "198.51.100.10/32" || c.Child.RekeyAt.IsZero() {
		t.Errorf("child metadata %+v", c.Child)
	}
	dirs := map[sa.Dir]int{}
	for _, p := range c.Policies {
		dirs[p.Dir]++
		if p.Templates[0].Reqid != 1 {
			t.Errorf("policy of another reqid: %+v", p)
		}
	}
	// reqid 1 is shared with the DELETED child: its policies are the same
	// selectors, listed twice in the fake kernel (once per addChild).
	if dirs[sa.DirOut] == 0 || dirs[sa.DirIn] == 0 || dirs[sa.DirFwd] == 0 {
		t.Errorf("policies by direction %v", dirs)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
	// Replay reads the counters of the exported SAs.
	rs, err := d.Replay(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].ID != c.ID || rs[0].OSeq != 0x25e || rs[0].Seq != 0x260 || rs[0].Bitmap[0] != 0xffffffff || rs[0].ReadAt.IsZero() {
		t.Errorf("replay %+v", rs)
	}
}

func recv(t *testing.T, ch <-chan sa.Change) sa.Change {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no change reported")
		return sa.Change{}
	}
}

func noChange(t *testing.T, ch <-chan sa.Change, d time.Duration) {
	t.Helper()
	select {
	case c := <-ch:
		t.Fatalf("unexpected change %+v", c)
	case <-time.After(d):
	}
}

// TestWatchFollowsCharon drives a CHILD_SA through its life: up, a rekey
// whose new outbound state comes late, an IKE rekey, down, and a charon
// restart.
func TestWatchFollowsCharon(t *testing.T) {
	fc := newFakeCharon(t)
	x := newFakeXFRM()
	d := newTestDataplane(t, fc, x, func(c *Config) {
		c.Debounce = time.Millisecond
		c.IncompleteRetry = 20 * time.Millisecond
		c.Reconcile = time.Hour
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make(chan sa.Change, 64)
	done := make(chan error, 1)
	go func() { done <- d.Watch(ctx, out) }()
	for fc.srv.Subscribers("child-updown") == 0 {
		time.Sleep(time.Millisecond)
	}

	// Up.
	ike := &fakeIKE{name: "gw", id: 1, remote: netip.AddrPortFrom(client, 500)}
	a := &fakeChild{name: "net", id: 1, state: "INSTALLED", reqid: 1, spiIn: 0xc1000001, spiOut: 0xc2000001, remoteTS: "198.51.100.10/32"}
	ike.children = []*fakeChild{a}
	x.addChild(client, a.spiIn, a.spiOut, 1, a.remoteTS, 0, 0)
	fc.set(ike)
	fc.push(vici.ChildUpdown, true, ike, a)
	c := recv(t, out)
	if c.Op != sa.Upsert || c.ID != "203.0.113.100/c1000001" || c.SA.Out.SPI != 0xc2000001 {
		t.Fatalf("after child up: %+v", c)
	}

	// Rekey: the old child turns DELETED; the new one's outbound state is
	// installed only a little later, as charon does.
	b := &fakeChild{name: "net", id: 2, state: "INSTALLED", reqid: 1, spiIn: 0xc1000002, spiOut: 0xc2000002, remoteTS: "198.51.100.10/32"}
	x.addChild(client, b.spiIn, b.spiOut, 1, b.remoteTS, 0, 0)
	x.removeOut(client, b.spiOut)
	a.state = "DELETED"
	ike.children = []*fakeChild{a, b}
	fc.set(ike)
	fc.push(vici.ChildRekey, false, ike)
	c = recv(t, out)
	if c.Op != sa.Delete || c.ID != "203.0.113.100/c1000001" {
		t.Fatalf("after rekey: %+v", c)
	}
	noChange(t, out, 60*time.Millisecond)
	x.addChild(client, b.spiIn, b.spiOut, 1, b.remoteTS, 0, 0) // outbound arrives
	c = recv(t, out)
	if c.Op != sa.Upsert || c.ID != "203.0.113.100/c1000002" {
		t.Fatalf("after the outbound state arrived: %+v", c)
	}

	// IKE rekey: same CHILD_SA, new IKE SA: an upsert with the new IKE
	// metadata, no delete.
	ike2 := &fakeIKE{name: "gw", id: 2, remote: ike.remote, children: []*fakeChild{b}}
	fc.set(ike2)
	fc.pushIKERekey(&fakeIKE{name: "gw", id: 1, remote: ike.remote, state: "REKEYED"}, ike2)
	c = recv(t, out)
	if c.Op != sa.Upsert || c.ID != "203.0.113.100/c1000002" || c.SA.IKE.UniqueID != 2 {
		t.Fatalf("after IKE rekey: %+v", c)
	}
	noChange(t, out, 50*time.Millisecond)

	// Down.
	fc.set()
	fc.push(vici.IKEUpdown, false, ike2)
	c = recv(t, out)
	if c.Op != sa.Delete || c.ID != "203.0.113.100/c1000002" {
		t.Fatalf("after IKE down: %+v", c)
	}

	// charon restarts with a new CHILD_SA already up (events missed while
	// it was down): Watch reconnects and resyncs.
	cnew := &fakeChild{name: "net", id: 1, state: "INSTALLED", reqid: 1, spiIn: 0xc1000009, spiOut: 0xc2000009, remoteTS: "198.51.100.10/32"}
	x.addChild(client, cnew.spiIn, cnew.spiOut, 1, cnew.remoteTS, 0, 0)
	fc.set(&fakeIKE{name: "gw", id: 1, remote: ike.remote, children: []*fakeChild{cnew}})
	if err := fc.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	c = recv(t, out)
	if c.Op != sa.Upsert || c.ID != "203.0.113.100/c1000009" {
		t.Fatalf("after charon restart: %+v", c)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch returned %v", err)
	}
}

// TestWatchGivesUpWhenCharonStaysDown: Watch returns ErrUnavailable after
// ReconnectWait so the caller knows.
func TestWatchGivesUpWhenCharonStaysDown(t *testing.T) {
	fc := newFakeCharon(t)
	d := newTestDataplane(t, fc, newFakeXFRM(), func(c *Config) { c.ReconnectWait = 300 * time.Millisecond })
	fc.srv.Stop()
	start := time.Now()
	err := d.Watch(context.Background(), make(chan sa.Change, 1))
	if !errors.Is(err, vici.ErrUnavailable) {
		t.Fatalf("got %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
}

func exported(t *testing.T, fc *fakeCharon, x *fakeXFRM, peer netip.Addr, spiIn, spiOut, reqid uint32, ts string) *sa.ChildSA {
	t.Helper()
	x.addChild(peer, spiIn, spiOut, reqid, ts, 0, 0)
	fc.set(&fakeIKE{name: "gw", id: 1, remote: netip.AddrPortFrom(peer, 500), children: []*fakeChild{
		{name: "net", id: 1, state: "INSTALLED", reqid: reqid, spiIn: spiIn, spiOut: spiOut, remoteTS: ts}}})
	d := newTestDataplane(t, fc, x, nil)
	sas, err := d.Export(context.Background())
	if err != nil || len(sas) != 1 {
		t.Fatalf("export: %v %v", sas, err)
	}
	return sas[0]
}

// TestInstallOnTakeover installs a replicated SA on a node whose charon
// knows nothing of it, then fences.
func TestInstallOnTakeover(t *testing.T) {
	ctx := context.Background()
	// The SA as the old active exported it.
	c := exported(t, newFakeCharon(t), newFakeXFRM(), client, 0xc1000001, 0xc2000001, 1, "198.51.100.10/32")

	fc := newFakeCharon(t) // the new active's charon: no SAs
	x := newFakeXFRM()
	// charon's own unrelated CHILD_SA, visible only through its policy.
	other := netip.MustParseAddr("203.0.113.7")
	x.addChild(other, 0xc3000001, 0xc3000002, 7, "198.51.100.77/32", 5, 5)
	d := newTestDataplane(t, fc, x, nil)

	install := sa.Install{SA: c, OSeq: 0x25e + 100_000, Replay: sa.Replay{ID: c.ID, OSeq: 0x25e, Seq: 0x260, Bitmap: []uint32{0xfffffffe}}}
	if err := d.Install(ctx, []sa.Install{install}); err != nil {
		t.Fatal(err)
	}
	out, ok := x.has(xfrm.KeyOf(&c.Out))
	if !ok || out.Replay.OSeq != 0x25e+100_000 {
		t.Fatalf("outbound state %+v", out)
	}
	in, ok := x.has(xfrm.KeyOf(&c.In))
	if !ok || in.Replay.Seq != 0x260 || in.Replay.Bitmap[0] != 0xfffffffe || in.Replay.OSeq != 0 {
		t.Fatalf("inbound state %+v", in)
	}
	if !in.AddTime.Equal(c.Child.InstalledAt) {
		t.Errorf("add time %v, want the original %v", in.AddTime, c.Child.InstalledAt)
	}
	// Idempotent: a retried install with a lower number changes nothing.
	install.OSeq = 10
	if err := d.Install(ctx, []sa.Install{install}); err != nil {
		t.Fatal(err)
	}
	if out, _ := x.has(xfrm.KeyOf(&c.Out)); out.Replay.OSeq != 0x25e+100_000 {
		t.Fatalf("retried install moved oseq back to %d", out.Replay.OSeq)
	}
	// The installed SA is exported although charon does not know it: the
	// new active must keep replicating it.
	sas, err := d.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(sas) != 1 || sas[0] != c {
		t.Fatalf("export after install: %v", sas)
	}
	rs, err := d.Replay(ctx)
	if err != nil || len(rs) != 1 || rs[0].OSeq != 0x25e+100_000 {
		t.Fatalf("replay after install: %+v %v", rs, err)
	}

	// Fence: every outbound state goes, the installed one and charon's
	// own (found through its outbound policy); inbound states stay.
	if err := d.Fence(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := x.has(xfrm.KeyOf(&c.Out)); ok {
		t.Error("installed outbound state survived fencing")
	}
	if _, ok := x.has(xfrm.Key{Dst: other, SPI: 0xc3000002, Proto: sa.ProtoESP}); ok {
		t.Error("charon's outbound state survived fencing")
	}
	if _, ok := x.has(xfrm.KeyOf(&c.In)); !ok {
		t.Error("fencing removed an inbound state")
	}
	if err := d.Fence(ctx); err != nil {
		t.Fatalf("second fence: %v", err)
	}
}

func TestInstallErrors(t *testing.T) {
	c := exported(t, newFakeCharon(t), newFakeXFRM(), client, 0xc1000001, 0xc2000001, 1, "198.51.100.10/32")
	bad := *c
	bad.ID = "wrong"
	d := newTestDataplane(t, newFakeCharon(t), newFakeXFRM(), nil)
	err := d.Install(context.Background(), []sa.Install{
		{SA: c, OSeq: 1 << 32},
		{SA: &bad},
		{SA: nil},
	})
	if !errors.Is(err, ErrSeqExhausted) || !strings.Contains(err.Error(), "ID does not match") || !strings.Contains(err.Error(), "without an SA") {
		t.Fatalf("got %v", err)
	}
	esn := *c
	esn.Out.ESN, esn.Out.ReplayWindow = true, 128
	esn.In.ESN, esn.In.ReplayWindow = true, 128
	if err := d.Install(context.Background(), []sa.Install{{SA: &esn, OSeq: 1 << 40}}); err != nil {
		t.Fatalf("ESN SA past 2^32: %v", err)
	}
}

// TestStageThenTakeover: inbound states pre-staged on a standby are taken
// over by the install (counters moved forward), stale ones removed.
func TestStageThenTakeover(t *testing.T) {
	ctx := context.Background()
	c1 := exported(t, newFakeCharon(t), newFakeXFRM(), client, 0xc1000001, 0xc2000001, 1, "198.51.100.10/32")
	c2 := exported(t, newFakeCharon(t), newFakeXFRM(), netip.MustParseAddr("203.0.113.3"), 0xc1000003, 0xc2000003, 2, "198.51.100.11/32")
	x := newFakeXFRM()
	d := newTestDataplane(t, newFakeCharon(t), x, nil)
	if err := d.Stage(ctx, []*sa.ChildSA{c1, c2}); err != nil {
		t.Fatal(err)
	}
	if _, ok := x.has(xfrm.KeyOf(&c1.In)); !ok {
		t.Fatal("inbound state not staged")
	}
	if _, ok := x.has(xfrm.KeyOf(&c1.Out)); ok {
		t.Fatal("staging installed an outbound state")
	}
	// c2 went away on the active.
	if err := d.Stage(ctx, []*sa.ChildSA{c1}); err != nil {
		t.Fatal(err)
	}
	if _, ok := x.has(xfrm.KeyOf(&c2.In)); ok {
		t.Fatal("stale staged state kept")
	}
	if err := d.Install(ctx, []sa.Install{{SA: c1, OSeq: 500, Replay: sa.Replay{Seq: 42, Bitmap: []uint32{7}}}}); err != nil {
		t.Fatal(err)
	}
	in, _ := x.has(xfrm.KeyOf(&c1.In))
	if in.Replay.Seq != 42 {
		t.Fatalf("staged inbound state not brought forward: %+v", in.Replay)
	}
	if !strings.Contains(strings.Join(x.log, "\n"), "update 203.0.113.100 spi c1000001 proto 50 oseq 0 seq 42") {
		t.Errorf("kernel log:\n%s", strings.Join(x.log, "\n"))
	}
}

var gwTemplate = map[string]any{
	"version":   2,
	"proposals": []string{"aes128gcm16-prfsha256-ecp256"},
	"mobike":    false,
	"local":     map[string]any{"auth": "psk"},
	"remote":    map[string]any{"auth": "psk"},
	"children": map[string]any{"net": map[string]any{
		"esp_proposals": []string{"aes128gcm16"},
		"local_ts":      []string{"198.18.1.0/24"},
	}},
}

func TestPeerConnection(t *testing.T) {
	ike := sa.IKE{Name: "gw", LocalID: "gw.example", RemoteID: "client.example",
		Local: netip.MustParseAddrPort("203.0.113.100:4500"), Remote: netip.MustParseAddrPort("198.51.100.7:61234"), NATRemote: true}
	body, err := PeerConnection(gwTemplate, ike, []sa.Child{{Name: "net", LocalTS: []string{"198.18.1.0/24"}, RemoteTS: []string{"10.9.0.5/32"}}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := vici.MessageFromMap(body)
	if err != nil {
		t.Fatal(err)
	}
	got := m.String()
	for _, want := range []string{"remote_addrs = 198.51.100.7", "local_addrs = 203.0.113.100", "remote_port = 61234", "local_port = 4500",
		"keyingtries = 1", "id = gw.example", "id = client.example", "remote_ts = 10.9.0.5/32", "start_action = none", "esp_proposals = aes128gcm16"} {
		if !strings.Contains(got, want) {
			t.Errorf("connection lacks %q:\n%s", want, got)
		}
	}
	// The template itself is untouched.
	if _, ok := gwTemplate["remote_addrs"]; ok {
		t.Error("template modified")
	}
	if _, ok := gwTemplate["local"].(map[string]any)["id"]; ok {
		t.Error("template's auth section modified")
	}
	// Not behind NAT: no ports forced.
	ike.Remote = netip.MustParseAddrPort("203.0.113.2:500")
	body, _ = PeerConnection(gwTemplate, ike, []sa.Child{{Name: "other"}})
	if _, ok := body["remote_port"]; ok {
		t.Error("remote_port set for a peer on port 500")
	}
	if _, err := PeerConnection(map[string]any{"local": map[string]any{}}, ike, []sa.Child{{Name: "net"}}); err == nil {
		t.Error("template without remote auth accepted")
	}
	two := map[string]any{"local": map[string]any{}, "remote": map[string]any{}, "children": map[string]any{"a": map[string]any{}, "b": map[string]any{}}}
	if _, err := PeerConnection(two, ike, []sa.Child{{Name: "net"}}); err == nil || !strings.Contains(err.Error(), `no child "net"`) {
		t.Errorf("unknown child: %v", err)
	}
}

// TestReestablish: after a takeover the new active loads a connection per
// peer and initiates it; once up, the installed copies are retired.
func TestReestablish(t *testing.T) {
	ctx := context.Background()
	peer2 := netip.MustParseAddr("203.0.113.3")
	c1 := exported(t, newFakeCharon(t), newFakeXFRM(), client, 0xc1000001, 0xc2000001, 1, "198.51.100.10/32")
	c2 := exported(t, newFakeCharon(t), newFakeXFRM(), peer2, 0xc1000003, 0xc2000003, 2, "198.51.100.11/32")

	fc := newFakeCharon(t)
	x := newFakeXFRM()
	d := newTestDataplane(t, fc, x, func(c *Config) { c.Reestablish.Template = gwTemplate })
	if err := d.Install(ctx, []sa.Install{{SA: c1, OSeq: 1000}, {SA: c2, OSeq: 1000}}); err != nil {
		t.Fatal(err)
	}
	fc.mu.Lock()
	fc.initiate = func(req *vicitest.Msg) *vicitest.Msg {
		if req.Get("ike") == ConnName("handoff-peer-", c2.IKE) {
			return &vicitest.Msg{Items: []vicitest.Item{{Key: "success", Value: "no"}, {Key: "errmsg", Value: "establishing CHILD_SA 'net' failed"}}}
		}
		// charon's new CHILD_SA with the same selectors and reqid 1.
		x.addChild(client, 0xc1000011, 0xc2000011, 1, "198.51.100.10/32", 0, 0)
		return ok()
	}
	fc.mu.Unlock()

	err := d.Reestablish(ctx, []*sa.ChildSA{c1, c2})
	if err == nil || !strings.Contains(err.Error(), "peer 203.0.113.3:500") || !strings.Contains(err.Error(), "establishing CHILD_SA 'net' failed") {
		t.Fatalf("got %v, want the failed peer named", err)
	}
	fc.mu.Lock()
	conn := fc.loaded[ConnName("handoff-peer-", c1.IKE)]
	fc.mu.Unlock()
	if conn == nil || !strings.Contains(conn.Format(""), "203.0.113.2") {
		t.Fatalf("per-peer connection not loaded: %v", conn)
	}
	// Peer 1: old copies retired, charon's new states kept.
	if _, ok := x.has(xfrm.KeyOf(&c1.Out)); ok {
		t.Error("old outbound copy of a re-established peer kept")
	}
	if _, ok := x.has(xfrm.Key{Dst: client, SPI: 0xc2000011, Proto: sa.ProtoESP}); !ok {
		t.Error("charon's new state removed")
	}
	// Peer 2 failed: its installed SA stays and is still exported.
	if _, ok := x.has(xfrm.KeyOf(&c2.Out)); !ok {
		t.Error("installed SA of an unreachable peer removed")
	}
	sas, err := d.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, s := range sas {
		ids = append(ids, s.ID)
	}
	if fmt.Sprint(ids) != "[203.0.113.100/c1000003]" {
		t.Errorf("exported after reestablish: %v", ids)
	}
}

func TestReestablishWithoutTemplate(t *testing.T) {
	d := newTestDataplane(t, newFakeCharon(t), newFakeXFRM(), nil)
	if err := d.Reestablish(context.Background(), []*sa.ChildSA{{ID: "x"}}); err != nil {
		t.Fatal(err)
	}
}

// TestReestablishMakeBeforeBreak: without INITIAL_CONTACT the peer keeps
// sending on its old CHILD_SA for a while: the old outbound copy goes at
// once, the inbound copy only after RetireDelay, and neither is exported
// any more.
func TestReestablishMakeBeforeBreak(t *testing.T) {
	ctx := context.Background()
	c1 := exported(t, newFakeCharon(t), newFakeXFRM(), client, 0xc1000001, 0xc2000001, 1, "198.51.100.10/32")
	fc := newFakeCharon(t)
	x := newFakeXFRM()
	d := newTestDataplane(t, fc, x, func(c *Config) {
		c.Reestablish.Template = gwTemplate
		c.Reestablish.MakeBeforeBreak = true
		c.Reestablish.RetireDelay = 50 * time.Millisecond
	})
	if err := d.Install(ctx, []sa.Install{{SA: c1, OSeq: 1000}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Reestablish(ctx, []*sa.ChildSA{c1}); err != nil {
		t.Fatal(err)
	}
	fc.mu.Lock()
	conn := fc.loaded[ConnName("handoff-peer-", c1.IKE)]
	fc.mu.Unlock()
	if conn == nil || conn.Get("unique") != "never" {
		t.Fatalf("per-peer connection without unique=never: %v", conn)
	}
	if _, ok := x.has(xfrm.KeyOf(&c1.Out)); ok {
		t.Error("old outbound copy kept")
	}
	if _, ok := x.has(xfrm.KeyOf(&c1.In)); !ok {
		t.Fatal("old inbound copy removed before its delay")
	}
	if sas, err := d.Export(ctx); err != nil || len(sas) != 0 {
		t.Fatalf("retiring SA exported: %v %v", sas, err)
	}
	time.Sleep(60 * time.Millisecond)
	if _, err := d.Replay(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := x.has(xfrm.KeyOf(&c1.In)); ok {
		t.Error("old inbound copy kept past its delay")
	}
	for _, p := range x.policies {
		t.Errorf("policy without a state left behind: %+v", p.Policy)
	}
}

// TestReestablishRecorded replays gw2's VICI session recorded in the SA
// handoff lab (lab/scenario/sahandoff -record-vici): the per-peer
// connection must be the one charon accepted there, byte for byte.
func TestReestablishRecorded(t *testing.T) {
	b, err := os.ReadFile("testdata/reestablish.transcript")
	if err != nil {
		t.Fatal(err)
	}
	steps, err := vicitest.ParseTranscript(string(b))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := vicitest.NewServer(sockPath(t), steps)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cl := vici.New(vici.Config{Socket: srv.Path(), Logger: quietLogger(t)})
	defer cl.Close()
	// The lab profile's gateway connection (lab/swan GatewayConfig).
	tmpl := map[string]any{
		"version": 2, "proposals": []string{"aes128gcm16-prfsha256-ecp256"}, "encap": true, "mobike": false,
		"local": map[string]any{"auth": "psk"}, "remote": map[string]any{"auth": "psk"},
		"children": map[string]any{"lab": map[string]any{"mode": "tunnel", "esp_proposals": []string{"aes128gcm16"}, "dpd_action": "clear"}},
	}
	d := newDataplane(Config{VICI: cl, Logger: quietLogger(t), Reestablish: ReestablishConfig{Template: tmpl}}, newFakeXFRM())
	c := &sa.ChildSA{
		IKE: sa.IKE{Name: "lab", LocalID: "gateway.lab.test", RemoteID: "client.lab.test",
			Local: netip.MustParseAddrPort("203.0.113.100:4500"), Remote: netip.MustParseAddrPort("203.0.113.2:4500")},
		Child: sa.Child{Name: "lab", LocalTS: []string{"198.18.0.0/15"}, RemoteTS: []string{"198.51.100.10/32"}},
	}
	if err := d.Reestablish(context.Background(), []*sa.ChildSA{c}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestInstallOverCharonsCarriedStates: with IKE continuity the new active's
// charon installed the carried CHILD_SAs itself (its own reqid, counters
// at 0). Install puts the replicated SA in their place with the jumped
// counters, and FenceStrays then deletes the outbound state of a CHILD_SA
// charon holds but the log did not bring (created just before the
// takeover): it keeps the installed one and every inbound state.
func TestInstallOverCharonsCarriedStates(t *testing.T) {
	ctx := context.Background()
	c := exported(t, newFakeCharon(t), newFakeXFRM(), client, 0xc1000001, 0xc2000001, 1, "198.51.100.10/32")

	x := newFakeXFRM()
	x.addChild(client, 0xc1000001, 0xc2000001, 9, "198.51.100.10/32", 0, 0) // charon's copy of c
	stray := netip.MustParseAddr("203.0.113.7")
	x.addChild(stray, 0xc3000001, 0xc3000002, 10, "198.51.100.77/32", 0, 0)
	d := newTestDataplane(t, newFakeCharon(t), x, nil)

	if err := d.Install(ctx, []sa.Install{{SA: c, OSeq: 0x25e + 100_000, Replay: sa.Replay{ID: c.ID, OSeq: 0x25e, Seq: 0x260, Bitmap: []uint32{1}}}}); err != nil {
		t.Fatal(err)
	}
	if out, ok := x.has(xfrm.KeyOf(&c.Out)); !ok || out.Replay.OSeq != 0x25e+100_000 || out.Reqid != c.Out.Reqid {
		t.Fatalf("the carried SA's outbound state after install: %+v", out)
	}
	if err := d.FenceStrays(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := x.has(xfrm.Key{Dst: stray, SPI: 0xc3000002, Proto: sa.ProtoESP}); ok {
		t.Error("the stray outbound state, at sequence number 0, survived")
	}
	if _, ok := x.has(xfrm.KeyOf(&c.Out)); !ok {
		t.Error("FenceStrays deleted the installed outbound state")
	}
	for _, k := range []xfrm.Key{xfrm.KeyOf(&c.In), {Dst: vip, SPI: 0xc3000001, Proto: sa.ProtoESP}} {
		if _, ok := x.has(k); !ok {
			t.Errorf("FenceStrays deleted inbound state %v", k)
		}
	}
}

// TestExportLeavesOutARekeyedChildWithItsSuccessor: once a rekey's
// successor is INSTALLED, the REKEYED CHILD_SA it replaced (charon keeps it
// for stragglers) is not exported, so the feed deletes it from the log; a
// REKEYED CHILD_SA whose successor is not installed yet still is, and so
// is a CHILD_SA of another generation.
func TestExportLeavesOutARekeyedChildWithItsSuccessor(t *testing.T) {
	fc, x := newFakeCharon(t), newFakeXFRM()
	x.addChild(client, 0xc1000001, 0xc2000001, 1, "198.51.100.10/32", 0, 0)
	x.addChild(client, 0xc1000002, 0xc2000002, 1, "198.51.100.10/32", 0, 0)
	x.addChild(client, 0xc1000003, 0xc2000003, 2, "198.51.100.11/32", 0, 0)
	old := &fakeChild{name: "net", id: 1, state: "REKEYED", reqid: 1, spiIn: 0xc1000001, spiOut: 0xc2000001, remoteTS: "198.51.100.10/32"}
	other := &fakeChild{name: "net", id: 3, state: "REKEYED", reqid: 2, spiIn: 0xc1000003, spiOut: 0xc2000003, remoteTS: "198.51.100.11/32"}
	fc.set(&fakeIKE{name: "gw", id: 1, remote: netip.AddrPortFrom(client, 500), children: []*fakeChild{old, other}})
	d := newTestDataplane(t, fc, x, nil)
	spis := func() []uint32 {
		t.Helper()
		sas, err := d.Export(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var out []uint32
		for _, c := range sas {
			out = append(out, c.In.SPI)
		}
		slices.Sort(out)
		return out
	}
	if got := spis(); !slices.Equal(got, []uint32{0xc1000001, 0xc1000003}) {
		t.Fatalf("rekey in progress: exported %08x, want both REKEYED children (no successor yet)", got)
	}
	cur := &fakeChild{name: "net", id: 2, state: "INSTALLED", reqid: 1, spiIn: 0xc1000002, spiOut: 0xc2000002, remoteTS: "198.51.100.10/32"}
	fc.set(&fakeIKE{name: "gw", id: 1, remote: netip.AddrPortFrom(client, 500), children: []*fakeChild{old, cur, other}})
	if got := spis(); !slices.Equal(got, []uint32{0xc1000002, 0xc1000003}) {
		t.Fatalf("successor installed: exported %08x, want the successor and the other generation's child", got)
	}
}
