// Package hasync decodes and encodes the datagrams of strongSwan's ha plugin
// (charon.plugins.ha), protocol version 3 as in strongSwan 5.9.
//
// This is an independent implementation written from the protocol
// description in docs/design/ike-continuity.md, not a translation of the
// plugin's code. A datagram is a two-byte header (version, message type)
// followed by attributes, each a one-byte type and a value whose encoding
// depends on the type (there is no length field: a decoder must know every
// attribute type it meets). Integers are big-endian except where noted.
//
// The plugin neither authenticates nor encrypts these datagrams: they carry
// the IKE and CHILD_SA Diffie-Hellman secrets and nonces from which every key
// can be derived. Treat a decoded or raw message as key material.
package hasync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"strings"
)

// Version is the protocol version strongSwan 5.9 speaks (HA_MESSAGE_VERSION).
const Version = 3

// Port is the UDP port of both ends (HA_PORT); it is not configurable.
const Port = 4510

// MsgType is a message type.
type MsgType uint8

// Message types.
const (
	IKEAdd          MsgType = 1  // new IKE_SA: SPIs, algorithms, nonces, DH secret
	IKEUpdate       MsgType = 2  // IKE_SA identities, addresses, config name, VIPs
	IKEMIDInitiator MsgType = 3  // next message ID we send requests with
	IKEMIDResponder MsgType = 4  // next message ID we expect requests with
	IKEDelete       MsgType = 5  // IKE_SA gone
	ChildAdd        MsgType = 6  // new CHILD_SA: SPIs, algorithms, nonces, TS
	ChildDelete     MsgType = 7  // CHILD_SA gone (by inbound SPI)
	SegmentDrop     MsgType = 8  // sender gives up these segments
	SegmentTake     MsgType = 9  // sender takes these segments
	Status          MsgType = 10 // heartbeat: segments the sender serves
	Resync          MsgType = 11 // receiver is asked to resend these segments
	IKEIV           MsgType = 12 // IKEv1 phase 1 IV
)

var msgNames = map[MsgType]string{
	IKEAdd: "IKE_ADD", IKEUpdate: "IKE_UPDATE", IKEMIDInitiator: "IKE_MID_INITIATOR",
	IKEMIDResponder: "IKE_MID_RESPONDER", IKEDelete: "IKE_DELETE", ChildAdd: "CHILD_ADD",
	ChildDelete: "CHILD_DELETE", SegmentDrop: "SEGMENT_DROP", SegmentTake: "SEGMENT_TAKE",
	Status: "STATUS", Resync: "RESYNC", IKEIV: "IKE_IV",
}

func (t MsgType) String() string {
	if s, ok := msgNames[t]; ok {
		return s
	}
	return fmt.Sprintf("MSG_%d", uint8(t))
}

// AttrType is an attribute type.
type AttrType uint8

// Attribute types.
const (
	AttrIKEID       AttrType = 1
	AttrIKERekeyID  AttrType = 2
	AttrLocalID     AttrType = 3
	AttrRemoteID    AttrType = 4
	AttrRemoteEAPID AttrType = 5
	AttrLocalAddr   AttrType = 6
	AttrRemoteAddr  AttrType = 7
	AttrConfigName  AttrType = 8
	AttrConditions  AttrType = 9
	AttrExtensions  AttrType = 10
	AttrLocalVIP    AttrType = 11
	AttrRemoteVIP   AttrType = 12
	AttrPeerAddr    AttrType = 13
	AttrInitiator   AttrType = 14
	AttrNonceI      AttrType = 15
	AttrNonceR      AttrType = 16
	AttrSecret      AttrType = 17
	AttrOldSKd      AttrType = 18
	AttrAlgPRF      AttrType = 19
	AttrAlgOldPRF   AttrType = 20
	AttrAlgEncr     AttrType = 21
	AttrAlgEncrLen  AttrType = 22
	AttrAlgInteg    AttrType = 23
	AttrAlgDH       AttrType = 24
	AttrIPsecMode   AttrType = 25
	AttrIPComp      AttrType = 26
	AttrInboundSPI  AttrType = 27
	AttrOutboundSPI AttrType = 28
	AttrInboundCPI  AttrType = 29
	AttrOutboundCPI AttrType = 30
	AttrLocalTS     AttrType = 31
	AttrRemoteTS    AttrType = 32
	AttrMID         AttrType = 33
	AttrSegment     AttrType = 34
	AttrESN         AttrType = 35
	AttrIKEVersion  AttrType = 36
	AttrLocalDH     AttrType = 37
	AttrRemoteDH    AttrType = 38
	AttrPSK         AttrType = 39
	AttrIV          AttrType = 40
	AttrAuthMethod  AttrType = 41
)

// Kind is how an attribute's value is encoded.
type Kind uint8

// Value encodings.
const (
	KindIKEID  Kind = iota + 1 // version u8, SPIi 8 bytes, SPIr 8 bytes, initiator u8
	KindID                     // id type u8, length u8, bytes
	KindHost                   // port u16, family u8 (Linux AF_*), 4 or 16 address bytes
	KindString                 // NUL-terminated
	KindU8
	KindU16
	KindU32
	KindChunk // length u16, bytes
	KindTS    // ts type u8, proto u8, from port u16, to port u16, dynamic u8, 2 addresses
)

type attrInfo struct {
	name   string
	kind   Kind
	secret bool // key material: never printed
}

var attrs = map[AttrType]attrInfo{
	AttrIKEID: {"IKE_ID", KindIKEID, false}, AttrIKERekeyID: {"IKE_REKEY_ID", KindIKEID, false},
	AttrLocalID: {"LOCAL_ID", KindID, false}, AttrRemoteID: {"REMOTE_ID", KindID, false},
	AttrRemoteEAPID: {"REMOTE_EAP_ID", KindID, false},
	AttrLocalAddr:   {"LOCAL_ADDR", KindHost, false}, AttrRemoteAddr: {"REMOTE_ADDR", KindHost, false},
	AttrConfigName: {"CONFIG_NAME", KindString, false},
	AttrConditions: {"CONDITIONS", KindU32, false}, AttrExtensions: {"EXTENSIONS", KindU32, false},
	AttrLocalVIP: {"LOCAL_VIP", KindHost, false}, AttrRemoteVIP: {"REMOTE_VIP", KindHost, false},
	AttrPeerAddr: {"PEER_ADDR", KindHost, false}, AttrInitiator: {"INITIATOR", KindU8, false},
	AttrNonceI: {"NONCE_I", KindChunk, false}, AttrNonceR: {"NONCE_R", KindChunk, false},
	AttrSecret: {"SECRET", KindChunk, true}, AttrOldSKd: {"OLD_SKD", KindChunk, true},
	AttrAlgPRF: {"ALG_PRF", KindU16, false}, AttrAlgOldPRF: {"ALG_OLD_PRF", KindU16, false},
	AttrAlgEncr: {"ALG_ENCR", KindU16, false}, AttrAlgEncrLen: {"ALG_ENCR_LEN", KindU16, false},
	AttrAlgInteg: {"ALG_INTEG", KindU16, false}, AttrAlgDH: {"ALG_DH", KindU16, false},
	AttrIPsecMode: {"IPSEC_MODE", KindU8, false}, AttrIPComp: {"IPCOMP", KindU8, false},
	AttrInboundSPI: {"INBOUND_SPI", KindU32, false}, AttrOutboundSPI: {"OUTBOUND_SPI", KindU32, false},
	AttrInboundCPI: {"INBOUND_CPI", KindU16, false}, AttrOutboundCPI: {"OUTBOUND_CPI", KindU16, false},
	AttrLocalTS: {"LOCAL_TS", KindTS, false}, AttrRemoteTS: {"REMOTE_TS", KindTS, false},
	AttrMID: {"MID", KindU32, false}, AttrSegment: {"SEGMENT", KindU16, false},
	AttrESN: {"ESN", KindU16, false}, AttrIKEVersion: {"IKE_VERSION", KindU8, false},
	AttrLocalDH: {"LOCAL_DH", KindChunk, false}, AttrRemoteDH: {"REMOTE_DH", KindChunk, false},
	AttrPSK: {"PSK", KindChunk, true}, AttrIV: {"IV", KindChunk, true},
	AttrAuthMethod: {"AUTH_METHOD", KindU16, false},
}

func (a AttrType) String() string {
	if i, ok := attrs[a]; ok {
		return i.name
	}
	return fmt.Sprintf("ATTR_%d", uint8(a))
}

// Kind returns the attribute's encoding, 0 for an unknown type.
func (a AttrType) Kind() Kind { return attrs[a].kind }

// Secret reports whether the attribute carries key material.
func (a AttrType) Secret() bool { return attrs[a].secret }

// IKEID identifies an IKE_SA. SPIs are kept as they appear in IKE headers.
type IKEID struct {
	Version   uint8
	SPIi      [8]byte
	SPIr      [8]byte
	Initiator bool // the sending charon is the IKE_SA's original initiator
}

func (id IKEID) String() string {
	r := "r"
	if id.Initiator {
		r = "i"
	}
	return fmt.Sprintf("v%d %x_i %x_r (%s)", id.Version, id.SPIi, id.SPIr, r)
}

// Key is the IKE_SA's ID in text, as a replicated record's key:
// "v2-<SPIi>-<SPIr>-i" (or "-r"), the SPIs in hex. ParseKey reads it.
func (id IKEID) Key() string {
	r := 'r'
	if id.Initiator {
		r = 'i'
	}
	return fmt.Sprintf("v%d-%x-%x-%c", id.Version, id.SPIi, id.SPIr, r)
}

// ParseKey reads an IKEID written by Key.
func ParseKey(s string) (IKEID, error) {
	var id IKEID
	var spii, spir []byte
	var r rune
	if n, err := fmt.Sscanf(s, "v%d-%x-%x-%c", &id.Version, &spii, &spir, &r); err != nil || n != 4 {
		return id, fmt.Errorf("hasync: IKE_SA key %q: want v<version>-<SPIi>-<SPIr>-<i|r>", s)
	}
	if len(spii) != 8 || len(spir) != 8 || (r != 'i' && r != 'r') {
		return id, fmt.Errorf("hasync: IKE_SA key %q: want two 8-byte SPIs and i or r", s)
	}
	copy(id.SPIi[:], spii)
	copy(id.SPIr[:], spir)
	id.Initiator = r == 'i'
	if id.Key() != s {
		return IKEID{}, fmt.Errorf("hasync: IKE_SA key %q is not in canonical form", s)
	}
	return id, nil
}

// appendIKEID encodes id as an IKE_ID-kind value.
func appendIKEID(b []byte, id IKEID) []byte {
	b = append(b, id.Version)
	b = append(b, id.SPIi[:]...)
	b = append(b, id.SPIr[:]...)
	if id.Initiator {
		return append(b, 1)
	}
	return append(b, 0)
}

// IKEDeleteMessage encodes the IKE_DELETE the plugin sends when an
// IKE_SA goes: a receiving charon deletes its copy and the CHILD_SAs
// under it. Handoff sends it to a standby's charon for a chain the log
// no longer holds (a compacted lineage keeps no deletions).
func IKEDeleteMessage(id IKEID) []byte {
	return appendIKEID([]byte{Version, byte(IKEDelete), byte(AttrIKEID)}, id)
}

// MIDResponderMessage encodes the IKE_MID_RESPONDER the plugin sends
// when charon takes a request: a receiving charon expects message ID mid
// from the peer next on the IKE_SA id (it resets the IKE_SA's task
// manager to it).
func MIDResponderMessage(id IKEID, mid uint32) []byte {
	b := appendIKEID([]byte{Version, byte(IKEMIDResponder), byte(AttrIKEID)}, id)
	b = append(b, byte(AttrMID))
	return binary.BigEndian.AppendUint32(b, mid)
}

// ChildDeleteMessage encodes a CHILD_DELETE for the CHILD_SA with inbound
// SPI spi under the IKE_SA id, the SPI in the plugin's byte order (see
// Attr.SPI).
func ChildDeleteMessage(id IKEID, spi uint32) []byte {
	b := appendIKEID([]byte{Version, byte(ChildDelete), byte(AttrIKEID)}, id)
	b = append(b, byte(AttrInboundSPI))
	return binary.BigEndian.AppendUint32(b, bits.ReverseBytes32(spi))
}

// Attr is one attribute; Raw is its encoded value (without the type byte),
// sharing the message's buffer.
type Attr struct {
	Type AttrType
	Raw  []byte
}

// Message is a decoded datagram. Raw is the datagram itself.
type Message struct {
	Version uint8
	Type    MsgType
	Attrs   []Attr
	Raw     []byte
}

// Errors.
var (
	ErrShort       = errors.New("hasync: truncated message")
	ErrVersion     = errors.New("hasync: unsupported protocol version")
	ErrUnknownAttr = errors.New("hasync: unknown attribute type")
)

// Decode parses a datagram. It keeps b (Raw and the attributes alias it).
// An unknown attribute type ends decoding with ErrUnknownAttr, since the
// encoding carries no lengths.
func Decode(b []byte) (*Message, error) {
	if len(b) < 2 {
		return nil, ErrShort
	}
	if b[0] != Version {
		return nil, fmt.Errorf("%w: %d", ErrVersion, b[0])
	}
	m := &Message{Version: b[0], Type: MsgType(b[1]), Raw: b}
	rest := b[2:]
	for len(rest) > 0 {
		t := AttrType(rest[0])
		rest = rest[1:]
		n, err := valueLen(t, rest)
		if err != nil {
			return nil, fmt.Errorf("%s attribute %d (%s): %w", m.Type, len(m.Attrs), t, err)
		}
		m.Attrs = append(m.Attrs, Attr{Type: t, Raw: rest[:n:n]})
		rest = rest[n:]
	}
	return m, nil
}

func need(b []byte, n int) (int, error) {
	if len(b) < n {
		return 0, ErrShort
	}
	return n, nil
}

func addrLen(family uint8) (int, error) {
	switch family {
	case 2: // AF_INET
		return 4, nil
	case 10: // AF_INET6 on Linux
		return 16, nil
	}
	return 0, fmt.Errorf("hasync: address family %d", family)
}

func valueLen(t AttrType, b []byte) (int, error) {
	switch t.Kind() {
	case KindIKEID:
		return need(b, 18)
	case KindID:
		if len(b) < 2 {
			return 0, ErrShort
		}
		return need(b, 2+int(b[1]))
	case KindHost:
		if len(b) < 3 {
			return 0, ErrShort
		}
		al, err := addrLen(b[2])
		if err != nil {
			return 0, err
		}
		return need(b, 3+al)
	case KindString:
		for i, c := range b {
			if c == 0 {
				return i + 1, nil
			}
		}
		return 0, ErrShort
	case KindU8:
		return need(b, 1)
	case KindU16:
		return need(b, 2)
	case KindU32:
		return need(b, 4)
	case KindChunk:
		if len(b) < 2 {
			return 0, ErrShort
		}
		return need(b, 2+int(binary.BigEndian.Uint16(b)))
	case KindTS:
		if len(b) < 7 {
			return 0, ErrShort
		}
		switch b[0] {
		case 7: // TS_IPV4_ADDR_RANGE
			return need(b, 7+8)
		case 8: // TS_IPV6_ADDR_RANGE
			return need(b, 7+32)
		}
		return 0, fmt.Errorf("hasync: traffic selector type %d", b[0])
	}
	return 0, ErrUnknownAttr
}

// Find returns the first attribute of type t.
func (m *Message) Find(t AttrType) (Attr, bool) {
	for _, a := range m.Attrs {
		if a.Type == t {
			return a, true
		}
	}
	return Attr{}, false
}

// IKEID returns the message's IKE_SA (HA_IKE_ID), if it names one.
func (m *Message) IKEID() (IKEID, bool) {
	a, ok := m.Find(AttrIKEID)
	if !ok {
		return IKEID{}, false
	}
	return a.IKEID(), true
}

// IKEID decodes a KindIKEID value.
func (a Attr) IKEID() IKEID {
	var id IKEID
	if a.Type.Kind() != KindIKEID || len(a.Raw) < 18 {
		return id
	}
	id.Version = a.Raw[0]
	copy(id.SPIi[:], a.Raw[1:9])
	copy(id.SPIr[:], a.Raw[9:17])
	id.Initiator = a.Raw[17] != 0
	return id
}

// Uint decodes a KindU8/U16/U32 value.
func (a Attr) Uint() uint32 {
	switch a.Type.Kind() {
	case KindU8:
		return uint32(a.Raw[0])
	case KindU16:
		return uint32(binary.BigEndian.Uint16(a.Raw))
	case KindU32:
		return binary.BigEndian.Uint32(a.Raw)
	}
	return 0
}

// SPI decodes an INBOUND_SPI or OUTBOUND_SPI value as the SPI itself, the
// number `ip xfrm` and VICI's list-sas print. The plugin converts to
// network order a value charon already keeps in network order, so on the
// little-endian hosts it runs on (x86-64, arm64) the wire carries the
// SPI's bytes reversed: a real charon's CHILD_SA 5256023f arrived as
// 3f025652 (the host-lab test, TestPrivilegedLineageFollowsARealCharon).
// Both ends of a cluster share that byte order, and Handoff forwards the
// datagrams unchanged; only this reading needs it.
func (a Attr) SPI() uint32 { return bits.ReverseBytes32(a.Uint()) }

// Host decodes a KindHost value.
func (a Attr) Host() netip.AddrPort {
	if a.Type.Kind() != KindHost {
		return netip.AddrPort{}
	}
	ip, _ := netip.AddrFromSlice(a.Raw[3:])
	return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(a.Raw))
}

// Chunk decodes a KindChunk value.
func (a Attr) Chunk() []byte {
	if a.Type.Kind() != KindChunk {
		return nil
	}
	return a.Raw[2:]
}

// Str decodes a KindString value.
func (a Attr) Str() string {
	if a.Type.Kind() != KindString || len(a.Raw) == 0 {
		return ""
	}
	return string(a.Raw[:len(a.Raw)-1])
}

// ID decodes a KindID value: strongSwan's id_type_t and its encoding.
func (a Attr) ID() (typ uint8, data []byte) {
	if a.Type.Kind() != KindID {
		return 0, nil
	}
	return a.Raw[0], a.Raw[2:]
}

// TS decodes a KindTS value.
func (a Attr) TS() (proto uint8, from, to netip.Addr, fromPort, toPort uint16, dynamic bool) {
	if a.Type.Kind() != KindTS {
		return
	}
	al := (len(a.Raw) - 7) / 2
	from, _ = netip.AddrFromSlice(a.Raw[7 : 7+al])
	to, _ = netip.AddrFromSlice(a.Raw[7+al:])
	return a.Raw[1], from, to, binary.BigEndian.Uint16(a.Raw[2:]), binary.BigEndian.Uint16(a.Raw[4:]), a.Raw[6] != 0
}

// String formats the value; key material shows only its length.
func (a Attr) String() string {
	v := ""
	switch a.Type.Kind() {
	case KindIKEID:
		v = a.IKEID().String()
	case KindID:
		t, d := a.ID()
		v = fmt.Sprintf("type %d %q", t, d)
	case KindHost:
		v = a.Host().String()
	case KindString:
		v = fmt.Sprintf("%q", a.Str())
	case KindU8, KindU16:
		v = fmt.Sprint(a.Uint())
	case KindU32:
		v = fmt.Sprintf("%#x", a.Uint())
	case KindChunk:
		if a.Type.Secret() {
			v = fmt.Sprintf("<%d bytes>", len(a.Chunk()))
		} else {
			v = fmt.Sprintf("%d bytes %x", len(a.Chunk()), a.Chunk())
		}
	case KindTS:
		p, f, t, fp, tp, dyn := a.TS()
		v = fmt.Sprintf("proto %d %s-%s ports %d-%d", p, f, t, fp, tp)
		if dyn {
			v += " dynamic"
		}
	}
	return a.Type.String() + "=" + v
}

// String formats the message with its attributes (key material redacted).
func (m *Message) String() string {
	var b strings.Builder
	b.WriteString(m.Type.String())
	for _, a := range m.Attrs {
		b.WriteString(" ")
		b.WriteString(a.String())
	}
	return b.String()
}

// SegmentMessage encodes a SEGMENT_TAKE, SEGMENT_DROP, STATUS or RESYNC
// message naming the given segments (1-based).
func SegmentMessage(t MsgType, segments ...uint16) []byte {
	b := []byte{Version, byte(t)}
	for _, s := range segments {
		b = append(b, byte(AttrSegment), byte(s>>8), byte(s))
	}
	return b
}
