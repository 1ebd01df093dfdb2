package xfrm

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrNotFound: the kernel has no such state or policy (ENOENT/ESRCH).
	ErrNotFound = errors.New("xfrm object not found")
	// ErrDumpInterrupted: a dump kept being interrupted by concurrent
	// changes after every retry.
	ErrDumpInterrupted = errors.New("xfrm dump interrupted")
	// ErrMalformed: the kernel sent a message this package cannot read.
	ErrMalformed = errors.New("malformed xfrm message")
	// ErrClosed: the handle was closed.
	ErrClosed = errors.New("xfrm handle closed")
)

// Key is how the kernel finds a state by SPI: destination, SPI, protocol
// and the mark (value under its mask). Two states with the same key
// cannot coexist; adding the second fails with EEXIST.
type Key struct {
	Dst   netip.Addr
	SPI   uint32
	Proto uint8
	Mark  sa.Mark // zero when the state has no mark
}

// KeyOf returns the lookup key of a state.
func KeyOf(s *sa.State) Key {
	k := Key{Dst: s.Dst, SPI: s.SPI, Proto: s.Proto}
	if s.Mark != nil {
		k.Mark = sa.Mark{Value: s.Mark.Value & s.Mark.Mask, Mask: s.Mark.Mask}
	}
	return k
}

func (k Key) String() string {
	s := fmt.Sprintf("%s spi %08x proto %d", k.Dst, k.SPI, k.Proto)
	if k.Mark.Mask != 0 {
		s += fmt.Sprintf(" mark %#x/%#x", k.Mark.Value, k.Mark.Mask)
	}
	return s
}

// Replay is a state's replay state as the kernel keeps it. OSeq is the
// last outbound sequence number used (the next packet carries OSeq+1);
// Seq the highest inbound sequence number accepted, Bitmap the window
// below it. With ESN the high 32 bits are the kernel's oseq_hi / seq_hi.
type Replay struct {
	OSeq   uint64
	Seq    uint64
	Bitmap []uint32
}

// State is one kernel XFRM state as read or to be written: the model plus
// what the kernel counts.
type State struct {
	sa.State
	Replay Replay
	// AddTime is when the state was added (its time-based lifetimes run
	// from here). Installing with AddTime set carries the original
	// lifetime over; zero lets the kernel use "now".
	AddTime time.Time
	// Bytes and Packets are the kernel's use counters (read only).
	Bytes, Packets uint64
	// Unsupported names attributes present in the kernel's state that the
	// model cannot carry (e.g. an output mark or TFC padding): a copy
	// would not be faithful.
	Unsupported []string
}

// Key returns the state's lookup key.
func (s *State) Key() Key { return KeyOf(&s.State) }

// esnReplay says whether the replay state travels in XFRMA_REPLAY_ESN_VAL:
// with ESN, or with a window wider than the legacy 32-bit bitmap (what
// strongSwan does).
func esnReplay(s *sa.State) bool { return s.ESN || s.ReplayWindow > 32 }

// bitmapWords is the number of 32-bit words of a window of n packets.
func bitmapWords(n uint32) int { return int((uint64(n) + 31) / 32) }

// Policy is one kernel XFRM policy. Index is assigned by the kernel and
// only informative.
type Policy struct {
	sa.Policy
	Index uint32
	// Unsupported names attributes present that the model cannot carry.
	Unsupported []string
}

// Thresholds make the kernel report a state's replay counters as an async
// event (XFRM_MSG_NEWAE) after Packets sequence numbers or after Timer,
// whichever comes first, to listeners of the AEVENTS group.
type Thresholds struct {
	Packets uint32
	Timer   time.Duration
}

// ReplayEvent is one async replay report from the kernel.
type ReplayEvent struct {
	Key    Key
	Src    netip.Addr
	Reqid  uint32
	Replay Replay
	// Cause is the kernel's XFRM_AE_C* flag: 16 replay update, 32 timer,
	// 64 changed by a user (NEWAE).
	Cause uint32
}
