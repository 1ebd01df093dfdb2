// Package wire encodes and decodes VICI packets (the framing and message
// encoding of strongSwan's VICI protocol). The event session of package
// vici and the test server in vicitest use it; commands go through govici.
package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/handoffvpn/handoff/internal/boundread"
)

// Packet types of the VICI protocol.
const (
	CmdRequest      = 0
	CmdResponse     = 1
	CmdUnknown      = 2
	EventRegister   = 3
	EventUnregister = 4
	EventConfirm    = 5
	EventUnknown    = 6
	Event           = 7
)

// Message element types.
const (
	elSectionStart = 1
	elSectionEnd   = 2
	elKeyValue     = 3
	elListStart    = 4
	elListItem     = 5
	elListEnd      = 6
)

// Msg is an ordered VICI message.
type Msg struct {
	Items []Item
}

// Item is one element of a message: a value, a list or a section.
type Item struct {
	Key     string
	Value   string
	List    []string
	IsList  bool
	Section *Msg
}

// Get returns the value of key (empty if absent or not a value).
func (m *Msg) Get(key string) string {
	for _, it := range m.Items {
		if it.Key == key && it.Section == nil && !it.IsList {
			return it.Value
		}
	}
	return ""
}

// Section returns the sub-section key, or nil.
func (m *Msg) Section(key string) *Msg {
	for _, it := range m.Items {
		if it.Key == key && it.Section != nil {
			return it.Section
		}
	}
	return nil
}

// Packet is one VICI packet; Name is set for named types.
type Packet struct {
	Type byte
	Name string
	Msg  *Msg
}

func named(t byte) bool {
	return t == CmdRequest || t == EventRegister || t == EventUnregister || t == Event
}

// MaxPacket is the largest packet ReadPacket accepts.
const MaxPacket = 1 << 20

// ReadPacket reads one packet.
func ReadPacket(r io.Reader) (Packet, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Packet{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > MaxPacket {
		return Packet{}, fmt.Errorf("packet length %d (at most %d)", n, MaxPacket)
	}
	// The length is the peer's claim: the buffer grows as the bytes come.
	buf, err := boundread.Exactly(r, int64(n))
	if err != nil {
		return Packet{}, fmt.Errorf("reading a packet of %d bytes: %w", n, err)
	}
	p := Packet{Type: buf[0]}
	buf = buf[1:]
	if named(p.Type) {
		if len(buf) < 1 || len(buf) < 1+int(buf[0]) {
			return Packet{}, errors.New("truncated packet name")
		}
		n := 1 + int(buf[0]) // int: 1+255 must not wrap to 0 as a byte
		p.Name = string(buf[1:n])
		buf = buf[n:]
	}
	m, rest, err := decodeMsg(buf, false)
	if err != nil {
		return Packet{}, err
	}
	if len(rest) != 0 {
		return Packet{}, fmt.Errorf("%d bytes after message", len(rest))
	}
	p.Msg = m
	return p, nil
}

// WritePacket writes one packet.
func WritePacket(w io.Writer, p Packet) error {
	var b bytes.Buffer
	b.WriteByte(p.Type)
	if named(p.Type) {
		b.WriteByte(byte(len(p.Name)))
		b.WriteString(p.Name)
	}
	if p.Msg != nil {
		encodeMsg(&b, p.Msg)
	}
	out := binary.BigEndian.AppendUint32(nil, uint32(b.Len()))
	_, err := w.Write(append(out, b.Bytes()...))
	return err
}

func encodeMsg(b *bytes.Buffer, m *Msg) {
	for _, it := range m.Items {
		switch {
		case it.Section != nil:
			b.WriteByte(elSectionStart)
			b.WriteByte(byte(len(it.Key)))
			b.WriteString(it.Key)
			encodeMsg(b, it.Section)
			b.WriteByte(elSectionEnd)
		case it.IsList:
			b.WriteByte(elListStart)
			b.WriteByte(byte(len(it.Key)))
			b.WriteString(it.Key)
			for _, v := range it.List {
				b.WriteByte(elListItem)
				b.Write(binary.BigEndian.AppendUint16(nil, uint16(len(v))))
				b.WriteString(v)
			}
			b.WriteByte(elListEnd)
		default:
			b.WriteByte(elKeyValue)
			b.WriteByte(byte(len(it.Key)))
			b.WriteString(it.Key)
			b.Write(binary.BigEndian.AppendUint16(nil, uint16(len(it.Value))))
			b.WriteString(it.Value)
		}
	}
}

func decodeMsg(buf []byte, inSection bool) (*Msg, []byte, error) {
	m := &Msg{}
	name := func() (string, error) {
		if len(buf) < 1 || len(buf) < 1+int(buf[0]) {
			return "", errors.New("truncated name")
		}
		n := 1 + int(buf[0]) // int: 1+255 must not wrap to 0 as a byte
		s := string(buf[1:n])
		buf = buf[n:]
		return s, nil
	}
	value := func() (string, error) {
		if len(buf) < 2 {
			return "", errors.New("truncated value length")
		}
		n := int(binary.BigEndian.Uint16(buf))
		if len(buf) < 2+n {
			return "", errors.New("truncated value")
		}
		s := string(buf[2 : 2+n])
		buf = buf[2+n:]
		return s, nil
	}
	for len(buf) > 0 {
		t := buf[0]
		buf = buf[1:]
		switch t {
		case elSectionStart:
			k, err := name()
			if err != nil {
				return nil, nil, err
			}
			sub, rest, err := decodeMsg(buf, true)
			if err != nil {
				return nil, nil, err
			}
			buf = rest
			m.Items = append(m.Items, Item{Key: k, Section: sub})
		case elSectionEnd:
			if !inSection {
				return nil, nil, errors.New("section end outside a section")
			}
			return m, buf, nil
		case elKeyValue:
			k, err := name()
			if err != nil {
				return nil, nil, err
			}
			v, err := value()
			if err != nil {
				return nil, nil, err
			}
			m.Items = append(m.Items, Item{Key: k, Value: v})
		case elListStart:
			k, err := name()
			if err != nil {
				return nil, nil, err
			}
			it := Item{Key: k, IsList: true}
			for {
				if len(buf) == 0 {
					return nil, nil, errors.New("unterminated list")
				}
				lt := buf[0]
				buf = buf[1:]
				if lt == elListEnd {
					break
				}
				if lt != elListItem {
					return nil, nil, fmt.Errorf("element %d inside a list", lt)
				}
				v, err := value()
				if err != nil {
					return nil, nil, err
				}
				it.List = append(it.List, v)
			}
			m.Items = append(m.Items, it)
		default:
			return nil, nil, fmt.Errorf("unknown element type %d", t)
		}
	}
	if inSection {
		return nil, nil, errors.New("unterminated section")
	}
	return m, buf, nil
}

// Format writes m in the transcript layout, indented by indent.
func (m *Msg) Format(indent string) string {
	var b strings.Builder
	m.format(&b, indent)
	return b.String()
}

func (m *Msg) format(b *strings.Builder, indent string) {
	for _, it := range m.Items {
		switch {
		case it.Section != nil:
			fmt.Fprintf(b, "%s%s {\n", indent, it.Key)
			it.Section.format(b, indent+"  ")
			fmt.Fprintf(b, "%s}\n", indent)
		case it.IsList:
			fmt.Fprintf(b, "%s%s = [\n", indent, it.Key)
			for _, v := range it.List {
				fmt.Fprintf(b, "%s  %s\n", indent, v)
			}
			fmt.Fprintf(b, "%s]\n", indent)
		default:
			fmt.Fprintf(b, "%s%s = %s\n", indent, it.Key, it.Value)
		}
	}
}

// Equal compares two messages element by element, in order.
func (m *Msg) Equal(o *Msg) bool {
	if m == nil || o == nil {
		return (m == nil || len(m.Items) == 0) && (o == nil || len(o.Items) == 0)
	}
	return m.Format("") == o.Format("")
}

// Sorted returns a copy with keys sorted at every level (for comparing
// requests built from maps).
func (m *Msg) Sorted() *Msg {
	out := &Msg{Items: make([]Item, len(m.Items))}
	for i, it := range m.Items {
		if it.Section != nil {
			it.Section = it.Section.Sorted()
		}
		out.Items[i] = it
	}
	sort.SliceStable(out.Items, func(i, j int) bool { return out.Items[i].Key < out.Items[j].Key })
	return out
}
