package xfrm

import (
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"golang.org/x/sys/unix"
)

func outPolicy() *sa.Policy {
	return &sa.Policy{Dir: sa.DirOut,
		Selector: sa.Selector{Src: netip.MustParsePrefix("198.18.1.0/24"), Dst: netip.MustParsePrefix("198.51.100.10/32")},
		Templates: []sa.Template{{Src: netip.MustParseAddr("203.0.113.100"), Dst: netip.MustParseAddr("203.0.113.2"),
			Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: 1}}}
}

// A batch adds what is new in one exchange; a state already there takes
// Install's careful path, so its outbound sequence number only moves
// forward; a state the kernel refuses is reported as that state's error
// and the rest still go in.
func TestInstallStatesBatch(t *testing.T) {
	h, k := newTestHandle(t)
	ctx := context.Background()
	live := outState()
	live.Replay.OSeq = 500_000
	if _, err := h.Install(ctx, live); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	k.log = nil
	k.mu.Unlock()

	again := outState() // the same SA, replicated counters behind the kernel's
	again.Replay.OSeq = 1000
	refused := inState()
	refused.SPI = 0xdead
	k.before = func(op string, key Key) error {
		if op == "newsa" && key.SPI == 0xdead {
			return unix.EINVAL
		}
		return nil
	}
	errs := h.InstallStates(ctx, []*State{inState(), again, refused})
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("errors %v", errs)
	}
	if !errors.Is(errs[2], unix.EINVAL) {
		t.Errorf("refused state: %v, want EINVAL", errs[2])
	}
	want := `batch of 3
newsa 203.0.113.100 spi c11cbbaf proto 50 oseq 0x0 seq 0x260
newsa 203.0.113.2 spi c156ca3c proto 50: EEXIST
newsa 203.0.113.2 spi c156ca3c proto 50: EEXIST
getsa 203.0.113.2 spi c156ca3c proto 50`
	if got := k.transcript(); got != want {
		t.Errorf("kernel calls:\n%s\nwant:\n%s", got, want)
	}
	cur, err := h.Get(ctx, again.Key())
	if err != nil || cur.Replay.OSeq != 500_000 {
		t.Errorf("outbound sequence number after the batch: %+v %v, want the kernel's 500000 kept", cur, err)
	}
}

// A batch that breaks part-way (a socket error) leaves no state unknown:
// every state is then installed one at a time, idempotently.
func TestInstallStatesBrokenBatchFallsBack(t *testing.T) {
	h, k := newTestHandle(t)
	k.applyBreak = 1
	errs := h.InstallStates(context.Background(), []*State{inState(), outState()})
	for i, err := range errs {
		if err != nil {
			t.Errorf("state %d: %v", i, err)
		}
	}
	want := `batch of 2
newsa 203.0.113.100 spi c11cbbaf proto 50 oseq 0x0 seq 0x260
newsa 203.0.113.100 spi c11cbbaf proto 50: EEXIST
getsa 203.0.113.100 spi c11cbbaf proto 50
newsa 203.0.113.2 spi c156ca3c proto 50 oseq 0x25e seq 0x0`
	if got := k.transcript(); got != want {
		t.Errorf("kernel calls:\n%s\nwant:\n%s", got, want)
	}
}

func TestInstallPoliciesBatch(t *testing.T) {
	h, k := newTestHandle(t)
	bad := &sa.Policy{Dir: sa.DirIn} // no selector family: refused before anything is sent
	fwd := outPolicy()
	fwd.Dir = sa.DirFwd
	errs := h.InstallPolicies(context.Background(), []*sa.Policy{fwd, bad, outPolicy()})
	if errs[0] != nil || errs[2] != nil || errs[1] == nil {
		t.Fatalf("errors %v, want only the second", errs)
	}
	want := `batch of 2
updpolicy fwd 198.18.1.0/24->198.51.100.10/32
updpolicy out 198.18.1.0/24->198.51.100.10/32`
	if got := k.transcript(); got != want {
		t.Errorf("kernel calls:\n%s\nwant:\n%s", got, want)
	}
}

func TestAppendMessageFraming(t *testing.T) {
	b := appendMessage(nil, 16, unix.NLM_F_REQUEST, 7, 42, []byte{1, 2, 3})
	b = appendMessage(b, 19, unix.NLM_F_REQUEST|unix.NLM_F_ACK, 8, 42, []byte{4, 5, 6, 7})
	if len(b) != 2*unix.NLMSG_HDRLEN+4+4 {
		t.Fatalf("length %d", len(b))
	}
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil || len(msgs) != 2 || msgs[0].Header.Seq != 7 || msgs[1].Header.Type != 19 || string(msgs[1].Data) != "\x04\x05\x06\x07" {
		t.Fatalf("parsed %+v %v", msgs, err)
	}
}
