package sa

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"
)

// codecVersion is the first byte of every encoded ChildSA. A decoder refuses
// versions it does not know rather than guessing.
const codecVersion = 1

// Limits that keep a hostile or corrupt blob from allocating without bound.
const (
	maxString    = 4096
	maxKey       = 512
	maxList      = 1024
	maxBitmap    = 4096 // 32-bit words: a 131072-packet replay window
	maxPolicies  = 64
	maxTemplates = 8
)

// ErrCodec is wrapped by every decoding error.
var ErrCodec = errors.New("malformed SA encoding")

// Marshal encodes c. The result holds key material: seal it before it
// leaves the process.
func Marshal(c *ChildSA) []byte {
	// Room for a typical SA, so the buffer is allocated once.
	w := writer{buf: make([]byte, 0, 512+64*len(c.Policies))}
	w.u8(codecVersion)
	w.str(c.ID)
	w.ike(&c.IKE)
	w.child(&c.Child)
	w.state(&c.In)
	w.state(&c.Out)
	w.uvar(uint64(len(c.Policies)))
	for i := range c.Policies {
		w.policy(&c.Policies[i])
	}
	return w.buf
}

// Unmarshal decodes a ChildSA encoded by Marshal.
func Unmarshal(b []byte) (*ChildSA, error) {
	r := reader{buf: b}
	if v := r.u8(); r.err == nil && v != codecVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrCodec, v, codecVersion)
	}
	c := &ChildSA{ID: r.str()}
	r.ike(&c.IKE)
	r.child(&c.Child)
	r.state(&c.In)
	r.state(&c.Out)
	n := r.count(maxPolicies)
	if n > 0 {
		c.Policies = make([]Policy, n)
		for i := range c.Policies {
			r.policy(&c.Policies[i])
		}
	}
	if r.err == nil && len(r.buf) != 0 {
		r.fail("%d trailing bytes", len(r.buf))
	}
	if r.err != nil {
		return nil, r.err
	}
	return c, nil
}

// MarshalReplay encodes a replay record.
func MarshalReplay(rp *Replay) []byte {
	w := writer{buf: make([]byte, 0, 64+4*len(rp.Bitmap))}
	w.u8(codecVersion)
	w.str(rp.ID)
	w.uvar(rp.OSeq)
	w.uvar(rp.Seq)
	w.uvar(uint64(len(rp.Bitmap)))
	for _, x := range rp.Bitmap {
		w.u32(x)
	}
	w.time(rp.ReadAt)
	return w.buf
}

// UnmarshalReplay decodes a replay record.
func UnmarshalReplay(b []byte) (*Replay, error) {
	r := reader{buf: b}
	if v := r.u8(); r.err == nil && v != codecVersion {
		return nil, fmt.Errorf("%w: replay version %d, want %d", ErrCodec, v, codecVersion)
	}
	rp := &Replay{ID: r.str(), OSeq: r.uvar(), Seq: r.uvar()}
	if n := r.count(maxBitmap); n > 0 {
		rp.Bitmap = make([]uint32, n)
		for i := range rp.Bitmap {
			rp.Bitmap[i] = r.u32()
		}
	}
	rp.ReadAt = r.time()
	if r.err == nil && len(r.buf) != 0 {
		r.fail("%d trailing bytes in replay record", len(r.buf))
	}
	if r.err != nil {
		return nil, r.err
	}
	return rp, nil
}

type writer struct{ buf []byte }

func (w *writer) u8(v uint8)    { w.buf = append(w.buf, v) }
func (w *writer) u16(v uint16)  { w.buf = binary.BigEndian.AppendUint16(w.buf, v) }
func (w *writer) u32(v uint32)  { w.buf = binary.BigEndian.AppendUint32(w.buf, v) }
func (w *writer) u64(v uint64)  { w.buf = binary.BigEndian.AppendUint64(w.buf, v) }
func (w *writer) uvar(v uint64) { w.buf = binary.AppendUvarint(w.buf, v) }
func (w *writer) bytes(b []byte) {
	w.uvar(uint64(len(b)))
	w.buf = append(w.buf, b...)
}
func (w *writer) str(s string) {
	w.uvar(uint64(len(s)))
	w.buf = append(w.buf, s...)
}
func (w *writer) boolean(b bool) {
	if b {
		w.u8(1)
	} else {
		w.u8(0)
	}
}
func (w *writer) time(t time.Time) {
	if t.IsZero() {
		w.u64(0)
		return
	}
	w.u64(uint64(t.UnixNano()))
}

// addr writes what MarshalBinary returns, length-prefixed, without its
// allocation for the common cases: an SA holds some twenty addresses.
func (w *writer) addr(a netip.Addr) {
	switch {
	case !a.IsValid():
		w.uvar(0)
	case a.Is4():
		v := a.As4()
		w.uvar(4)
		w.buf = append(w.buf, v[:]...)
	case a.Zone() == "":
		v := a.As16()
		w.uvar(16)
		w.buf = append(w.buf, v[:]...)
	default:
		b, _ := a.MarshalBinary() // never fails
		w.bytes(b)
	}
}
func (w *writer) addrPort(a netip.AddrPort) {
	w.addr(a.Addr())
	w.u16(a.Port())
}
func (w *writer) prefix(p netip.Prefix) {
	w.addr(p.Addr())
	if p.IsValid() {
		w.u8(uint8(p.Bits()))
	} else {
		w.u8(0xff)
	}
}
func (w *writer) strs(ss []string) {
	w.uvar(uint64(len(ss)))
	for _, s := range ss {
		w.str(s)
	}
}
func (w *writer) algo(a *Algo) {
	if a == nil {
		w.u8(0)
		return
	}
	w.u8(1)
	w.str(a.Name)
	w.bytes(a.Key)
	w.uvar(uint64(a.ICVBits))
	w.uvar(uint64(a.TruncBits))
}
func (w *writer) mark(m *Mark) {
	if m == nil {
		w.u8(0)
		return
	}
	w.u8(1)
	w.u32(m.Value)
	w.u32(m.Mask)
}
func (w *writer) selector(s *Selector) {
	w.prefix(s.Src)
	w.prefix(s.Dst)
	w.u8(s.Proto)
	w.u16(s.SrcPort)
	w.u16(s.DstPort)
}
func (w *writer) state(s *State) {
	w.addr(s.Src)
	w.addr(s.Dst)
	w.u8(s.Proto)
	w.u32(s.SPI)
	w.u8(s.Mode)
	w.u32(s.Reqid)
	w.u8(s.Flags)
	w.u32(s.ExtraFlags)
	w.u32(s.ReplayWindow)
	w.boolean(s.ESN)
	w.algo(s.AEAD)
	w.algo(s.Crypt)
	w.algo(s.Auth)
	if s.Encap == nil {
		w.u8(0)
	} else {
		w.u8(1)
		w.u16(s.Encap.Type)
		w.u16(s.Encap.SrcPort)
		w.u16(s.Encap.DstPort)
		w.addr(s.Encap.OrigAddr)
	}
	w.mark(s.Mark)
	w.u32(s.IfID)
	l := &s.Lifetime
	for _, v := range []uint64{l.SoftBytes, l.HardBytes, l.SoftPackets, l.HardPackets,
		l.SoftAddSeconds, l.HardAddSeconds, l.SoftUseSeconds, l.HardUseSeconds} {
		w.uvar(v)
	}
	w.selector(&s.Selector)
}
func (w *writer) policy(p *Policy) {
	w.u8(uint8(p.Dir))
	w.selector(&p.Selector)
	w.u32(p.Priority)
	w.u8(p.Action)
	w.mark(p.Mark)
	w.u32(p.IfID)
	w.uvar(uint64(len(p.Templates)))
	for _, t := range p.Templates {
		w.addr(t.Src)
		w.addr(t.Dst)
		w.u8(t.Proto)
		w.u8(t.Mode)
		w.u32(t.SPI)
		w.u32(t.Reqid)
		w.boolean(t.Optional)
	}
}
func (w *writer) ike(i *IKE) {
	w.u32(i.UniqueID)
	w.str(i.Name)
	w.str(i.LocalID)
	w.str(i.RemoteID)
	w.addrPort(i.Local)
	w.addrPort(i.Remote)
	w.u64(i.InitiatorSPI)
	w.u64(i.ResponderSPI)
	w.boolean(i.NATRemote)
	w.time(i.EstablishedAt)
}
func (w *writer) child(c *Child) {
	w.str(c.Name)
	w.u32(c.UniqueID)
	w.strs(c.LocalTS)
	w.strs(c.RemoteTS)
	w.time(c.InstalledAt)
	w.time(c.RekeyAt)
}

// reader decodes with bounds checks; the first error sticks and every later
// read returns zero values, so decoding code reads straight through.
type reader struct {
	buf []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrCodec, fmt.Sprintf(format, args...))
	}
}
func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.buf) {
		r.fail("need %d bytes, have %d", n, len(r.buf))
		return nil
	}
	b := r.buf[:n:n]
	r.buf = r.buf[n:]
	return b
}
func (r *reader) u8() uint8 {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}
func (r *reader) u16() uint16 {
	if b := r.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}
func (r *reader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}
func (r *reader) u64() uint64 {
	if b := r.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}
func (r *reader) uvar() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.buf)
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	r.buf = r.buf[n:]
	return v
}
func (r *reader) u32var(what string) uint32 {
	v := r.uvar()
	if v > math.MaxUint32 {
		r.fail("%s %d out of range", what, v)
		return 0
	}
	return uint32(v)
}

// count reads a list length, bounded by max and by the input left: every
// entry takes at least one byte, so a longer claim is false and must not
// size an allocation.
func (r *reader) count(max int) int {
	v := r.uvar()
	if v > uint64(max) {
		r.fail("list of %d entries, limit %d", v, max)
		return 0
	}
	if v > uint64(len(r.buf)) {
		r.fail("list of %d entries in %d bytes", v, len(r.buf))
		return 0
	}
	return int(v)
}
func (r *reader) bytes(max int) []byte {
	n := r.count(max)
	b := r.take(n)
	if n == 0 || b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
func (r *reader) str() string { return string(r.take(r.count(maxString))) }

// algoName reads an algorithm name, sharing the string of the names of
// strongSwan's default proposals instead of allocating one per state.
func (r *reader) algoName() string {
	b := r.take(r.count(maxString))
	switch string(b) {
	case "rfc4106(gcm(aes))":
		return "rfc4106(gcm(aes))"
	case "cbc(aes)":
		return "cbc(aes)"
	case "hmac(sha256)":
		return "hmac(sha256)"
	case "hmac(sha1)":
		return "hmac(sha1)"
	case "rfc7539esp(chacha20,poly1305)":
		return "rfc7539esp(chacha20,poly1305)"
	}
	return string(b)
}

func (r *reader) boolean() bool {
	switch v := r.u8(); v {
	case 0:
		return false
	case 1:
		return true
	default:
		r.fail("boolean byte %d", v)
		return false
	}
}
func (r *reader) present() bool { return r.boolean() }
func (r *reader) time() time.Time {
	v := r.u64()
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(v)).UTC()
}
func (r *reader) addr() netip.Addr {
	// netip.AddrFromSlice copies: no intermediate copy of the bytes.
	b := r.take(r.count(16))
	if r.err != nil {
		return netip.Addr{}
	}
	var a netip.Addr
	switch len(b) {
	case 0:
	case 4, 16:
		a, _ = netip.AddrFromSlice(b)
	default:
		r.fail("address of %d bytes", len(b))
	}
	return a
}
func (r *reader) addrPort() netip.AddrPort {
	a := r.addr()
	p := r.u16()
	if !a.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, p)
}
func (r *reader) prefix() netip.Prefix {
	a := r.addr()
	bits := r.u8()
	if r.err != nil || bits == 0xff || !a.IsValid() {
		return netip.Prefix{}
	}
	if int(bits) > a.BitLen() {
		r.fail("prefix length %d for %s", bits, a)
		return netip.Prefix{}
	}
	return netip.PrefixFrom(a, int(bits))
}
func (r *reader) strs() []string {
	n := r.count(maxList)
	if n == 0 {
		return nil
	}
	out := make([]string, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		out = append(out, r.str())
	}
	return out
}
func (r *reader) algo() *Algo {
	if !r.present() {
		return nil
	}
	return &Algo{Name: r.algoName(), Key: r.bytes(maxKey), ICVBits: r.u32var("ICV length"), TruncBits: r.u32var("truncation length")}
}
func (r *reader) mark() *Mark {
	if !r.present() {
		return nil
	}
	return &Mark{Value: r.u32(), Mask: r.u32()}
}
func (r *reader) selector(s *Selector) {
	s.Src = r.prefix()
	s.Dst = r.prefix()
	s.Proto = r.u8()
	s.SrcPort = r.u16()
	s.DstPort = r.u16()
}
func (r *reader) state(s *State) {
	s.Src = r.addr()
	s.Dst = r.addr()
	s.Proto = r.u8()
	s.SPI = r.u32()
	s.Mode = r.u8()
	s.Reqid = r.u32()
	s.Flags = r.u8()
	s.ExtraFlags = r.u32()
	s.ReplayWindow = r.u32()
	s.ESN = r.boolean()
	s.AEAD = r.algo()
	s.Crypt = r.algo()
	s.Auth = r.algo()
	if r.present() {
		s.Encap = &Encap{Type: r.u16(), SrcPort: r.u16(), DstPort: r.u16(), OrigAddr: r.addr()}
	}
	s.Mark = r.mark()
	s.IfID = r.u32()
	l := &s.Lifetime
	for _, p := range []*uint64{&l.SoftBytes, &l.HardBytes, &l.SoftPackets, &l.HardPackets,
		&l.SoftAddSeconds, &l.HardAddSeconds, &l.SoftUseSeconds, &l.HardUseSeconds} {
		*p = r.uvar()
	}
	r.selector(&s.Selector)
}
func (r *reader) policy(p *Policy) {
	p.Dir = Dir(r.u8())
	r.selector(&p.Selector)
	p.Priority = r.u32()
	p.Action = r.u8()
	p.Mark = r.mark()
	p.IfID = r.u32()
	n := r.count(maxTemplates)
	if n > 0 {
		p.Templates = make([]Template, n)
		for i := range p.Templates {
			t := &p.Templates[i]
			t.Src = r.addr()
			t.Dst = r.addr()
			t.Proto = r.u8()
			t.Mode = r.u8()
			t.SPI = r.u32()
			t.Reqid = r.u32()
			t.Optional = r.boolean()
		}
	}
}
func (r *reader) ike(i *IKE) {
	i.UniqueID = r.u32()
	i.Name = r.str()
	i.LocalID = r.str()
	i.RemoteID = r.str()
	i.Local = r.addrPort()
	i.Remote = r.addrPort()
	i.InitiatorSPI = r.u64()
	i.ResponderSPI = r.u64()
	i.NATRemote = r.boolean()
	i.EstablishedAt = r.time()
}
func (r *reader) child(c *Child) {
	c.Name = r.str()
	c.UniqueID = r.u32()
	c.LocalTS = r.strs()
	c.RemoteTS = r.strs()
	c.InstalledAt = r.time()
	c.RekeyAt = r.time()
}
