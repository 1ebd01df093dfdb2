package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/handoffvpn/handoff/ipsec/sa"
)

// rawSocket is one blocking NETLINK_XFRM socket: the minimal way to talk
// to the kernel, one sendto and one recvfrom per message.
type rawSocket struct {
	fd  int
	seq uint32
	buf []byte
}

// openRaw opens the socket inside ns (the socket stays bound to the
// namespace it was created in).
func openRaw(ns netns.NsHandle) (*rawSocket, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("reading the current namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		return nil, fmt.Errorf("entering the namespace: %w", err)
	}
	fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_XFRM)
	if err := netns.Set(orig); err != nil {
		if serr == nil {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("leaving the namespace: %w", err)
	}
	if serr != nil {
		return nil, fmt.Errorf("opening an XFRM netlink socket: %w", serr)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding the XFRM netlink socket: %w", err)
	}
	tv := unix.Timeval{Sec: 10}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	return &rawSocket{fd: fd, buf: make([]byte, 1<<16)}, nil
}

func (s *rawSocket) Close() error { return unix.Close(s.fd) }

// message frames body as one netlink request of type typ with NLM_F_ACK.
func (s *rawSocket) message(typ uint16, flags uint16, body []byte) []byte {
	s.seq++
	m := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(m[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(m[4:], typ)
	binary.NativeEndian.PutUint16(m[6:], unix.NLM_F_REQUEST|flags)
	binary.NativeEndian.PutUint32(m[8:], s.seq)
	return append(m, body...)
}

// do sends one framed message and returns the first reply's type and
// payload; an NLMSG_ERROR with a non-zero errno is returned as the error.
func (s *rawSocket) do(m []byte) (uint16, []byte, error) {
	if err := unix.Sendto(s.fd, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, nil, fmt.Errorf("sending: %w", err)
	}
	n, _, err := unix.Recvfrom(s.fd, s.buf, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("receiving: %w", err)
	}
	if n < unix.NLMSG_HDRLEN {
		return 0, nil, fmt.Errorf("short netlink reply of %d bytes", n)
	}
	typ := binary.NativeEndian.Uint16(s.buf[4:])
	body := s.buf[unix.NLMSG_HDRLEN:n]
	if typ == unix.NLMSG_ERROR {
		if errno := int32(binary.NativeEndian.Uint32(body)); errno != 0 {
			return typ, nil, unix.Errno(-errno)
		}
	}
	return typ, body, nil
}

// install sends every message and fails on the first refusal.
func (s *rawSocket) install(msgs [][]byte) (time.Duration, error) {
	t0 := time.Now()
	for i, m := range msgs {
		if _, _, err := s.do(m); err != nil {
			return 0, fmt.Errorf("raw message %d of %d: %w", i+1, len(msgs), err)
		}
	}
	return time.Since(t0), nil
}

// installBatched sends the messages perBatch at a time, each batch in one
// sendto with only its last message asking for an acknowledgement: the
// kernel processes a batch in order and reports a failure of any message
// as an error reply even without NLM_F_ACK, so one acknowledgement per
// batch proves every message of it was applied. It shows what a
// dataplane writing in batches could reach.
func (s *rawSocket) installBatched(msgs [][]byte, perBatch int) (time.Duration, error) {
	t0 := time.Now()
	var batch []byte
	for start := 0; start < len(msgs); start += perBatch {
		part := msgs[start:min(start+perBatch, len(msgs))]
		batch = batch[:0]
		for i, m := range part {
			flags := binary.NativeEndian.Uint16(m[6:])
			if i < len(part)-1 {
				flags &^= unix.NLM_F_ACK
			} else {
				flags |= unix.NLM_F_ACK
			}
			off := len(batch)
			batch = append(batch, m...)
			binary.NativeEndian.PutUint16(batch[off+6:], flags)
		}
		if err := unix.Sendto(s.fd, batch, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return 0, fmt.Errorf("sending a batch: %w", err)
		}
		lastSeq := binary.NativeEndian.Uint32(part[len(part)-1][8:])
		for {
			n, _, err := unix.Recvfrom(s.fd, s.buf, 0)
			if err != nil {
				return 0, fmt.Errorf("receiving: %w", err)
			}
			if n < unix.NLMSG_HDRLEN+4 || binary.NativeEndian.Uint16(s.buf[4:]) != unix.NLMSG_ERROR {
				return 0, fmt.Errorf("unexpected netlink reply of %d bytes", n)
			}
			if errno := int32(binary.NativeEndian.Uint32(s.buf[unix.NLMSG_HDRLEN:])); errno != 0 {
				return 0, fmt.Errorf("batch starting at message %d: %w", start+1, unix.Errno(-errno))
			}
			if binary.NativeEndian.Uint32(s.buf[8:]) == lastSeq {
				break
			}
		}
	}
	return time.Since(t0), nil
}

// counts returns the kernel's number of states and of in/out/fwd policies.
func (s *rawSocket) counts() (states, policies int, err error) {
	_, body, err := s.do(s.message(nl.XFRM_MSG_GETSADINFO, 0, make([]byte, 4)))
	if err != nil {
		return 0, 0, fmt.Errorf("reading SAD info: %w", err)
	}
	for _, a := range attrs(body[4:]) {
		if a.typ == 1 && len(a.data) >= 4 { // XFRMA_SAD_CNT
			states = int(binary.NativeEndian.Uint32(a.data))
		}
	}
	_, body, err = s.do(s.message(nl.XFRM_MSG_GETSPDINFO, 0, make([]byte, 4)))
	if err != nil {
		return 0, 0, fmt.Errorf("reading SPD info: %w", err)
	}
	for _, a := range attrs(body[4:]) {
		if a.typ == 1 && len(a.data) >= 12 { // XFRMA_SPD_INFO: incnt outcnt fwdcnt ...
			for i := 0; i < 3; i++ {
				policies += int(binary.NativeEndian.Uint32(a.data[4*i:]))
			}
		}
	}
	return states, policies, nil
}

// setHThresh sets the IPv4 policy hash thresholds (`ip xfrm policy set
// hthresh4 l r`): policies whose prefixes are at least that long are
// hashed instead of searched linearly.
func (s *rawSocket) setHThresh(l, r uint8) error {
	body := make([]byte, 4)
	body = append(body, rtattr(3, []byte{l, r})...) // XFRMA_SPD_IPV4_HTHRESH
	_, _, err := s.do(s.message(nl.XFRM_MSG_NEWSPDINFO, unix.NLM_F_ACK, body))
	if err != nil {
		return fmt.Errorf("setting hthresh4 %d %d: %w", l, r, err)
	}
	return nil
}

// flush removes every state and policy.
func (s *rawSocket) flush() error {
	if _, _, err := s.do(s.message(nl.XFRM_MSG_FLUSHPOLICY, unix.NLM_F_ACK, nil)); err != nil {
		return fmt.Errorf("flushing policies: %w", err)
	}
	if _, _, err := s.do(s.message(nl.XFRM_MSG_FLUSHSA, unix.NLM_F_ACK, []byte{unix.IPPROTO_ESP, 0, 0, 0})); err != nil {
		return fmt.Errorf("flushing states: %w", err)
	}
	return nil
}

type rawAttr struct {
	typ  uint16
	data []byte
}

func attrs(b []byte) []rawAttr {
	var out []rawAttr
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			break
		}
		out = append(out, rawAttr{binary.NativeEndian.Uint16(b[2:]) & 0x3fff, b[4:l]})
		b = b[min(len(b), (l+3)&^3):]
	}
	return out
}

func rtattr(typ uint16, data []byte) []byte {
	l := 4 + len(data)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b, uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], data)
	return b
}

func xaddr(a netip.Addr) nl.XfrmAddress {
	var x nl.XfrmAddress
	v := a.As4()
	copy(x[:], v[:])
	return x
}

func selector(s sa.Selector) nl.XfrmSelector {
	return nl.XfrmSelector{Daddr: xaddr(s.Dst.Addr()), Saddr: xaddr(s.Src.Addr()), Family: unix.AF_INET,
		PrefixlenD: uint8(s.Dst.Bits()), PrefixlenS: uint8(s.Src.Bits()), Proto: s.Proto}
}

// stateMessage encodes XFRM_MSG_NEWSA for st with the same attributes
// ipsec/xfrm sends for it (AEAD, encapsulation, legacy replay state with
// the outbound sequence number, the original add time), written with the
// netlink library's structures, independently of ipsec/xfrm's codec.
func (s *rawSocket) stateMessage(st *sa.State, oseq, seq, bitmap uint32, addTime time.Time) []byte {
	info := nl.XfrmUsersaInfo{Saddr: xaddr(st.Src), Reqid: st.Reqid, Family: unix.AF_INET, Mode: st.Mode,
		ReplayWindow: uint8(st.ReplayWindow), Flags: st.Flags}
	info.Id.Daddr = xaddr(st.Dst)
	info.Id.Spi = nl.Swap32(st.SPI)
	info.Id.Proto = st.Proto
	info.Lft = nl.XfrmLifetimeCfg{SoftByteLimit: st.Lifetime.SoftBytes, HardByteLimit: st.Lifetime.HardBytes,
		SoftPacketLimit: st.Lifetime.SoftPackets, HardPacketLimit: st.Lifetime.HardPackets,
		SoftAddExpiresSeconds: st.Lifetime.SoftAddSeconds, HardAddExpiresSeconds: st.Lifetime.HardAddSeconds}
	body := info.Serialize()
	aead := nl.XfrmAlgoAEAD{AlgKeyLen: uint32(len(st.AEAD.Key) * 8), AlgICVLen: st.AEAD.ICVBits, AlgKey: st.AEAD.Key}
	copy(aead.AlgName[:], st.AEAD.Name)
	body = append(body, rtattr(nl.XFRMA_ALG_AEAD, aead.Serialize())...)
	encap := make([]byte, 24)
	binary.NativeEndian.PutUint16(encap, st.Encap.Type)
	binary.BigEndian.PutUint16(encap[2:], st.Encap.SrcPort)
	binary.BigEndian.PutUint16(encap[4:], st.Encap.DstPort)
	body = append(body, rtattr(nl.XFRMA_ENCAP, encap)...)
	replay := make([]byte, 12)
	binary.NativeEndian.PutUint32(replay, oseq)
	binary.NativeEndian.PutUint32(replay[4:], seq)
	binary.NativeEndian.PutUint32(replay[8:], bitmap)
	body = append(body, rtattr(nl.XFRMA_REPLAY_VAL, replay)...)
	cur := nl.XfrmLifetimeCur{AddTime: uint64(addTime.Unix())}
	body = append(body, rtattr(nl.XFRMA_LTIME_VAL, cur.Serialize())...)
	return s.message(nl.XFRM_MSG_NEWSA, unix.NLM_F_ACK, body)
}

// policyMessage encodes XFRM_MSG_UPDPOLICY for p, as ipsec/xfrm sends it.
func (s *rawSocket) policyMessage(p *sa.Policy) []byte {
	info := nl.XfrmUserpolicyInfo{Sel: selector(p.Selector), Priority: p.Priority, Dir: uint8(p.Dir), Action: p.Action}
	info.Lft = nl.XfrmLifetimeCfg{SoftByteLimit: ^uint64(0), HardByteLimit: ^uint64(0), SoftPacketLimit: ^uint64(0), HardPacketLimit: ^uint64(0)}
	body := info.Serialize()
	var tmpls []byte
	for _, t := range p.Templates {
		ut := nl.XfrmUserTmpl{Family: unix.AF_INET, Saddr: xaddr(t.Src), Reqid: t.Reqid, Mode: t.Mode,
			Aalgos: ^uint32(0), Ealgos: ^uint32(0), Calgos: ^uint32(0)}
		ut.XfrmId.Daddr = xaddr(t.Dst)
		ut.XfrmId.Proto = t.Proto
		tmpls = append(tmpls, ut.Serialize()...)
	}
	body = append(body, rtattr(nl.XFRMA_TMPL, tmpls)...)
	return s.message(nl.XFRM_MSG_UPDPOLICY, unix.NLM_F_ACK, body)
}
