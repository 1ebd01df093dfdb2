package xfrm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Layout of the kernel structures (include/uapi/linux/xfrm.h), x86-64 and
// every other Linux ABI alike: only natural alignment is involved.
const (
	sizeSelector   = 56
	sizeUsersaInfo = 224
	sizeUsersaID   = 24
	sizePolicyInfo = 168
	sizePolicyID   = 64
	sizeUserTmpl   = 64
	sizeEncap      = 24
	sizeReplay     = 12
	sizeReplayESN  = 24
	sizeAeventID   = 48
	sizeLifeCur    = 32
	algoNameLen    = 64

	// Policy directions past fwd are per-socket policies.
	dirMaxPolicy = 2

	// Async event flags (XFRM_AE_*).
	aeRTHR = 1
	aeRVAL = 2
	aeLVAL = 4
	aeETHR = 8
)

var native = binary.NativeEndian

// infinity is XFRM_INF: no byte or packet limit.
const infinity = ^uint64(0)

func putAddr(b []byte, a netip.Addr) {
	if !a.IsValid() {
		return
	}
	if a.Is4() || a.Is4In6() {
		v := a.Unmap().As4()
		copy(b[:4], v[:])
		return
	}
	v := a.As16()
	copy(b[:16], v[:])
}

func getAddr(b []byte, family uint16) (netip.Addr, error) {
	switch family {
	case unix.AF_INET:
		return netip.AddrFrom4([4]byte(b[:4])), nil
	case unix.AF_INET6:
		return netip.AddrFrom16([16]byte(b[:16])), nil
	case 0:
		return netip.Addr{}, nil
	}
	return netip.Addr{}, fmt.Errorf("%w: address family %d", ErrMalformed, family)
}

func family(a netip.Addr) uint16 {
	if a.Is4() || a.Is4In6() {
		return unix.AF_INET
	}
	if a.IsValid() {
		return unix.AF_INET6
	}
	return 0
}

// putSelector encodes a selector. A selector without valid prefixes (a
// tunnel-mode state's, which strongSwan leaves empty) keeps family 0.
func putSelector(b []byte, s *sa.Selector) {
	if s.Dst.IsValid() {
		putAddr(b[0:16], s.Dst.Addr())
		b[42] = uint8(s.Dst.Bits())
	}
	if s.Src.IsValid() {
		putAddr(b[16:32], s.Src.Addr())
		b[43] = uint8(s.Src.Bits())
	}
	if s.DstPort != 0 {
		binary.BigEndian.PutUint16(b[32:], s.DstPort)
		binary.BigEndian.PutUint16(b[34:], 0xffff)
	}
	if s.SrcPort != 0 {
		binary.BigEndian.PutUint16(b[36:], s.SrcPort)
		binary.BigEndian.PutUint16(b[38:], 0xffff)
	}
	fam := family(s.Dst.Addr())
	if fam == 0 {
		fam = family(s.Src.Addr())
	}
	native.PutUint16(b[40:], fam)
	b[44] = s.Proto
}

func getSelector(b []byte, unsupported *[]string) (sa.Selector, error) {
	var s sa.Selector
	fam := native.Uint16(b[40:])
	s.Proto = b[44]
	dport, dmask := binary.BigEndian.Uint16(b[32:]), binary.BigEndian.Uint16(b[34:])
	sport, smask := binary.BigEndian.Uint16(b[36:]), binary.BigEndian.Uint16(b[38:])
	for _, pm := range [][2]uint16{{dport, dmask}, {sport, smask}} {
		if (pm[1] != 0 && pm[1] != 0xffff) || (pm[1] == 0 && pm[0] != 0) {
			*unsupported = append(*unsupported, fmt.Sprintf("selector port %d with mask %#x", pm[0], pm[1]))
		}
	}
	if dmask != 0 {
		s.DstPort = dport
	}
	if smask != 0 {
		s.SrcPort = sport
	}
	if ifindex := native.Uint32(b[48:]); ifindex != 0 {
		*unsupported = append(*unsupported, fmt.Sprintf("selector ifindex %d", ifindex))
	}
	if fam == 0 {
		return s, nil
	}
	dst, err := getAddr(b[0:16], fam)
	if err != nil {
		return s, err
	}
	src, err := getAddr(b[16:32], fam)
	if err != nil {
		return s, err
	}
	if int(b[42]) > dst.BitLen() || int(b[43]) > src.BitLen() {
		return s, fmt.Errorf("%w: selector prefix lengths %d/%d", ErrMalformed, b[43], b[42])
	}
	s.Dst = netip.PrefixFrom(dst, int(b[42]))
	s.Src = netip.PrefixFrom(src, int(b[43]))
	return s, nil
}

func putLifetime(b []byte, l *sa.Lifetime) {
	// A zero byte or packet limit would expire the state at its first
	// packet; the model's zero means "none", which the kernel spells
	// XFRM_INF.
	inf := func(v uint64) uint64 {
		if v == 0 {
			return infinity
		}
		return v
	}
	for i, v := range []uint64{inf(l.SoftBytes), inf(l.HardBytes), inf(l.SoftPackets), inf(l.HardPackets),
		l.SoftAddSeconds, l.HardAddSeconds, l.SoftUseSeconds, l.HardUseSeconds} {
		native.PutUint64(b[8*i:], v)
	}
}

func getLifetime(b []byte) sa.Lifetime {
	u := func(i int) uint64 { return native.Uint64(b[8*i:]) }
	return sa.Lifetime{SoftBytes: u(0), HardBytes: u(1), SoftPackets: u(2), HardPackets: u(3),
		SoftAddSeconds: u(4), HardAddSeconds: u(5), SoftUseSeconds: u(6), HardUseSeconds: u(7)}
}

func algoName(b []byte) string {
	if i := bytes.IndexByte(b[:algoNameLen], 0); i >= 0 {
		return string(b[:i])
	}
	return string(b[:algoNameLen])
}

// encodeAlgo encodes xfrm_algo (extra == nil) or xfrm_algo_auth /
// xfrm_algo_aead (extra holds the truncation or ICV length).
func encodeAlgo(a *sa.Algo, extra *uint32) ([]byte, error) {
	if len(a.Name) >= algoNameLen {
		return nil, fmt.Errorf("algorithm name %q too long", a.Name)
	}
	hdr := algoNameLen + 4
	if extra != nil {
		hdr += 4
	}
	b := make([]byte, hdr+len(a.Key))
	copy(b, a.Name)
	native.PutUint32(b[algoNameLen:], uint32(len(a.Key)*8))
	if extra != nil {
		native.PutUint32(b[algoNameLen+4:], *extra)
	}
	copy(b[hdr:], a.Key)
	return b, nil
}

func decodeAlgo(b []byte, withExtra bool) (*sa.Algo, uint32, error) {
	hdr := algoNameLen + 4
	if withExtra {
		hdr += 4
	}
	if len(b) < hdr {
		return nil, 0, fmt.Errorf("%w: algorithm attribute of %d bytes", ErrMalformed, len(b))
	}
	bits := native.Uint32(b[algoNameLen:])
	n := int((bits + 7) / 8)
	if len(b) < hdr+n {
		return nil, 0, fmt.Errorf("%w: %d-bit key in %d bytes", ErrMalformed, bits, len(b)-hdr)
	}
	a := &sa.Algo{Name: algoName(b), Key: append([]byte(nil), b[hdr:hdr+n]...)}
	var extra uint32
	if withExtra {
		extra = native.Uint32(b[algoNameLen+4:])
	}
	return a, extra, nil
}

func encodeReplay(s *sa.State, r *Replay) ([]byte, uint16) {
	if esnReplay(s) {
		words := bitmapWords(s.ReplayWindow)
		if words == 0 {
			words = 1
		}
		b := make([]byte, sizeReplayESN+4*words)
		native.PutUint32(b[0:], uint32(words))
		native.PutUint32(b[4:], uint32(r.OSeq))
		native.PutUint32(b[8:], uint32(r.Seq))
		native.PutUint32(b[12:], uint32(r.OSeq>>32))
		native.PutUint32(b[16:], uint32(r.Seq>>32))
		native.PutUint32(b[20:], s.ReplayWindow)
		for i := 0; i < words && i < len(r.Bitmap); i++ {
			native.PutUint32(b[sizeReplayESN+4*i:], r.Bitmap[i])
		}
		return b, nl.XFRMA_REPLAY_ESN_VAL
	}
	b := make([]byte, sizeReplay)
	native.PutUint32(b[0:], uint32(r.OSeq))
	native.PutUint32(b[4:], uint32(r.Seq))
	if len(r.Bitmap) > 0 {
		native.PutUint32(b[8:], r.Bitmap[0])
	}
	return b, nl.XFRMA_REPLAY_VAL
}

func decodeReplayESN(b []byte) (Replay, uint32, error) {
	if len(b) < sizeReplayESN {
		return Replay{}, 0, fmt.Errorf("%w: ESN replay attribute of %d bytes", ErrMalformed, len(b))
	}
	words := native.Uint32(b[0:])
	if uint64(len(b)) < sizeReplayESN+4*uint64(words) {
		return Replay{}, 0, fmt.Errorf("%w: ESN bitmap of %d words in %d bytes", ErrMalformed, words, len(b))
	}
	r := Replay{
		OSeq: uint64(native.Uint32(b[12:]))<<32 | uint64(native.Uint32(b[4:])),
		Seq:  uint64(native.Uint32(b[16:]))<<32 | uint64(native.Uint32(b[8:])),
	}
	for i := 0; i < int(words); i++ {
		r.Bitmap = append(r.Bitmap, native.Uint32(b[sizeReplayESN+4*i:]))
	}
	return r, native.Uint32(b[20:]), nil
}

func decodeReplay(b []byte) (Replay, error) {
	if len(b) < sizeReplay {
		return Replay{}, fmt.Errorf("%w: replay attribute of %d bytes", ErrMalformed, len(b))
	}
	return Replay{OSeq: uint64(native.Uint32(b[0:])), Seq: uint64(native.Uint32(b[4:])), Bitmap: []uint32{native.Uint32(b[8:])}}, nil
}

func markAttr(m *sa.Mark) []byte {
	b := make([]byte, 8)
	native.PutUint32(b[0:], m.Value)
	native.PutUint32(b[4:], m.Mask)
	return b
}

func u32Attr(v uint32) []byte {
	b := make([]byte, 4)
	native.PutUint32(b, v)
	return b
}

// rawAttr is one received netlink attribute.
type rawAttr struct {
	Type  uint16
	Value []byte
}

// parseAttrs splits a netlink attribute list. Unlike nl.ParseRouteAttr it
// never slices past the buffer when the last attribute lacks its padding.
func parseAttrs(b []byte) ([]rawAttr, error) {
	var out []rawAttr
	for len(b) >= 4 {
		n := int(native.Uint16(b[0:]))
		if n < 4 || n > len(b) {
			return nil, fmt.Errorf("attribute length %d with %d bytes left", n, len(b))
		}
		out = append(out, rawAttr{Type: native.Uint16(b[2:]) & 0x3fff, Value: b[4:n]})
		aligned := (n + 3) &^ 3
		if aligned > len(b) {
			aligned = len(b)
		}
		b = b[aligned:]
	}
	return out, nil
}

// attr is one netlink attribute to send.
type attr struct {
	typ  int
	data []byte
}

func serializeAttrs(attrs []attr) []byte {
	var b []byte
	for _, a := range attrs {
		b = append(b, nl.NewRtAttr(a.typ, a.data).Serialize()...)
	}
	return b
}

// encodeState builds the body of XFRM_MSG_NEWSA / XFRM_MSG_UPDSA: the
// xfrm_usersa_info header followed by attributes.
func encodeState(s *State) ([]byte, error) {
	st := &s.State
	if err := st.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, sizeUsersaInfo)
	putSelector(b[0:sizeSelector], &st.Selector)
	putAddr(b[56:72], st.Dst)
	binary.BigEndian.PutUint32(b[72:], st.SPI)
	b[76] = st.Proto
	putAddr(b[80:96], st.Src)
	putLifetime(b[96:160], &st.Lifetime)
	native.PutUint32(b[208:], st.Reqid)
	native.PutUint16(b[212:], family(st.Dst))
	b[214] = st.Mode
	flags := st.Flags &^ nl.XFRM_STATE_ESN
	if st.ESN {
		flags |= nl.XFRM_STATE_ESN
	}
	b[216] = flags
	esn := esnReplay(st)
	if !esn {
		if st.ReplayWindow > 255 {
			return nil, fmt.Errorf("state %s: replay window %d without ESN attribute", s.Key(), st.ReplayWindow)
		}
		b[215] = uint8(st.ReplayWindow)
	}
	var attrs []attr
	if st.AEAD != nil {
		data, err := encodeAlgo(st.AEAD, &st.AEAD.ICVBits)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, attr{nl.XFRMA_ALG_AEAD, data})
	}
	if st.Crypt != nil {
		data, err := encodeAlgo(st.Crypt, nil)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, attr{nl.XFRMA_ALG_CRYPT, data})
	}
	if st.Auth != nil {
		// Without a truncation length the kernel picks the algorithm's
		// default, as it does for XFRMA_ALG_AUTH.
		var data []byte
		var err error
		typ := nl.XFRMA_ALG_AUTH
		if st.Auth.TruncBits != 0 {
			typ = nl.XFRMA_ALG_AUTH_TRUNC
			data, err = encodeAlgo(st.Auth, &st.Auth.TruncBits)
		} else {
			data, err = encodeAlgo(st.Auth, nil)
		}
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, attr{typ, data})
	}
	if st.Encap != nil {
		e := make([]byte, sizeEncap)
		native.PutUint16(e[0:], st.Encap.Type)
		binary.BigEndian.PutUint16(e[2:], st.Encap.SrcPort)
		binary.BigEndian.PutUint16(e[4:], st.Encap.DstPort)
		putAddr(e[8:24], st.Encap.OrigAddr)
		attrs = append(attrs, attr{nl.XFRMA_ENCAP, e})
	}
	if st.Mark != nil {
		attrs = append(attrs, attr{nl.XFRMA_MARK, markAttr(st.Mark)})
	}
	if st.IfID != 0 {
		attrs = append(attrs, attr{nl.XFRMA_IF_ID, u32Attr(st.IfID)})
	}
	if st.ExtraFlags != 0 {
		attrs = append(attrs, attr{nl.XFRMA_SA_EXTRA_FLAGS, u32Attr(st.ExtraFlags)})
	}
	rp, typ := encodeReplay(st, &s.Replay)
	attrs = append(attrs, attr{int(typ), rp})
	if !s.AddTime.IsZero() {
		// Carry the original add time over, so the copy expires when the
		// original would have.
		cur := make([]byte, sizeLifeCur)
		native.PutUint64(cur[16:], uint64(s.AddTime.Unix()))
		attrs = append(attrs, attr{nl.XFRMA_LTIME_VAL, cur})
	}
	return append(b, serializeAttrs(attrs)...), nil
}

// decodeState reads an xfrm_usersa_info message (a NEWSA from a dump, a
// GETSA reply or a notification).
func decodeState(m []byte) (*State, error) {
	if len(m) < sizeUsersaInfo {
		return nil, fmt.Errorf("%w: state message of %d bytes", ErrMalformed, len(m))
	}
	s := &State{}
	st := &s.State
	fam := native.Uint16(m[212:])
	var err error
	if st.Selector, err = getSelector(m[0:sizeSelector], &s.Unsupported); err != nil {
		return nil, err
	}
	if st.Dst, err = getAddr(m[56:72], fam); err != nil {
		return nil, err
	}
	if st.Src, err = getAddr(m[80:96], fam); err != nil {
		return nil, err
	}
	st.SPI = binary.BigEndian.Uint32(m[72:])
	st.Proto = m[76]
	st.Lifetime = getLifetime(m[96:160])
	s.Bytes = native.Uint64(m[160:])
	s.Packets = native.Uint64(m[168:])
	if t := native.Uint64(m[176:]); t != 0 && t < 1<<62 {
		s.AddTime = time.Unix(int64(t), 0).UTC()
	}
	st.Reqid = native.Uint32(m[208:])
	st.Mode = m[214]
	st.ReplayWindow = uint32(m[215])
	st.Flags = m[216]
	st.ESN = st.Flags&nl.XFRM_STATE_ESN != 0
	attrs, err := parseAttrs(m[sizeUsersaInfo:])
	if err != nil {
		return nil, fmt.Errorf("%w: state %08x attributes: %w", ErrMalformed, st.SPI, err)
	}
	var authTrunc, auth *sa.Algo
	for _, a := range attrs {
		v := a.Value
		switch a.Type {
		case nl.XFRMA_ALG_AEAD:
			a, icv, err := decodeAlgo(v, true)
			if err != nil {
				return nil, err
			}
			a.ICVBits = icv
			st.AEAD = a
		case nl.XFRMA_ALG_CRYPT:
			if st.Crypt, _, err = decodeAlgo(v, false); err != nil {
				return nil, err
			}
		case nl.XFRMA_ALG_AUTH:
			if auth, _, err = decodeAlgo(v, false); err != nil {
				return nil, err
			}
		case nl.XFRMA_ALG_AUTH_TRUNC:
			var trunc uint32
			if authTrunc, trunc, err = decodeAlgo(v, true); err != nil {
				return nil, err
			}
			authTrunc.TruncBits = trunc
		case nl.XFRMA_ENCAP:
			if len(v) < sizeEncap {
				return nil, fmt.Errorf("%w: encap attribute of %d bytes", ErrMalformed, len(v))
			}
			e := &sa.Encap{Type: native.Uint16(v[0:]), SrcPort: binary.BigEndian.Uint16(v[2:]), DstPort: binary.BigEndian.Uint16(v[4:])}
			if !bytes.Equal(v[8:24], make([]byte, 16)) {
				if e.OrigAddr, err = getAddr(v[8:24], fam); err != nil {
					return nil, err
				}
			}
			st.Encap = e
		case nl.XFRMA_MARK:
			if len(v) < 8 {
				return nil, fmt.Errorf("%w: mark attribute of %d bytes", ErrMalformed, len(v))
			}
			st.Mark = &sa.Mark{Value: native.Uint32(v[0:]), Mask: native.Uint32(v[4:])}
		case nl.XFRMA_IF_ID:
			if len(v) < 4 {
				return nil, fmt.Errorf("%w: if_id attribute of %d bytes", ErrMalformed, len(v))
			}
			st.IfID = native.Uint32(v)
		case nl.XFRMA_SA_EXTRA_FLAGS:
			if len(v) < 4 {
				return nil, fmt.Errorf("%w: extra flags attribute of %d bytes", ErrMalformed, len(v))
			}
			st.ExtraFlags = native.Uint32(v)
		case nl.XFRMA_REPLAY_VAL:
			if s.Replay, err = decodeReplay(v); err != nil {
				return nil, err
			}
		case nl.XFRMA_REPLAY_ESN_VAL:
			var window uint32
			if s.Replay, window, err = decodeReplayESN(v); err != nil {
				return nil, err
			}
			st.ReplayWindow = window
		case nl.XFRMA_LTIME_VAL, nl.XFRMA_LASTUSED, nl.XFRMA_SRCADDR, nl.XFRMA_PAD,
			nl.XFRMA_REPLAY_THRESH, nl.XFRMA_ETIMER_THRESH, nl.XFRMA_SA_DIR:
			// Counters, padding and settings a copy need not carry; the
			// direction is implied by where the state sits in a CHILD_SA.
		default:
			s.Unsupported = append(s.Unsupported, attrName(a.Type))
		}
	}
	switch {
	case authTrunc != nil:
		st.Auth = authTrunc
	case auth != nil:
		st.Auth = auth
	}
	return s, nil
}

func attrName(t uint16) string {
	names := map[uint16]string{
		nl.XFRMA_ALG_COMP: "XFRMA_ALG_COMP", nl.XFRMA_SEC_CTX: "XFRMA_SEC_CTX", nl.XFRMA_COADDR: "XFRMA_COADDR",
		nl.XFRMA_TFCPAD: "XFRMA_TFCPAD", nl.XFRMA_OFFLOAD_DEV: "XFRMA_OFFLOAD_DEV", nl.XFRMA_SET_MARK: "XFRMA_SET_MARK",
		nl.XFRMA_SET_MARK_MASK: "XFRMA_SET_MARK_MASK", nl.XFRMA_POLICY_TYPE: "XFRMA_POLICY_TYPE",
		nl.XFRMA_MTIMER_THRESH: "XFRMA_MTIMER_THRESH", nl.XFRMA_NAT_KEEPALIVE_INTERVAL: "XFRMA_NAT_KEEPALIVE_INTERVAL",
		nl.XFRMA_SA_PCPU: "XFRMA_SA_PCPU",
	}
	if n, ok := names[t]; ok {
		return n
	}
	return fmt.Sprintf("attribute %d", t)
}

// encodeStateID builds xfrm_usersa_id with the mark: the lookup key of
// XFRM_MSG_GETSA and XFRM_MSG_DELSA.
func encodeStateID(k Key) []byte {
	b := make([]byte, sizeUsersaID)
	putAddr(b[0:16], k.Dst)
	binary.BigEndian.PutUint32(b[16:], k.SPI)
	native.PutUint16(b[20:], family(k.Dst))
	b[22] = k.Proto
	if k.Mark.Mask != 0 {
		b = append(b, serializeAttrs([]attr{{nl.XFRMA_MARK, markAttr(&k.Mark)}})...)
	}
	return b
}

// encodeAE builds XFRM_MSG_NEWAE: new replay counters and/or event
// thresholds for an existing state.
func encodeAE(k Key, s *sa.State, r *Replay, th *Thresholds, jiffiesPerSecond uint32) []byte {
	b := make([]byte, sizeAeventID)
	putAddr(b[0:16], k.Dst)
	binary.BigEndian.PutUint32(b[16:], k.SPI)
	native.PutUint16(b[20:], family(k.Dst))
	b[22] = k.Proto
	putAddr(b[24:40], s.Src)
	native.PutUint32(b[44:], s.Reqid)
	var attrs []attr
	var flags uint32
	if r != nil {
		data, typ := encodeReplay(s, r)
		attrs = append(attrs, attr{int(typ), data})
		flags |= aeRVAL
	}
	if th != nil {
		attrs = append(attrs, attr{nl.XFRMA_REPLAY_THRESH, u32Attr(th.Packets)})
		flags |= aeRTHR
		if th.Timer > 0 {
			// The kernel takes this in jiffies (it reports it back in
			// tenths of a second).
			j := uint64(th.Timer) * uint64(jiffiesPerSecond) / uint64(time.Second)
			if j == 0 {
				j = 1
			}
			if j > 1<<31 {
				j = 1 << 31
			}
			attrs = append(attrs, attr{nl.XFRMA_ETIMER_THRESH, u32Attr(uint32(j))})
			flags |= aeETHR
		}
	}
	native.PutUint32(b[40:], flags)
	if k.Mark.Mask != 0 {
		attrs = append(attrs, attr{nl.XFRMA_MARK, markAttr(&k.Mark)})
	}
	return append(b, serializeAttrs(attrs)...)
}

// decodeAE reads an XFRM_MSG_NEWAE (async event or GETAE reply).
func decodeAE(m []byte) (ReplayEvent, uint32, error) {
	if len(m) < sizeAeventID {
		return ReplayEvent{}, 0, fmt.Errorf("%w: async event of %d bytes", ErrMalformed, len(m))
	}
	fam := native.Uint16(m[20:])
	dst, err := getAddr(m[0:16], fam)
	if err != nil {
		return ReplayEvent{}, 0, err
	}
	src, err := getAddr(m[24:40], fam)
	if err != nil {
		return ReplayEvent{}, 0, err
	}
	ev := ReplayEvent{
		Key:   Key{Dst: dst, SPI: binary.BigEndian.Uint32(m[16:]), Proto: m[22]},
		Src:   src,
		Cause: native.Uint32(m[40:]),
		Reqid: native.Uint32(m[44:]),
	}
	var etimer uint32
	attrs, err := parseAttrs(m[sizeAeventID:])
	if err != nil {
		return ReplayEvent{}, 0, fmt.Errorf("%w: async event attributes: %w", ErrMalformed, err)
	}
	for _, a := range attrs {
		switch a.Type {
		case nl.XFRMA_REPLAY_VAL:
			if ev.Replay, err = decodeReplay(a.Value); err != nil {
				return ReplayEvent{}, 0, err
			}
		case nl.XFRMA_REPLAY_ESN_VAL:
			if ev.Replay, _, err = decodeReplayESN(a.Value); err != nil {
				return ReplayEvent{}, 0, err
			}
		case nl.XFRMA_MARK:
			if len(a.Value) >= 8 {
				ev.Key.Mark = sa.Mark{Value: native.Uint32(a.Value[0:]), Mask: native.Uint32(a.Value[4:])}
				ev.Key.Mark.Value &= ev.Key.Mark.Mask
			}
		case nl.XFRMA_ETIMER_THRESH:
			if len(a.Value) >= 4 {
				etimer = native.Uint32(a.Value)
			}
		}
	}
	return ev, etimer, nil
}

func putTemplate(b []byte, t *sa.Template) {
	putAddr(b[0:16], t.Dst)
	binary.BigEndian.PutUint32(b[16:], t.SPI)
	b[20] = t.Proto
	fam := family(t.Dst)
	if fam == 0 {
		fam = family(t.Src)
	}
	native.PutUint16(b[24:], fam)
	putAddr(b[28:44], t.Src)
	native.PutUint32(b[44:], t.Reqid)
	b[48] = t.Mode
	if t.Optional {
		b[50] = 1
	}
	// Any algorithm, as strongSwan installs them.
	native.PutUint32(b[52:], ^uint32(0))
	native.PutUint32(b[56:], ^uint32(0))
	native.PutUint32(b[60:], ^uint32(0))
}

func getTemplate(b []byte) (sa.Template, error) {
	fam := native.Uint16(b[24:])
	var t sa.Template
	var err error
	if t.Dst, err = getAddr(b[0:16], fam); err != nil {
		return t, err
	}
	if t.Src, err = getAddr(b[28:44], fam); err != nil {
		return t, err
	}
	t.SPI = binary.BigEndian.Uint32(b[16:])
	t.Proto = b[20]
	t.Reqid = native.Uint32(b[44:])
	t.Mode = b[48]
	t.Optional = b[50] != 0
	return t, nil
}

// encodePolicy builds the body of XFRM_MSG_UPDPOLICY.
func encodePolicy(p *sa.Policy) ([]byte, error) {
	if !p.Selector.Src.IsValid() || !p.Selector.Dst.IsValid() {
		return nil, fmt.Errorf("policy %s: selector without source or destination", p.Dir)
	}
	if p.Dir > dirMaxPolicy {
		return nil, fmt.Errorf("policy direction %d is not in, out or fwd", p.Dir)
	}
	b := make([]byte, sizePolicyInfo)
	putSelector(b[0:sizeSelector], &p.Selector)
	putLifetime(b[56:120], &sa.Lifetime{})
	native.PutUint32(b[152:], p.Priority)
	b[160] = uint8(p.Dir)
	b[161] = p.Action
	var attrs []attr
	if len(p.Templates) > 0 {
		t := make([]byte, sizeUserTmpl*len(p.Templates))
		for i := range p.Templates {
			putTemplate(t[i*sizeUserTmpl:(i+1)*sizeUserTmpl], &p.Templates[i])
		}
		attrs = append(attrs, attr{nl.XFRMA_TMPL, t})
	}
	if p.Mark != nil {
		attrs = append(attrs, attr{nl.XFRMA_MARK, markAttr(p.Mark)})
	}
	if p.IfID != 0 {
		attrs = append(attrs, attr{nl.XFRMA_IF_ID, u32Attr(p.IfID)})
	}
	return append(b, serializeAttrs(attrs)...), nil
}

// encodePolicyID builds the body of XFRM_MSG_DELPOLICY / GETPOLICY.
func encodePolicyID(p *sa.Policy) []byte {
	b := make([]byte, sizePolicyID)
	putSelector(b[0:sizeSelector], &p.Selector)
	b[60] = uint8(p.Dir)
	var attrs []attr
	if p.Mark != nil {
		attrs = append(attrs, attr{nl.XFRMA_MARK, markAttr(p.Mark)})
	}
	if p.IfID != 0 {
		attrs = append(attrs, attr{nl.XFRMA_IF_ID, u32Attr(p.IfID)})
	}
	return append(b, serializeAttrs(attrs)...)
}

// decodePolicy reads an xfrm_userpolicy_info message. It returns nil for
// per-socket policies.
func decodePolicy(m []byte) (*Policy, error) {
	if len(m) < sizePolicyInfo {
		return nil, fmt.Errorf("%w: policy message of %d bytes", ErrMalformed, len(m))
	}
	dir := m[160]
	if dir > dirMaxPolicy {
		return nil, nil
	}
	p := &Policy{}
	var err error
	if p.Selector, err = getSelector(m[0:sizeSelector], &p.Unsupported); err != nil {
		return nil, err
	}
	p.Priority = native.Uint32(m[152:])
	p.Index = native.Uint32(m[156:])
	p.Dir = sa.Dir(dir)
	p.Action = m[161]
	if f := m[162]; f != 0 {
		p.Unsupported = append(p.Unsupported, fmt.Sprintf("policy flags %#x", f))
	}
	attrs, err := parseAttrs(m[sizePolicyInfo:])
	if err != nil {
		return nil, fmt.Errorf("%w: policy attributes: %w", ErrMalformed, err)
	}
	for _, a := range attrs {
		v := a.Value
		switch a.Type {
		case nl.XFRMA_TMPL:
			if len(v)%sizeUserTmpl != 0 {
				return nil, fmt.Errorf("%w: template attribute of %d bytes", ErrMalformed, len(v))
			}
			for i := 0; i+sizeUserTmpl <= len(v); i += sizeUserTmpl {
				t, err := getTemplate(v[i : i+sizeUserTmpl])
				if err != nil {
					return nil, err
				}
				p.Templates = append(p.Templates, t)
			}
		case nl.XFRMA_MARK:
			if len(v) < 8 {
				return nil, fmt.Errorf("%w: mark attribute of %d bytes", ErrMalformed, len(v))
			}
			p.Mark = &sa.Mark{Value: native.Uint32(v[0:]), Mask: native.Uint32(v[4:])}
		case nl.XFRMA_IF_ID:
			if len(v) < 4 {
				return nil, fmt.Errorf("%w: if_id attribute of %d bytes", ErrMalformed, len(v))
			}
			p.IfID = native.Uint32(v)
		case nl.XFRMA_POLICY_TYPE:
			// 0 is the main policy type, the only one handled.
			if len(v) >= 1 && v[0] != 0 {
				p.Unsupported = append(p.Unsupported, fmt.Sprintf("policy type %d", v[0]))
			}
		case nl.XFRMA_PAD, nl.XFRMA_LASTUSED:
		default:
			p.Unsupported = append(p.Unsupported, attrName(a.Type))
		}
	}
	sort.Strings(p.Unsupported)
	return p, nil
}
