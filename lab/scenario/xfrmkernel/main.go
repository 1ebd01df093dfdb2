// Command xfrmkernel runs package ipsec/xfrm against a real kernel inside
// the UML lab guest (the host kernels have no ESP): it installs states the
// way strongSwan does (legacy and ESN replay, AEAD and cipher+integrity,
// NAT-T, marks, interface IDs) and checks that the kernel gives back
// exactly what was written, that installs are idempotent and never move an
// outbound sequence number back, that policies round-trip, that replay
// events arrive, and how fast states install and dump. Each check is one
// entry of the JSON result; ipsec/xfrm's TestPrivilegedKernel asserts
// them.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"reflect"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/ipsec/xfrm"
	"github.com/handoffvpn/handoff/lab/guest"
)

// Check is one assertion made against the kernel.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Result is the scenario's JSON result.
type Result struct {
	Checks          []Check `json:"checks"`
	HZ              uint32  `json:"hz"`
	InstallPerSec   float64 `json:"install_per_sec"`
	DumpPerSec      float64 `json:"dump_per_sec"`
	Installed       int     `json:"installed"`
	DumpedDuringAdd int     `json:"dumped_during_adds"`
}

func main() {
	fs := flag.NewFlagSet("xfrmkernel", flag.ExitOnError)
	bulk := fs.Int("bulk", 2000, "states to install for the rate figures")
	guest.Main(fs, func(ctx context.Context, env *guest.Env) (any, error) {
		return run(ctx, *bulk)
	})
}

var lifeInf = sa.Lifetime{SoftBytes: ^uint64(0), HardBytes: ^uint64(0), SoftPackets: ^uint64(0), HardPackets: ^uint64(0), SoftAddSeconds: 3000, HardAddSeconds: 3600}

func states() map[string]*xfrm.State {
	vip, client, nat := netip.MustParseAddr("203.0.113.100"), netip.MustParseAddr("203.0.113.2"), netip.MustParseAddr("198.51.100.7")
	return map[string]*xfrm.State{
		"gcm outbound legacy": {State: sa.State{Src: vip, Dst: client, Proto: sa.ProtoESP, SPI: 0xc0000001, Mode: sa.ModeTunnel, Reqid: 1, Flags: 32,
			AEAD: &sa.Algo{Name: "rfc4106(gcm(aes))", Key: bytes.Repeat([]byte{1}, 20), ICVBits: 128}, Lifetime: lifeInf},
			Replay: xfrm.Replay{OSeq: 0x25e + 100_000, Bitmap: []uint32{0}}},
		"gcm inbound legacy": {State: sa.State{Src: client, Dst: vip, Proto: sa.ProtoESP, SPI: 0xc0000002, Mode: sa.ModeTunnel, Reqid: 1, Flags: 32, ReplayWindow: 32,
			AEAD: &sa.Algo{Name: "rfc4106(gcm(aes))", Key: bytes.Repeat([]byte{2}, 20), ICVBits: 128}, Lifetime: lifeInf},
			Replay: xfrm.Replay{Seq: 0x260, Bitmap: []uint32{0xfffffffe}}},
		"esn inbound window 128": {State: sa.State{Src: client, Dst: vip, Proto: sa.ProtoESP, SPI: 0xc0000003, Mode: sa.ModeTunnel, Reqid: 2, Flags: 32 | 128, ReplayWindow: 128, ESN: true,
			AEAD: &sa.Algo{Name: "rfc4106(gcm(aes))", Key: bytes.Repeat([]byte{3}, 36), ICVBits: 128}, Lifetime: lifeInf},
			Replay: xfrm.Replay{Seq: 1<<32 + 77, Bitmap: []uint32{0xffffffff, 0xffff, 0, 0x80000000}}},
		"esn outbound past 2^32": {State: sa.State{Src: vip, Dst: client, Proto: sa.ProtoESP, SPI: 0xc0000004, Mode: sa.ModeTunnel, Reqid: 2, Flags: 32 | 128, ReplayWindow: 128, ESN: true,
			AEAD: &sa.Algo{Name: "rfc4106(gcm(aes))", Key: bytes.Repeat([]byte{4}, 36), ICVBits: 128}, Lifetime: lifeInf},
			Replay: xfrm.Replay{OSeq: 1<<32 + 5, Bitmap: []uint32{0, 0, 0, 0}}},
		"window 64 without esn": {State: sa.State{Src: client, Dst: vip, Proto: sa.ProtoESP, SPI: 0xc0000005, Mode: sa.ModeTunnel, Reqid: 3, Flags: 32, ReplayWindow: 64,
			AEAD: &sa.Algo{Name: "rfc4106(gcm(aes))", Key: bytes.Repeat([]byte{5}, 20), ICVBits: 128}, Lifetime: lifeInf},
			Replay: xfrm.Replay{Seq: 1000, Bitmap: []uint32{0xffffffff, 1}}},
		"cbc+hmac natt mark ifid": {State: sa.State{Src: nat, Dst: vip, Proto: sa.ProtoESP, SPI: 0xc0000006, Mode: sa.ModeTunnel, Reqid: 4, Flags: 32, ExtraFlags: 1, ReplayWindow: 32,
			Crypt:    &sa.Algo{Name: "cbc(aes)", Key: bytes.Repeat([]byte{6}, 16)},
			Auth:     &sa.Algo{Name: "hmac(sha256)", Key: bytes.Repeat([]byte{7}, 32), TruncBits: 128},
			Encap:    &sa.Encap{Type: sa.EncapESPInUDP, SrcPort: 61234, DstPort: 4500},
			Mark:     &sa.Mark{Value: 0x2a, Mask: 0xff},
			IfID:     9,
			Lifetime: lifeInf},
			Replay: xfrm.Replay{Seq: 3, Bitmap: []uint32{7}}},
		"transport selector": {State: sa.State{Src: vip, Dst: client, Proto: sa.ProtoESP, SPI: 0xc0000007, Mode: sa.ModeTransport, Reqid: 5, ReplayWindow: 32,
			AEAD:     &sa.Algo{Name: "rfc4106(gcm(aes))", Key: bytes.Repeat([]byte{8}, 20), ICVBits: 128},
			Lifetime: lifeInf,
			Selector: sa.Selector{Src: netip.MustParsePrefix("203.0.113.100/32"), Dst: netip.MustParsePrefix("203.0.113.2/32"), Proto: 17, DstPort: 4789}},
			Replay: xfrm.Replay{Bitmap: []uint32{0}}},
	}
}

type checker struct{ res *Result }

func (c *checker) check(name string, err error) {
	ck := Check{Name: name, OK: err == nil}
	if err != nil {
		ck.Detail = err.Error()
	}
	c.res.Checks = append(c.res.Checks, ck)
}

func run(ctx context.Context, bulk int) (*Result, error) {
	res := &Result{}
	c := &checker{res}
	h, err := xfrm.Open(xfrm.Options{})
	if err != nil {
		return nil, err
	}
	defer h.Close()

	addTime := time.Now().Add(-100 * time.Second).Truncate(time.Second)
	for name, s := range states() {
		s.AddTime = addTime
		c.check("install "+name, func() error {
			r, err := h.Install(ctx, s)
			if err != nil {
				return err
			}
			if r != xfrm.Added {
				return fmt.Errorf("result %v, want added", r)
			}
			got, err := h.Get(ctx, s.Key())
			if err != nil {
				return err
			}
			return same(got, s)
		}())
	}
	// Every state comes back from a dump just as it was written.
	c.check("dump round trip", func() error {
		all, err := h.States(ctx)
		if err != nil {
			return err
		}
		byKey := map[xfrm.Key]*xfrm.State{}
		for _, s := range all {
			byKey[s.Key()] = s
		}
		for name, s := range states() {
			s.AddTime = addTime
			got, ok := byKey[s.Key()]
			if !ok {
				return fmt.Errorf("%s missing from the dump", name)
			}
			if err := same(got, s); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		return nil
	}())

	out := states()["gcm outbound legacy"]
	c.check("reinstall unchanged", expectResult(ctx, h, out, xfrm.Unchanged, out.Replay.OSeq))
	lower := states()["gcm outbound legacy"]
	lower.Replay.OSeq = 10
	c.check("lower oseq keeps the kernel's", expectResult(ctx, h, lower, xfrm.Unchanged, out.Replay.OSeq))

	// Replay events: NEWAE (our update) is reported to AEVENTS listeners.
	evCtx, evCancel := context.WithTimeout(ctx, 10*time.Second)
	events := make(chan xfrm.ReplayEvent, 16)
	var wg sync.WaitGroup
	wg.Add(1)
	var watchErr error
	go func() { defer wg.Done(); watchErr = h.WatchReplay(evCtx, events) }()
	time.Sleep(200 * time.Millisecond) // let the subscription open
	higher := states()["gcm outbound legacy"]
	higher.Replay.OSeq = 500_000
	c.check("higher oseq moves forward", expectResult(ctx, h, higher, xfrm.Updated, 500_000))
	c.check("replay event after update", func() error {
		for {
			select {
			case ev := <-events:
				if ev.Key == higher.Key() && ev.Replay.OSeq == 500_000 {
					return nil
				}
			case <-evCtx.Done():
				return fmt.Errorf("no replay event for %s (watch: %v)", higher.Key(), watchErr)
			}
		}
	}())
	evCancel()
	wg.Wait()

	other := states()["gcm outbound legacy"]
	other.AEAD.Key = bytes.Repeat([]byte{0x99}, 20)
	c.check("different SA replaced", expectResult(ctx, h, other, xfrm.Replaced, other.Replay.OSeq))

	c.check("esn replay counters via GETAE", func() error {
		s := states()["esn inbound window 128"]
		r, err := h.ReplayCounters(ctx, &s.State)
		if err != nil {
			return err
		}
		if r.Seq != s.Replay.Seq || !reflect.DeepEqual(r.Bitmap, s.Replay.Bitmap) {
			return fmt.Errorf("GETAE replay %+v, want %+v", r, s.Replay)
		}
		return nil
	}())
	c.check("thresholds and HZ", func() error {
		s := states()["gcm inbound legacy"]
		return h.SetThresholds(ctx, &s.State, xfrm.Thresholds{Packets: 1024, Timer: time.Second})
	}())

	c.check("policies round trip", policies(ctx, h))
	c.check("batched install", batched(ctx, h, addTime))

	c.check("delete twice", func() error {
		k := states()["transport selector"].Key()
		if err := h.Delete(ctx, k); err != nil {
			return err
		}
		if err := h.Delete(ctx, k); err != nil {
			return err
		}
		if _, err := h.Get(ctx, k); !errors.Is(err, xfrm.ErrNotFound) {
			return fmt.Errorf("get after delete: %v", err)
		}
		return nil
	}())

	// Rates, and dumps racing with adds (NLM_F_DUMP_INTR retried).
	tmpl := states()["gcm inbound legacy"]
	start := time.Now()
	for i := 0; i < bulk; i++ {
		s := *tmpl
		s.SPI = 0xd0000000 + uint32(i)
		if _, err := h.Install(ctx, &s); err != nil {
			return nil, fmt.Errorf("bulk install %d: %w", i, err)
		}
	}
	res.Installed = bulk
	res.InstallPerSec = float64(bulk) / time.Since(start).Seconds()
	start = time.Now()
	all, err := h.States(ctx)
	if err != nil {
		return nil, err
	}
	res.DumpPerSec = float64(len(all)) / time.Since(start).Seconds()
	c.check("dump while adding", func() error {
		h2, err := xfrm.Open(xfrm.Options{})
		if err != nil {
			return err
		}
		defer h2.Close()
		done := make(chan error, 1)
		go func() {
			for i := 0; i < 500; i++ {
				s := *tmpl
				s.SPI = 0xe0000000 + uint32(i)
				if _, err := h2.Install(ctx, &s); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		for i := 0; i < 5; i++ {
			got, err := h.States(ctx)
			if err != nil {
				return err
			}
			if len(got) < len(all) {
				return fmt.Errorf("dump of %d states while adding, had %d before", len(got), len(all))
			}
			res.DumpedDuringAdd = len(got)
		}
		return <-done
	}())
	res.HZ = h.HZ()
	return res, nil
}

func expectResult(ctx context.Context, h *xfrm.Handle, s *xfrm.State, want xfrm.Result, oseq uint64) error {
	r, err := h.Install(ctx, s)
	if err != nil {
		return err
	}
	if r != want {
		return fmt.Errorf("result %v, want %v", r, want)
	}
	got, err := h.Get(ctx, s.Key())
	if err != nil {
		return err
	}
	if got.Replay.OSeq != oseq {
		return fmt.Errorf("kernel oseq %d, want %d", got.Replay.OSeq, oseq)
	}
	if !xfrm.SameSA(&got.State, &s.State) {
		return fmt.Errorf("kernel holds a different SA")
	}
	return nil
}

// same compares what the kernel returned with what was written.
// batched installs every kind of state, under new SPIs and more than one
// batch's worth, through InstallStates: each must read back as written;
// a state the kernel refuses fails alone; installing the set again (every
// state EEXIST, counters behind the kernel's) changes nothing; policies go
// in through InstallPolicies.
func batched(ctx context.Context, h *xfrm.Handle, addTime time.Time) error {
	var want []*xfrm.State
	for i := 0; i < 10; i++ { // 70 states: past the first batch of 64
		for _, s := range states() {
			s.SPI = 0xb0000000 + uint32(len(want))
			s.AddTime = addTime
			want = append(want, s)
		}
	}
	bad := *states()["gcm inbound legacy"]
	bad.SPI = 0xbfffffff
	bad.AEAD = &sa.Algo{Name: "rfc4106(nope(aes))", Key: bytes.Repeat([]byte{9}, 20), ICVBits: 128}
	mid := len(want) / 2
	batch := append(append(append([]*xfrm.State{}, want[:mid]...), &bad), want[mid:]...)
	errs := h.InstallStates(ctx, batch)
	for i, err := range errs {
		if (batch[i] == &bad) != (err != nil) {
			return fmt.Errorf("state %d of %d (SPI %#x): error %v", i, len(batch), batch[i].SPI, err)
		}
	}
	for _, s := range want {
		got, err := h.Get(ctx, s.Key())
		if err != nil {
			return err
		}
		if err := same(got, s); err != nil {
			return fmt.Errorf("SPI %#x: %w", s.SPI, err)
		}
	}
	// Again, with every outbound sequence number lower than the kernel's.
	var again []*xfrm.State
	for _, s := range want {
		c := *s
		c.Replay.OSeq /= 2
		again = append(again, &c)
	}
	for i, err := range h.InstallStates(ctx, again) {
		if err != nil {
			return fmt.Errorf("second install of SPI %#x: %w", again[i].SPI, err)
		}
	}
	for _, s := range want {
		got, err := h.Get(ctx, s.Key())
		if err != nil {
			return err
		}
		if got.Replay.OSeq != s.Replay.OSeq {
			return fmt.Errorf("SPI %#x: oseq %d after a lower re-install, want %d kept", s.SPI, got.Replay.OSeq, s.Replay.OSeq)
		}
	}
	pol := sa.Policy{Dir: sa.DirOut, Selector: sa.Selector{Src: netip.MustParsePrefix("198.18.2.0/24"), Dst: netip.MustParsePrefix("198.51.100.20/32")},
		Templates: []sa.Template{{Src: netip.MustParseAddr("203.0.113.100"), Dst: netip.MustParseAddr("203.0.113.2"), Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: 7}}}
	fwd := pol
	fwd.Dir = sa.DirFwd
	fwd.Selector = sa.Selector{Src: pol.Selector.Dst, Dst: pol.Selector.Src}
	for i, err := range h.InstallPolicies(ctx, []*sa.Policy{&fwd, &pol, &pol}) {
		if err != nil {
			return fmt.Errorf("batched policy %d: %w", i, err)
		}
	}
	ps, err := h.Policies(ctx)
	if err != nil {
		return err
	}
	found := 0
	for _, p := range ps {
		if reflect.DeepEqual(p.Policy, pol) || reflect.DeepEqual(p.Policy, fwd) {
			found++
		}
	}
	if found != 2 {
		return fmt.Errorf("%d of the 2 batched policies read back", found)
	}
	for _, s := range want {
		if err := h.Delete(ctx, s.Key()); err != nil {
			return err
		}
	}
	return errors.Join(h.DeletePolicy(ctx, &pol), h.DeletePolicy(ctx, &fwd))
}

func same(got, want *xfrm.State) error {
	if len(got.Unsupported) > 0 {
		return fmt.Errorf("unsupported attributes %v", got.Unsupported)
	}
	if !reflect.DeepEqual(got.State, want.State) {
		return fmt.Errorf("state differs:\n got %+v\nwant %+v", fmtState(&got.State), fmtState(&want.State))
	}
	if got.Replay.OSeq != want.Replay.OSeq || got.Replay.Seq != want.Replay.Seq || !reflect.DeepEqual(got.Replay.Bitmap, want.Replay.Bitmap) {
		return fmt.Errorf("replay %+v, want %+v", got.Replay, want.Replay)
	}
	if !want.AddTime.IsZero() && !got.AddTime.Equal(want.AddTime) {
		return fmt.Errorf("add time %v, want %v", got.AddTime, want.AddTime)
	}
	return nil
}

func fmtState(s *sa.State) string {
	c := *s
	for _, a := range []**sa.Algo{&c.AEAD, &c.Crypt, &c.Auth} {
		if *a != nil {
			cp := **a
			cp.Key = nil
			*a = &cp
		}
	}
	return fmt.Sprintf("%+v enc=%+v mark=%+v", c, c.Encap, c.Mark)
}

func policies(ctx context.Context, h *xfrm.Handle) error {
	vip, client := netip.MustParseAddr("203.0.113.100"), netip.MustParseAddr("203.0.113.2")
	local, remote := netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("198.51.100.10/32")
	want := []sa.Policy{
		{Dir: sa.DirOut, Selector: sa.Selector{Src: local, Dst: remote}, Priority: 371327,
			Templates: []sa.Template{{Src: vip, Dst: client, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, SPI: 0xc0000001, Reqid: 1}}},
		{Dir: sa.DirIn, Selector: sa.Selector{Src: remote, Dst: local}, Priority: 371327, Mark: &sa.Mark{Value: 3, Mask: 0xffffffff}, IfID: 9,
			Templates: []sa.Template{{Src: client, Dst: vip, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: 1}}},
		{Dir: sa.DirFwd, Selector: sa.Selector{Src: remote, Dst: local, Proto: 6, DstPort: 443}, Priority: 371327,
			Templates: []sa.Template{{Src: client, Dst: vip, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: 1}}},
	}
	for i := range want {
		if err := h.InstallPolicy(ctx, &want[i]); err != nil {
			return err
		}
		// UPDPOLICY: installing again is not an error.
		if err := h.InstallPolicy(ctx, &want[i]); err != nil {
			return fmt.Errorf("second install: %w", err)
		}
	}
	got, err := h.Policies(ctx)
	if err != nil {
		return err
	}
	for i := range want {
		found := false
		for _, p := range got {
			if reflect.DeepEqual(p.Policy, want[i]) && len(p.Unsupported) == 0 {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("policy %d (%s) not read back; kernel has %d policies: %+v", i, want[i].Dir, len(got), got)
		}
	}
	for i := range want {
		for j := 0; j < 2; j++ {
			if err := h.DeletePolicy(ctx, &want[i]); err != nil {
				return fmt.Errorf("delete %d: %w", j, err)
			}
		}
	}
	return nil
}
