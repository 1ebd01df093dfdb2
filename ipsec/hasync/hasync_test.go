package hasync

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
)

func loadCapture(t *testing.T) []*Message {
	t.Helper()
	f, err := os.Open("testdata/charon-5.9.8-ha.hex")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var msgs []*Message
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<16)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			t.Fatalf("bad line %q", sc.Text())
		}
		b, err := hex.DecodeString(fields[1])
		if err != nil {
			t.Fatal(err)
		}
		m, err := Decode(b)
		if err != nil {
			t.Fatalf("datagram %d: %v", len(msgs), err)
		}
		msgs = append(msgs, m)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return msgs
}

func TestCaptureTypes(t *testing.T) {
	msgs := loadCapture(t)
	want := []MsgType{SegmentTake, IKEAdd, IKEMIDResponder, IKEUpdate, ChildAdd, Resync,
		IKEMIDResponder, ChildAdd, IKEMIDResponder, IKEMIDResponder, IKEAdd, IKEDelete,
		IKEUpdate, IKEMIDResponder, ChildDelete, IKEMIDResponder, IKEMIDResponder, IKEMIDResponder}
	if len(msgs) != len(want) {
		t.Fatalf("%d datagrams, want %d", len(msgs), len(want))
	}
	for i, m := range msgs {
		if m.Type != want[i] {
			t.Errorf("datagram %d: %s, want %s", i, m.Type, want[i])
		}
		if m.Version != Version {
			t.Errorf("datagram %d: version %d", i, m.Version)
		}
	}
}

func spi(s string) (b [8]byte) {
	x, _ := hex.DecodeString(s)
	copy(b[:], x)
	return b
}

func TestCaptureIKERekey(t *testing.T) {
	msgs := loadCapture(t)
	add := msgs[10]
	id, ok := add.IKEID()
	// the peer's swanctl --list-sas: 964bdbc084895726_i* f5c768d700a58385_r
	if !ok || id.SPIi != spi("964bdbc084895726") || id.SPIr != spi("f5c768d700a58385") || id.Initiator || id.Version != 2 {
		t.Fatalf("IKE_ID %v", id)
	}
	old, ok := add.Find(AttrIKERekeyID)
	if !ok {
		t.Fatal("no IKE_REKEY_ID")
	}
	first, _ := msgs[1].IKEID()
	if old.IKEID() != first {
		t.Fatalf("rekeyed %v, first IKE_SA %v", old.IKEID(), first)
	}
	for _, a := range []AttrType{AttrOldSKd, AttrSecret, AttrNonceI, AttrNonceR} {
		v, ok := add.Find(a)
		if !ok || len(v.Chunk()) != 32 {
			t.Errorf("%s: %v", a, v)
		}
	}
	if v, _ := add.Find(AttrAlgDH); v.Uint() != 31 { // CURVE_25519
		t.Errorf("DH %d", v.Uint())
	}
	if s := add.String(); strings.Contains(s, hex.EncodeToString(mustFind(t, add, AttrSecret).Chunk())) {
		t.Error("String shows the DH secret")
	}
}

func mustFind(t *testing.T, m *Message, a AttrType) Attr {
	t.Helper()
	v, ok := m.Find(a)
	if !ok {
		t.Fatalf("%s has no %s", m.Type, a)
	}
	return v
}

func TestCaptureUpdateAndChild(t *testing.T) {
	msgs := loadCapture(t)
	up := msgs[3]
	if got := mustFind(t, up, AttrConfigName).Str(); got != "gw" {
		t.Errorf("config %q", got)
	}
	if got := mustFind(t, up, AttrLocalAddr).Host(); got != netip.MustParseAddrPort("192.0.2.1:4500") {
		t.Errorf("local %v", got)
	}
	if got := mustFind(t, up, AttrRemoteAddr).Host(); got != netip.MustParseAddrPort("192.0.2.2:4500") {
		t.Errorf("remote %v", got)
	}
	if typ, d := mustFind(t, up, AttrRemoteID).ID(); typ != 2 || string(d) != "peer.example" { // ID_FQDN
		t.Errorf("remote id %d %q", typ, d)
	}
	// IKE_ADD carries the address the first request came from (port 500)
	if got := mustFind(t, msgs[1], AttrRemoteAddr).Host(); got != netip.MustParseAddrPort("192.0.2.2:500") {
		t.Errorf("IKE_ADD remote %v", got)
	}
	child := msgs[7] // the CHILD_SA rekey, with PFS
	if got := mustFind(t, child, AttrInboundSPI).Uint(); got != 0x2c0410a6 {
		t.Errorf("inbound SPI %#x", got)
	}
	if got := mustFind(t, child, AttrOutboundSPI).Uint(); got != 0xe507a456 {
		t.Errorf("outbound SPI %#x", got)
	}
	if got := mustFind(t, child, AttrConfigName).Str(); got != "net" {
		t.Errorf("child config %q", got)
	}
	if _, ok := child.Find(AttrSecret); !ok {
		t.Error("PFS rekey without SECRET")
	}
	if _, ok := msgs[4].Find(AttrSecret); ok {
		t.Error("IKE_AUTH CHILD_SA with SECRET")
	}
	proto, from, to, fp, tp, dyn := mustFind(t, child, AttrLocalTS).TS()
	if proto != 0 || from != netip.MustParseAddr("198.51.100.0") || to != netip.MustParseAddr("198.51.100.255") || fp != 0 || tp != 65535 || dyn {
		t.Errorf("local TS %d %v %v %d %d %v", proto, from, to, fp, tp, dyn)
	}
	del := msgs[14]
	if got := mustFind(t, del, AttrInboundSPI).Uint(); got != mustFind(t, msgs[4], AttrInboundSPI).Uint() {
		t.Errorf("CHILD_DELETE of %#x, not the rekeyed CHILD_SA", got)
	}
	if got := mustFind(t, msgs[17], AttrMID).Uint(); got != 3 {
		t.Errorf("last MID %d", got)
	}
}

func TestSegmentMessage(t *testing.T) {
	msgs := loadCapture(t)
	if got := SegmentMessage(SegmentTake, 1); !bytes.Equal(got, msgs[0].Raw) {
		t.Errorf("SEGMENT_TAKE %x, charon sent %x", got, msgs[0].Raw)
	}
	if got := SegmentMessage(Resync, 1); !bytes.Equal(got, msgs[5].Raw) {
		t.Errorf("RESYNC %x, charon sent %x", got, msgs[5].Raw)
	}
	m, err := Decode(SegmentMessage(Status, 1, 2, 3))
	if err != nil || len(m.Attrs) != 3 || m.Attrs[2].Uint() != 3 {
		t.Fatalf("%v %v", m, err)
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, c := range []struct {
		hex  string
		want error
	}{
		{"", ErrShort},
		{"03", ErrShort},
		{"020a", ErrVersion},
		{"030a2200", ErrShort},
		{"030aff0001", ErrUnknownAttr},
		{"03020861", ErrShort}, // string without NUL
	} {
		b, _ := hex.DecodeString(c.hex)
		if _, err := Decode(b); !errors.Is(err, c.want) {
			t.Errorf("%q: %v, want %v", c.hex, err, c.want)
		}
	}
	// every truncation of every captured datagram fails cleanly or decodes
	// fewer attributes; none panics
	for _, m := range loadCapture(t) {
		for n := 0; n < len(m.Raw); n++ {
			if d, err := Decode(m.Raw[:n]); err == nil && len(d.Attrs) >= len(m.Attrs) {
				t.Errorf("%s cut to %d bytes decoded all %d attributes", m.Type, n, len(m.Attrs))
			}
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{3, 9, 0x22, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		_ = m.String()
	})
}
