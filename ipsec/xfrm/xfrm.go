package xfrm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// dumpAttempts bounds the retries of a dump interrupted by concurrent
// changes (a rekey storm can interrupt several in a row).
const dumpAttempts = 5

// liveSlack is how far an outbound sequence number is raised beyond the
// kernel's current one when a live state is bumped: the kernel keeps
// sending between our read and our write, and the write must never land
// below a number it already used. 65536 packets cover a few milliseconds at
// line rate and cost nothing in a 2^32 (or 2^64) space.
const liveSlack = 1 << 16

// Options configure Open.
type Options struct {
	// Netns is the path of a network namespace to work in (e.g.
	// /run/netns/gw1); empty means the caller's.
	Netns string
	// Logger receives warnings (slog.Default if nil).
	Logger *slog.Logger
}

// Handle reads and writes XFRM state. It is safe for concurrent use.
type Handle struct {
	k   kernel
	log *slog.Logger

	// mu guards the following fields.
	mu     sync.Mutex
	closed bool
	hz     uint32 // jiffies per second, calibrated on first use
}

// Open opens a handle on the kernel's XFRM state.
func Open(o Options) (*Handle, error) {
	ns := netns.None()
	if o.Netns != "" {
		h, err := netns.GetFromPath(o.Netns)
		if err != nil {
			return nil, fmt.Errorf("opening network namespace %s: %w", o.Netns, err)
		}
		ns = h
	}
	// nlKernel keeps the namespace handle: the event subscriber opens its
	// socket there later.
	k, err := openNetlink(ns)
	if err != nil {
		if ns.IsOpen() {
			ns.Close()
		}
		return nil, err
	}
	return newHandle(k, o.Logger), nil
}

func newHandle(k kernel, log *slog.Logger) *Handle {
	if log == nil {
		log = slog.Default()
	}
	return &Handle{k: k, log: log}
}

// Close closes the netlink socket. It is safe to call more than once.
func (h *Handle) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	err := h.k.close()
	if nk, ok := h.k.(*nlKernel); ok && nk.ns.IsOpen() {
		nk.ns.Close()
	}
	return err
}

func (h *Handle) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return ErrClosed
	}
	return nil
}

// States returns every XFRM state, retrying dumps that concurrent changes
// interrupted.
func (h *Handle) States(ctx context.Context) ([]*State, error) {
	var states []*State
	err := h.dump(ctx, "states", func() error {
		var err error
		states, err = h.k.dumpStates()
		return err
	})
	return states, err
}

// Policies returns every XFRM policy except per-socket ones, retrying
// interrupted dumps.
func (h *Handle) Policies(ctx context.Context) ([]*Policy, error) {
	var pols []*Policy
	err := h.dump(ctx, "policies", func() error {
		var err error
		pols, err = h.k.dumpPolicies()
		return err
	})
	return pols, err
}

func (h *Handle) dump(ctx context.Context, what string, do func() error) error {
	for attempt := 1; ; attempt++ {
		if err := h.check(ctx); err != nil {
			return fmt.Errorf("listing XFRM %s: %w", what, err)
		}
		err := do()
		if err == nil {
			return nil
		}
		if !errors.Is(err, errInterrupted) {
			return fmt.Errorf("listing XFRM %s: %w", what, err)
		}
		if attempt == dumpAttempts {
			return fmt.Errorf("listing XFRM %s: %w after %d attempts", what, ErrDumpInterrupted, attempt)
		}
		h.log.Debug("xfrm: dump interrupted, retrying", "what", what, "attempt", attempt)
	}
}

// Get returns the state with key k, or ErrNotFound.
func (h *Handle) Get(ctx context.Context, k Key) (*State, error) {
	if err := h.check(ctx); err != nil {
		return nil, fmt.Errorf("reading XFRM state %s: %w", k, err)
	}
	s, err := h.k.getState(k)
	if err != nil {
		return nil, fmt.Errorf("reading XFRM state %s: %w", k, kernelErr(err))
	}
	return s, nil
}

func kernelErr(err error) error {
	if isNotFound(err) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// Result says what Install did.
type Result int

const (
	// Added: the state was new.
	Added Result = iota + 1
	// Unchanged: the same SA was there with counters at least as far.
	Unchanged
	// Updated: the same SA was there; its replay counters were moved
	// forward.
	Updated
	// Replaced: a different SA sat under the same key; it was deleted
	// and the new one added.
	Replaced
)

func (r Result) String() string {
	switch r {
	case Added:
		return "added"
	case Unchanged:
		return "unchanged"
	case Updated:
		return "updated"
	case Replaced:
		return "replaced"
	}
	return fmt.Sprintf("result(%d)", int(r))
}

// Install adds s idempotently. When the kernel already holds a state under
// the same key (EEXIST, found the way the kernel finds it: destination,
// SPI, protocol, mark), Install reads it back: if it is the same SA, its
// replay counters are only ever moved forward (the outbound sequence
// number never goes back, so none is reused); if it is a different SA it
// is deleted and s added.
func (h *Handle) Install(ctx context.Context, s *State) (Result, error) {
	k := s.Key()
	for attempt := 0; attempt < 3; attempt++ {
		if err := h.check(ctx); err != nil {
			return 0, fmt.Errorf("installing XFRM state %s: %w", k, err)
		}
		err := h.k.addState(s, false)
		if err == nil {
			return Added, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return 0, fmt.Errorf("installing XFRM state %s: %w", k, err)
		}
		cur, err := h.k.getState(k)
		if isNotFound(err) {
			continue // deleted between our add and our read: add again
		}
		if err != nil {
			return 0, fmt.Errorf("installing XFRM state %s: reading the existing state: %w", k, err)
		}
		if !SameSA(&cur.State, &s.State) {
			h.log.Info("xfrm: replacing a different state under the same key", "key", k.String())
			if err := h.k.delState(k); err != nil && !isNotFound(err) {
				return 0, fmt.Errorf("installing XFRM state %s: deleting the different state: %w", k, err)
			}
			if err := h.k.addState(s, false); err != nil {
				if errors.Is(err, unix.EEXIST) {
					continue // someone re-added it meanwhile: look again
				}
				return 0, fmt.Errorf("installing XFRM state %s: adding after delete: %w", k, err)
			}
			return Replaced, nil
		}
		merged, changed := MergeReplay(cur.Replay, s.Replay)
		if !changed {
			return Unchanged, nil
		}
		if err := h.k.newAE(k, &s.State, &merged, nil, 0); err != nil {
			if isNotFound(err) {
				continue
			}
			return 0, fmt.Errorf("installing XFRM state %s: moving replay counters forward: %w", k, err)
		}
		return Updated, nil
	}
	return 0, fmt.Errorf("installing XFRM state %s: the kernel state kept changing under us", k)
}

// MergeReplay combines the kernel's current replay state with a wanted
// one without ever moving backwards: the outbound sequence number is
// raised to the wanted one (and beyond the current one by liveSlack, since
// a live state keeps sending while we write), never lowered; the inbound
// window moves only to a higher sequence number.
func MergeReplay(cur, want Replay) (Replay, bool) {
	out := Replay{OSeq: cur.OSeq, Seq: cur.Seq, Bitmap: slices.Clone(cur.Bitmap)}
	changed := false
	if want.OSeq > cur.OSeq {
		out.OSeq = want.OSeq
		if cur.OSeq > 0 && out.OSeq < cur.OSeq+liveSlack {
			out.OSeq = cur.OSeq + liveSlack
		}
		changed = true
	}
	if want.Seq > cur.Seq {
		out.Seq = want.Seq
		out.Bitmap = slices.Clone(want.Bitmap)
		changed = true
	}
	return out, changed
}

// SameSA reports whether two states are the same SA: same identity,
// algorithms and keys, encapsulation, mode, reqid, marks and selector.
// Replay and lifetime counters are ignored; an authentication truncation
// of 0 (the algorithm's default) matches whatever the kernel chose.
func SameSA(a, b *sa.State) bool {
	if a.Src != b.Src || a.Dst != b.Dst || a.Proto != b.Proto || a.SPI != b.SPI || a.Mode != b.Mode ||
		a.Reqid != b.Reqid || a.ExtraFlags != b.ExtraFlags || a.ESN != b.ESN || a.IfID != b.IfID ||
		a.Selector != b.Selector {
		return false
	}
	// The window sets the size of the replay bitmap.
	if a.ReplayWindow != b.ReplayWindow {
		return false
	}
	if a.Flags&^flagESN != b.Flags&^flagESN {
		return false
	}
	return sameAlgo(a.AEAD, b.AEAD, true) && sameAlgo(a.Crypt, b.Crypt, false) && sameAuth(a.Auth, b.Auth) &&
		sameEncap(a.Encap, b.Encap) && sameMark(a.Mark, b.Mark)
}

const flagESN = 128

func sameAlgo(a, b *sa.Algo, icv bool) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Name == b.Name && bytes.Equal(a.Key, b.Key) && (!icv || a.ICVBits == b.ICVBits)
}

func sameAuth(a, b *sa.Algo) bool {
	if !sameAlgo(a, b, false) {
		return false
	}
	if a == nil {
		return true
	}
	return a.TruncBits == b.TruncBits || a.TruncBits == 0 || b.TruncBits == 0
}

func sameEncap(a, b *sa.Encap) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func sameMark(a, b *sa.Mark) bool {
	if a == nil || b == nil {
		return (a == nil || *a == sa.Mark{}) && (b == nil || *b == sa.Mark{})
	}
	return *a == *b
}

// Delete deletes the state with key k. A state that is not there is not
// an error: deleting is idempotent.
func (h *Handle) Delete(ctx context.Context, k Key) error {
	if err := h.check(ctx); err != nil {
		return fmt.Errorf("deleting XFRM state %s: %w", k, err)
	}
	if err := h.k.delState(k); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting XFRM state %s: %w", k, err)
	}
	return nil
}

// InstallPolicy adds or updates a policy (XFRM_MSG_UPDPOLICY: no EEXIST).
func (h *Handle) InstallPolicy(ctx context.Context, p *sa.Policy) error {
	if err := h.check(ctx); err != nil {
		return fmt.Errorf("installing XFRM policy %s: %w", policyString(p), err)
	}
	if err := h.k.updPolicy(p); err != nil {
		return fmt.Errorf("installing XFRM policy %s: %w", policyString(p), err)
	}
	return nil
}

// DeletePolicy deletes a policy; one that is not there is not an error.
func (h *Handle) DeletePolicy(ctx context.Context, p *sa.Policy) error {
	if err := h.check(ctx); err != nil {
		return fmt.Errorf("deleting XFRM policy %s: %w", policyString(p), err)
	}
	if err := h.k.delPolicy(p); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting XFRM policy %s: %w", policyString(p), err)
	}
	return nil
}

func policyString(p *sa.Policy) string {
	return fmt.Sprintf("%s %s -> %s", p.Dir, p.Selector.Src, p.Selector.Dst)
}

// SetThresholds asks the kernel to report the state's replay counters as
// an async event after th.Packets sequence numbers or th.Timer.
func (h *Handle) SetThresholds(ctx context.Context, s *sa.State, th Thresholds) error {
	k := KeyOf(s)
	if err := h.check(ctx); err != nil {
		return fmt.Errorf("setting replay event thresholds of %s: %w", k, err)
	}
	hz, err := h.jiffies(s)
	if err != nil {
		return fmt.Errorf("setting replay event thresholds of %s: %w", k, err)
	}
	if err := h.k.newAE(k, s, nil, &th, hz); err != nil {
		return fmt.Errorf("setting replay event thresholds of %s: %w", k, kernelErr(err))
	}
	return nil
}

// calibrationJiffies is the timer threshold set to learn the kernel's HZ:
// it is read back in tenths of a second, 10000/HZ.
const calibrationJiffies = 1000

// jiffies learns the kernel's timer frequency. The kernel takes the event
// timer threshold in jiffies but reports it in tenths of a second, so
// setting a known number of jiffies on a state and reading it back tells
// HZ (100 in UML, 250 or 1000 on most distributions).
func (h *Handle) jiffies(s *sa.State) (uint32, error) {
	h.mu.Lock()
	hz := h.hz
	h.mu.Unlock()
	if hz != 0 {
		return hz, nil
	}
	k := KeyOf(s)
	if err := h.k.newAE(k, s, nil, &Thresholds{Timer: calibrationJiffies * time.Second}, 1); err != nil {
		return 0, fmt.Errorf("calibrating the kernel timer: %w", kernelErr(err))
	}
	_, tenths, err := h.k.getAE(k, s)
	if err != nil {
		return 0, fmt.Errorf("calibrating the kernel timer: %w", kernelErr(err))
	}
	if tenths == 0 {
		return 0, fmt.Errorf("calibrating the kernel timer: it reported no event timer")
	}
	hz = calibrationJiffies * 10 / tenths // exact for HZ 100, 250, 300 and 1000
	h.mu.Lock()
	h.hz = hz
	h.mu.Unlock()
	h.log.Debug("xfrm: calibrated kernel timer", "hz", hz)
	return hz, nil
}

// HZ returns the kernel timer frequency learned by SetThresholds (0 before
// the first call).
func (h *Handle) HZ() uint32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hz
}

// ReplayCounters returns a state's replay counters through XFRM_MSG_GETAE,
// cheaper than reading the whole state.
func (h *Handle) ReplayCounters(ctx context.Context, s *sa.State) (Replay, error) {
	k := KeyOf(s)
	if err := h.check(ctx); err != nil {
		return Replay{}, fmt.Errorf("reading replay counters of %s: %w", k, err)
	}
	ev, _, err := h.k.getAE(k, s)
	if err != nil {
		return Replay{}, fmt.Errorf("reading replay counters of %s: %w", k, kernelErr(err))
	}
	return ev.Replay, nil
}

// WatchReplay sends the kernel's async replay events (XFRM_MSG_NEWAE on the
// AEVENTS group) to out until ctx ends. The kernel only emits them while
// someone listens, per state after the thresholds set with SetThresholds.
// A receive error (e.g. ENOBUFS after an overrun: events were lost) is
// returned; the caller resynchronizes by reading the states.
func (h *Handle) WatchReplay(ctx context.Context, out chan<- ReplayEvent) error {
	if err := h.check(ctx); err != nil {
		return fmt.Errorf("watching replay events: %w", err)
	}
	src, err := h.k.subscribeAE()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = src.close() })
	defer func() {
		if stop() {
			_ = src.close()
		}
	}()
	for {
		evs, err := src.next()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for _, ev := range evs {
			select {
			case out <- ev:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err != nil {
			return fmt.Errorf("watching replay events: %w", err)
		}
	}
}
