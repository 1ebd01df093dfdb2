package linux

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// The owner protocol: one-line UDP datagrams on OwnerPort.
//
//	HANDOFF/1 QUERY <vip>                 who holds <vip>? (sent to <vip> itself)
//	HANDOFF/1 HOLDER <vip> <node> <term>  I do, claimed at <term>
//	HANDOFF/1 NONE <vip>                  not me
//	HANDOFF/1 YIELD <vip> <node> <term>   <node> claimed <vip> at <term>: drop it
//	HANDOFF/1 YIELDED <vip> <node> <term> dropped in favour of <node> at <term>
//
// A QUERY sent to the VIP reaches whichever host the segment delivers the
// VIP to, so the answer describes the data plane, not a belief about it.
// The reply comes from the holder's primary address, where the new holder
// then sends YIELD.

const protoMagic = "HANDOFF/1"

const (
	msgQuery   = "QUERY"
	msgHolder  = "HOLDER"
	msgNone    = "NONE"
	msgYield   = "YIELD"
	msgYielded = "YIELDED"
)

type message struct {
	kind string
	vip  netip.Addr
	node string
	term uint64
}

func (m message) encode() []byte {
	switch m.kind {
	case msgQuery, msgNone:
		return []byte(protoMagic + " " + m.kind + " " + m.vip.String())
	}
	return []byte(protoMagic + " " + m.kind + " " + m.vip.String() + " " + m.node + " " + strconv.FormatUint(m.term, 10))
}

func parseMessage(b []byte) (message, error) {
	if len(b) > 256 {
		return message{}, fmt.Errorf("owner message of %d bytes is too long", len(b))
	}
	f := strings.Fields(string(bytes.TrimSpace(b)))
	if len(f) < 3 || f[0] != protoMagic {
		return message{}, fmt.Errorf("not an owner protocol message: %q", b)
	}
	vip, err := netip.ParseAddr(f[2])
	if err != nil {
		return message{}, fmt.Errorf("owner message %q: bad VIP: %w", b, err)
	}
	m := message{kind: f[1], vip: vip}
	switch m.kind {
	case msgQuery, msgNone:
		if len(f) != 3 {
			return message{}, fmt.Errorf("owner message %q: want 3 fields", b)
		}
		return m, nil
	case msgHolder, msgYield, msgYielded:
		if len(f) != 5 || !nodeRE.MatchString(f[3]) {
			return message{}, fmt.Errorf("owner message %q: want <vip> <node> <term>", b)
		}
		m.node = f[3]
		if m.term, err = strconv.ParseUint(f[4], 10, 64); err != nil {
			return message{}, fmt.Errorf("owner message %q: bad term: %w", b, err)
		}
		return m, nil
	}
	return message{}, fmt.Errorf("owner message %q: unknown kind %q", b, m.kind)
}
