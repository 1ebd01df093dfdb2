package ipsec

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/ipsec/vici/vicitest"
	"github.com/handoffvpn/handoff/ipsec/xfrm"
)

// The real dataplane satisfies the agent's interfaces.
var (
	_ agent.Dataplane     = (*Dataplane)(nil)
	_ agent.Reestablisher = (*Dataplane)(nil)
)

// fakeXFRM stands in for the kernel's XFRM tables (*xfrm.Handle) in the
// dataplane's unit tests: states keyed like the kernel keys them, with
// Install's upsert semantics taken from package xfrm itself.
type fakeXFRM struct {
	mu       sync.Mutex
	states   map[xfrm.Key]*xfrm.State
	policies []*xfrm.Policy
	log      []string
	failDel  map[xfrm.Key]error
}

func newFakeXFRM() *fakeXFRM {
	return &fakeXFRM{states: map[xfrm.Key]*xfrm.State{}, failDel: map[xfrm.Key]error{}}
}

func cloneState(s *xfrm.State) *xfrm.State {
	c := *s
	c.Replay.Bitmap = slices.Clone(s.Replay.Bitmap)
	return &c
}

func (f *fakeXFRM) States(ctx context.Context) ([]*xfrm.State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*xfrm.State
	for _, s := range f.states {
		out = append(out, cloneState(s))
	}
	return out, nil
}

func (f *fakeXFRM) Policies(ctx context.Context) ([]*xfrm.Policy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*xfrm.Policy
	for _, p := range f.policies {
		c := *p
		out = append(out, &c)
	}
	return out, nil
}

func (f *fakeXFRM) Get(ctx context.Context, k xfrm.Key) (*xfrm.State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.states[k]
	if !ok {
		return nil, xfrm.ErrNotFound
	}
	return cloneState(s), nil
}

func (f *fakeXFRM) Install(ctx context.Context, s *xfrm.State) (xfrm.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := s.Key()
	cur, ok := f.states[k]
	if !ok {
		f.states[k] = cloneState(s)
		f.log = append(f.log, fmt.Sprintf("add %s oseq %d seq %d", k, s.Replay.OSeq, s.Replay.Seq))
		return xfrm.Added, nil
	}
	if !xfrm.SameSA(&cur.State, &s.State) {
		f.states[k] = cloneState(s)
		f.log = append(f.log, fmt.Sprintf("replace %s", k))
		return xfrm.Replaced, nil
	}
	merged, changed := xfrm.MergeReplay(cur.Replay, s.Replay)
	if !changed {
		return xfrm.Unchanged, nil
	}
	cur.Replay = merged
	f.log = append(f.log, fmt.Sprintf("update %s oseq %d seq %d", k, merged.OSeq, merged.Seq))
	return xfrm.Updated, nil
}

func (f *fakeXFRM) Delete(ctx context.Context, k xfrm.Key) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failDel[k]; err != nil {
		return err
	}
	if _, ok := f.states[k]; ok {
		f.log = append(f.log, fmt.Sprintf("delete %s", k))
	}
	delete(f.states, k)
	return nil
}

func (f *fakeXFRM) InstallPolicy(ctx context.Context, p *sa.Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := policyID(p)
	for i, q := range f.policies {
		if policyID(&q.Policy) == id {
			f.policies[i] = &xfrm.Policy{Policy: *p}
			return nil
		}
	}
	f.policies = append(f.policies, &xfrm.Policy{Policy: *p})
	f.log = append(f.log, fmt.Sprintf("policy %s %s->%s", p.Dir, p.Selector.Src, p.Selector.Dst))
	return nil
}

// InstallStates and InstallPolicies stand in for the batched kernel
// calls by doing each item as the single calls do.
func (f *fakeXFRM) InstallStates(ctx context.Context, states []*xfrm.State) []error {
	errs := make([]error, len(states))
	for i, s := range states {
		_, errs[i] = f.Install(ctx, s)
	}
	return errs
}

func (f *fakeXFRM) InstallPolicies(ctx context.Context, policies []*sa.Policy) []error {
	errs := make([]error, len(policies))
	for i, p := range policies {
		errs[i] = f.InstallPolicy(ctx, p)
	}
	return errs
}

func (f *fakeXFRM) DeletePolicy(ctx context.Context, p *sa.Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := policyID(p)
	f.policies = slices.DeleteFunc(f.policies, func(q *xfrm.Policy) bool { return policyID(&q.Policy) == id })
	f.log = append(f.log, fmt.Sprintf("delete policy %s %s->%s", p.Dir, p.Selector.Src, p.Selector.Dst))
	return nil
}

func (f *fakeXFRM) has(k xfrm.Key) (*xfrm.State, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.states[k]
	if ok {
		return cloneState(s), true
	}
	return nil, false
}

var (
	vip    = netip.MustParseAddr("203.0.113.100")
	client = netip.MustParseAddr("203.0.113.2")
)

// addChild puts the kernel side of one gateway CHILD_SA into the fake:
// both GCM states and the out/in/fwd policies strongSwan installs.
func (f *fakeXFRM) addChild(peer netip.Addr, spiIn, spiOut, reqid uint32, remoteTS string, oseq, seq uint64) {
	lt := sa.Lifetime{SoftBytes: ^uint64(0), HardBytes: ^uint64(0), SoftPackets: ^uint64(0), HardPackets: ^uint64(0), SoftAddSeconds: 3000, HardAddSeconds: 3600}
	in := &xfrm.State{State: sa.State{Src: peer, Dst: vip, Proto: sa.ProtoESP, SPI: spiIn, Mode: sa.ModeTunnel, Reqid: reqid, Flags: 32, ReplayWindow: 32,
		AEAD: &sa.Algo{Name: "rfc4106(gcm(aes))", Key: bytes.Repeat([]byte{byte(spiIn)}, 20), ICVBits: 128}, Lifetime: lt},
		Replay: xfrm.Replay{Seq: seq, Bitmap: []uint32{0xffffffff}}}
	out := &xfrm.State{State: sa.State{Src: vip, Dst: peer, Proto: sa.ProtoESP, SPI: spiOut, Mode: sa.ModeTunnel, Reqid: reqid, Flags: 32,
		AEAD: &sa.Algo{Name: "rfc4106(gcm(aes))", Key: bytes.Repeat([]byte{byte(spiOut)}, 20), ICVBits: 128}, Lifetime: lt},
		Replay: xfrm.Replay{OSeq: oseq, Bitmap: []uint32{0}}}
	local, remote := netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix(remoteTS)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states[in.Key()] = in
	f.states[out.Key()] = out
	f.policies = append(f.policies,
		&xfrm.Policy{Policy: sa.Policy{Dir: sa.DirOut, Selector: sa.Selector{Src: local, Dst: remote}, Priority: 371327,
			Templates: []sa.Template{{Src: vip, Dst: peer, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, SPI: spiOut, Reqid: reqid}}}},
		&xfrm.Policy{Policy: sa.Policy{Dir: sa.DirIn, Selector: sa.Selector{Src: remote, Dst: local}, Priority: 371327,
			Templates: []sa.Template{{Src: peer, Dst: vip, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: reqid}}}},
		&xfrm.Policy{Policy: sa.Policy{Dir: sa.DirFwd, Selector: sa.Selector{Src: remote, Dst: local}, Priority: 371327,
			Templates: []sa.Template{{Src: peer, Dst: vip, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: reqid}}}},
	)
}

func (f *fakeXFRM) removeOut(peer netip.Addr, spi uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.states, xfrm.Key{Dst: peer, SPI: spi, Proto: sa.ProtoESP})
}

// fakeCharon stands in for charon's VICI socket in the dataplane's unit
// tests: a vicitest server whose list-sas answers from a mutable list of
// IKE SAs, and which pushes SA events on demand.
type fakeCharon struct {
	t   *testing.T
	srv *vicitest.Server

	mu       sync.Mutex
	ikes     []*fakeIKE
	loaded   map[string]*vicitest.Msg
	initiate func(req *vicitest.Msg) *vicitest.Msg
}

type fakeIKE struct {
	name     string
	id       uint32
	remote   netip.AddrPort
	state    string
	children []*fakeChild
}

type fakeChild struct {
	name          string
	id            uint32
	state         string
	reqid         uint32
	spiIn, spiOut uint32
	remoteTS      string
}

func sockPath(t *testing.T) string {
	dir, err := os.MkdirTemp("", "dp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "charon.vici")
}

func newFakeCharon(t *testing.T) *fakeCharon {
	srv, err := vicitest.NewServer(sockPath(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	fc := &fakeCharon{t: t, srv: srv, loaded: map[string]*vicitest.Msg{}}
	srv.Handle("list-sas", func(req *vicitest.Msg) ([]*vicitest.Msg, *vicitest.Msg) {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		var evs []*vicitest.Msg
		for _, ike := range fc.ikes {
			if id := req.Get("ike-id"); id != "" && id != fmt.Sprint(ike.id) {
				continue
			}
			evs = append(evs, &vicitest.Msg{Items: []vicitest.Item{{Key: ike.name, Section: ike.msg(ike.children)}}})
		}
		return evs, nil
	})
	srv.Handle("load-conn", func(req *vicitest.Msg) ([]*vicitest.Msg, *vicitest.Msg) {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		for _, it := range req.Items {
			fc.loaded[it.Key] = it.Section
		}
		return nil, ok()
	})
	srv.Handle("initiate", func(req *vicitest.Msg) ([]*vicitest.Msg, *vicitest.Msg) {
		fc.mu.Lock()
		h := fc.initiate
		fc.mu.Unlock()
		if h == nil {
			return nil, ok()
		}
		return nil, h(req)
	})
	return fc
}

func ok() *vicitest.Msg {
	return &vicitest.Msg{Items: []vicitest.Item{{Key: "success", Value: "yes"}}}
}

func (ike *fakeIKE) msg(children []*fakeChild) *vicitest.Msg {
	kv := func(k, v string) vicitest.Item { return vicitest.Item{Key: k, Value: v} }
	state := ike.state
	if state == "" {
		state = "ESTABLISHED"
	}
	m := &vicitest.Msg{Items: []vicitest.Item{
		kv("uniqueid", fmt.Sprint(ike.id)), kv("version", "2"), kv("state", state),
		kv("local-host", vip.String()), kv("local-port", "500"), kv("local-id", "gw.example"),
		kv("remote-host", ike.remote.Addr().String()), kv("remote-port", fmt.Sprint(ike.remote.Port())), kv("remote-id", "client.example"),
		kv("initiator-spi", fmt.Sprintf("%016x", 0x1000+ike.id)), kv("responder-spi", fmt.Sprintf("%016x", 0x2000+ike.id)),
		kv("established", "12"),
	}}
	cs := &vicitest.Msg{}
	for _, c := range children {
		cs.Items = append(cs.Items, vicitest.Item{Key: fmt.Sprintf("%s-%d", c.name, c.id), Section: &vicitest.Msg{Items: []vicitest.Item{
			kv("name", c.name), kv("uniqueid", fmt.Sprint(c.id)), kv("reqid", fmt.Sprint(c.reqid)), kv("state", c.state),
			kv("mode", "TUNNEL"), kv("protocol", "ESP"), kv("spi-in", fmt.Sprintf("%08x", c.spiIn)), kv("spi-out", fmt.Sprintf("%08x", c.spiOut)),
			kv("install-time", "5"), kv("rekey-time", "3000"),
			{Key: "local-ts", IsList: true, List: []string{"198.18.1.0/24"}},
			{Key: "remote-ts", IsList: true, List: []string{c.remoteTS}},
		}}})
	}
	m.Items = append(m.Items, vicitest.Item{Key: "child-sas", Section: cs})
	return m
}

func (fc *fakeCharon) set(ikes ...*fakeIKE) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.ikes = ikes
}

// push sends an SA event about ike (with children as its child-sas).
func (fc *fakeCharon) push(kind vici.EventKind, up bool, ike *fakeIKE, children ...*fakeChild) {
	body := &vicitest.Msg{}
	if up {
		body.Items = append(body.Items, vicitest.Item{Key: "up", Value: "yes"})
	}
	body.Items = append(body.Items, vicitest.Item{Key: ike.name, Section: ike.msg(children)})
	if fc.srv.Push(string(kind), body) == 0 {
		fc.t.Errorf("nobody subscribed to %s", kind)
	}
}

// pushIKERekey sends an ike-rekey event from old to new.
func (fc *fakeCharon) pushIKERekey(old, new *fakeIKE) {
	body := &vicitest.Msg{Items: []vicitest.Item{{Key: new.name, Section: &vicitest.Msg{Items: []vicitest.Item{
		{Key: "old", Section: old.msg(nil)}, {Key: "new", Section: new.msg(nil)}}}}}}
	if fc.srv.Push(string(vici.IKERekey), body) == 0 {
		fc.t.Errorf("nobody subscribed to ike-rekey")
	}
}

func quietLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newTestDataplane(t *testing.T, fc *fakeCharon, x *fakeXFRM, mod func(*Config)) *Dataplane {
	cl := vici.New(vici.Config{Socket: fc.srv.Path(), Logger: quietLogger(t)})
	t.Cleanup(func() { cl.Close() })
	cfg := Config{VICI: cl, Logger: quietLogger(t)}
	if mod != nil {
		mod(&cfg)
	}
	return newDataplane(cfg, x)
}
