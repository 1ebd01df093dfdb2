// Package sa is Handoff's model of a live IPsec security association: the
// kernel XFRM states of both directions of one CHILD_SA, its XFRM policies,
// the IKE and CHILD_SA metadata strongSwan reports over VICI, and the replay
// state that moves with every packet.
//
// It is the unit the active gateway exports, the Raft log replicates (sealed)
// and a standby installs at takeover. It holds key material: String and
// Format never print keys, and the binary codec (Marshal / Unmarshal) is only
// ever written to disk or the network after sealing.
package sa

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Protocol numbers and modes as XFRM uses them.
const (
	ProtoESP = 50
	ProtoAH  = 51

	ModeTransport = 0
	ModeTunnel    = 1

	// EncapESPInUDP is UDP_ENCAP_ESPINUDP (RFC 3948 NAT traversal).
	EncapESPInUDP = 2
)

// Dir is the direction of a state or policy as the gateway sees it.
type Dir uint8

const (
	DirIn  Dir = 0
	DirOut Dir = 1
	DirFwd Dir = 2
)

func (d Dir) String() string {
	switch d {
	case DirIn:
		return "in"
	case DirOut:
		return "out"
	case DirFwd:
		return "fwd"
	}
	return fmt.Sprintf("dir(%d)", uint8(d))
}

// Algo is one transform with its key. ICVBits is the AEAD ICV length;
// TruncBits the truncated authentication length.
type Algo struct {
	Name      string
	Key       []byte
	ICVBits   uint32
	TruncBits uint32
}

// Encap is UDP encapsulation of ESP (NAT-T).
type Encap struct {
	Type     uint16
	SrcPort  uint16
	DstPort  uint16
	OrigAddr netip.Addr
}

// Mark is an XFRM mark with its mask.
type Mark struct {
	Value uint32
	Mask  uint32
}

// Lifetime holds the XFRM lifetime limits (bytes, packets, seconds).
type Lifetime struct {
	SoftBytes, HardBytes           uint64
	SoftPackets, HardPackets       uint64
	SoftAddSeconds, HardAddSeconds uint64
	SoftUseSeconds, HardUseSeconds uint64
}

// Selector is an XFRM selector (traffic the state or policy applies to).
type Selector struct {
	Src, Dst         netip.Prefix
	Proto            uint8
	SrcPort, DstPort uint16
}

// State is one kernel XFRM state (one direction of a CHILD_SA).
type State struct {
	Src, Dst     netip.Addr
	Proto        uint8
	SPI          uint32
	Mode         uint8
	Reqid        uint32
	Flags        uint8
	ExtraFlags   uint32
	ReplayWindow uint32
	ESN          bool
	AEAD         *Algo
	Crypt        *Algo
	Auth         *Algo
	Encap        *Encap
	Mark         *Mark
	IfID         uint32
	Lifetime     Lifetime
	Selector     Selector
}

// Template is one XFRM policy template.
type Template struct {
	Src, Dst netip.Addr
	Proto    uint8
	Mode     uint8
	SPI      uint32
	Reqid    uint32
	Optional bool
}

// Policy is one XFRM policy of a CHILD_SA.
type Policy struct {
	Dir       Dir
	Selector  Selector
	Priority  uint32
	Action    uint8 // 0 allow, 1 block
	Mark      *Mark
	IfID      uint32
	Templates []Template
}

// IKE is the metadata of the IKE SA that owns a CHILD_SA, from VICI.
// strongSwan cannot export IKE keys, so there are none here.
type IKE struct {
	UniqueID      uint32
	Name          string
	LocalID       string
	RemoteID      string
	Local         netip.AddrPort
	Remote        netip.AddrPort
	InitiatorSPI  uint64
	ResponderSPI  uint64
	NATRemote     bool
	EstablishedAt time.Time
}

// Child is the CHILD_SA metadata from VICI.
type Child struct {
	Name        string
	UniqueID    uint32
	LocalTS     []string
	RemoteTS    []string
	InstalledAt time.Time
	RekeyAt     time.Time
}

// ChildSA is one CHILD_SA with everything needed to carry it elsewhere.
type ChildSA struct {
	// ID is stable across nodes and rekeys of nothing else: the inbound
	// destination and SPI, which the kernel keeps unique per host.
	ID       string
	IKE      IKE
	Child    Child
	In, Out  State
	Policies []Policy
}

// MakeID returns the canonical ID of a CHILD_SA from its inbound state.
func MakeID(in State) string {
	// Hand-formatted: Validate checks every SA's ID, and at 100,000 SAs
	// fmt.Sprintf was a visible share of a takeover's CPU.
	b := make([]byte, 0, 48)
	b = in.Dst.AppendTo(b)
	b = append(b, '/')
	const hex = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, hex[(in.SPI>>uint(shift))&0xf])
	}
	return string(b)
}

// Replay is the replay state of a CHILD_SA at one moment: the outbound
// sequence number the gateway will use next minus one, the highest inbound
// sequence number seen, and the inbound window bitmap.
type Replay struct {
	ID     string
	OSeq   uint64
	Seq    uint64
	Bitmap []uint32
	// ReadAt is when the counters were read on the active gateway.
	ReadAt time.Time
}

// String describes the SA without key material.
func (c *ChildSA) String() string {
	return fmt.Sprintf("child %s (%s/%s) %s: in %s spi %08x, out %s spi %08x, %s",
		c.ID, c.IKE.Name, c.Child.Name, c.IKE.Remote, c.In.Dst, c.In.SPI, c.Out.Dst, c.Out.SPI, c.In.algoNames())
}

// GoString keeps %#v from dumping keys.
func (c *ChildSA) GoString() string { return c.String() }

// String describes the algorithm without its key.
func (a *Algo) String() string {
	if a == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%s(%d-bit key, redacted)", a.Name, len(a.Key)*8)
}

// GoString keeps %#v from dumping keys.
func (a *Algo) GoString() string { return a.String() }

// MarshalJSON keeps encoding/json (and so slog's JSON handler, which a
// JSON log_format uses) from writing the key: only its length goes out.
// Nothing decodes an SA from JSON; the replicated form is the sealed codec.
func (a Algo) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Name      string `json:"name"`
		KeyBits   int    `json:"key_bits"`
		Key       string `json:"key"`
		ICVBits   uint32 `json:"icv_bits,omitempty"`
		TruncBits uint32 `json:"trunc_bits,omitempty"`
	}{a.Name, len(a.Key) * 8, "redacted", a.ICVBits, a.TruncBits})
}

// LogValue makes slog log the SA as its String, whatever the handler.
func (c *ChildSA) LogValue() slog.Value { return slog.StringValue(c.String()) }

// Format implements fmt.Formatter so that no verb (%v, %+v, %#v, %x, %s)
// can print key bytes.
func (a Algo) Format(f fmt.State, verb rune) { fmt.Fprint(f, (&a).String()) }

func (s *State) algoNames() string {
	switch {
	case s.AEAD != nil:
		return s.AEAD.Name
	case s.Crypt != nil && s.Auth != nil:
		return s.Crypt.Name + "+" + s.Auth.Name
	case s.Crypt != nil:
		return s.Crypt.Name
	case s.Auth != nil:
		return s.Auth.Name
	}
	return "no algorithm"
}

// Algos returns the state's algorithms that are set.
func (s *State) Algos() []*Algo {
	var out []*Algo
	for _, a := range []*Algo{s.AEAD, s.Crypt, s.Auth} {
		if a != nil {
			out = append(out, a)
		}
	}
	return out
}

// Validate checks the invariants a state must hold before it is replicated
// or installed.
func (s *State) Validate() error {
	if !s.Src.IsValid() || !s.Dst.IsValid() {
		return fmt.Errorf("state spi %08x: missing source or destination address", s.SPI)
	}
	if s.Src.Is4() != s.Dst.Is4() {
		return fmt.Errorf("state spi %08x: mixed address families %s -> %s", s.SPI, s.Src, s.Dst)
	}
	if s.SPI == 0 {
		return fmt.Errorf("state %s -> %s: SPI 0", s.Src, s.Dst)
	}
	if s.Proto != ProtoESP && s.Proto != ProtoAH {
		return fmt.Errorf("state spi %08x: protocol %d is not ESP or AH", s.SPI, s.Proto)
	}
	if s.AEAD == nil && s.Crypt == nil && s.Auth == nil {
		return fmt.Errorf("state spi %08x: no algorithm", s.SPI)
	}
	if s.AEAD != nil && (s.Crypt != nil || s.Auth != nil) {
		return fmt.Errorf("state spi %08x: AEAD combined with separate cipher or integrity", s.SPI)
	}
	for _, a := range s.Algos() {
		if a.Name == "" {
			return fmt.Errorf("state spi %08x: algorithm without a name", s.SPI)
		}
	}
	return nil
}

// Validate checks a CHILD_SA before it is replicated or installed.
func (c *ChildSA) Validate() error {
	if c.ID == "" {
		return fmt.Errorf("child SA without an ID")
	}
	if err := c.In.Validate(); err != nil {
		return fmt.Errorf("child %s inbound: %w", c.ID, err)
	}
	if err := c.Out.Validate(); err != nil {
		return fmt.Errorf("child %s outbound: %w", c.ID, err)
	}
	if want := MakeID(c.In); c.ID != want {
		return fmt.Errorf("child %s: ID does not match inbound state %s", c.ID, want)
	}
	return nil
}

// Op says what happened to a CHILD_SA.
type Op uint8

const (
	// Upsert: the CHILD_SA appeared or changed (installed, rekeyed, updated).
	Upsert Op = 1
	// Delete: the CHILD_SA went away.
	Delete Op = 2
)

// Change is one event of the active gateway's SA feed.
type Change struct {
	Op Op
	// ID is set for both operations; SA only for Upsert.
	ID string
	SA *ChildSA
}

// Install is one CHILD_SA to install on a node taking over, with the
// outbound sequence number to start after (already jumped ahead by the
// caller) and the inbound replay state to resume from.
type Install struct {
	SA     *ChildSA
	OSeq   uint64
	Replay Replay
}
