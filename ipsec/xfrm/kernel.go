package xfrm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// kernel is the XFRM netlink surface the Handle needs. Errors are the
// kernel's errnos (unix.EEXIST, unix.ENOENT, unix.ESRCH, ...); dumps
// interrupted by concurrent changes return what they read with
// errInterrupted.
type kernel interface {
	dumpStates() ([]*State, error)
	getState(k Key) (*State, error)
	// addState sends XFRM_MSG_NEWSA, or XFRM_MSG_UPDSA when update is set.
	addState(s *State, update bool) error
	delState(k Key) error
	// newAE sets a state's replay counters and/or event thresholds.
	newAE(k Key, s *sa.State, r *Replay, th *Thresholds, hz uint32) error
	// getAE returns a state's replay counters and its event timer
	// threshold as the kernel reports it (tenths of a second).
	getAE(k Key, s *sa.State) (ReplayEvent, uint32, error)
	dumpPolicies() ([]*Policy, error)
	updPolicy(p *sa.Policy) error
	// apply sends reqs in order and returns the kernel's verdict on each
	// (nil: applied). A non-nil error means the exchange itself broke:
	// the verdicts of the requests it did not reach are nil and unknown.
	apply(reqs []request) ([]error, error)
	delPolicy(p *sa.Policy) error
	// subscribeAE opens a listener for async replay events.
	subscribeAE() (aeSource, error)
	close() error
}

// aeSource delivers async replay events until closed.
type aeSource interface {
	next() ([]ReplayEvent, error)
	close() error
}

var errInterrupted = errors.New("dump interrupted")

// nlKernel speaks XFRM netlink over one persistent socket (UML showed a
// socket per call costs 4x in install rate).
type nlKernel struct {
	ns  netns.NsHandle
	sh  *nl.SocketHandle
	pid uint32
}

func openNetlink(ns netns.NsHandle) (*nlKernel, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_XFRM)
	if err != nil {
		return nil, fmt.Errorf("opening XFRM netlink socket: %w", err)
	}
	// No call may block forever on a wedged kernel.
	tv := unix.Timeval{Sec: 10}
	if err := s.SetReceiveTimeout(&tv); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.SetSendTimeout(&tv); err != nil {
		s.Close()
		return nil, err
	}
	// Ask for the kernel's explanation with errors; old kernels lack it.
	_ = s.SetExtAck(true)
	// A dump of 100k states must not overrun the receive buffer.
	_ = s.SetReceiveBufferSize(4<<20, false)
	pid, err := s.GetPid()
	if err != nil {
		s.Close()
		return nil, err
	}
	return &nlKernel{ns: ns, sh: &nl.SocketHandle{Socket: s}, pid: pid}, nil
}

func (k *nlKernel) close() error {
	k.sh.Close()
	return nil
}

func (k *nlKernel) exec(typ, flags int, body []byte, resType uint16) ([][]byte, error) {
	req := nl.NewNetlinkRequest(typ, flags)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_XFRM: k.sh}
	// Some replies (XFRM_MSG_GETAE's) carry the request's own nlmsg_pid in
	// their header, and replies for another port are skipped.
	req.Pid = k.pid
	req.AddRawData(body)
	var out [][]byte
	err := req.ExecuteIter(unix.NETLINK_XFRM, resType, func(m []byte) bool {
		out = append(out, append([]byte(nil), m...))
		return true
	})
	if errors.Is(err, nl.ErrDumpInterrupted) {
		return out, errInterrupted
	}
	return out, err
}

func (k *nlKernel) dumpStates() ([]*State, error) {
	msgs, err := k.exec(nl.XFRM_MSG_GETSA, unix.NLM_F_DUMP, nil, nl.XFRM_MSG_NEWSA)
	if err != nil && !errors.Is(err, errInterrupted) {
		return nil, err
	}
	out := make([]*State, 0, len(msgs))
	for _, m := range msgs {
		s, derr := decodeState(m)
		if derr != nil {
			return nil, derr
		}
		out = append(out, s)
	}
	return out, err
}

func (k *nlKernel) getState(key Key) (*State, error) {
	msgs, err := k.exec(nl.XFRM_MSG_GETSA, 0, encodeStateID(key), nl.XFRM_MSG_NEWSA)
	if err != nil {
		return nil, err
	}
	if len(msgs) == 0 {
		return nil, unix.ENOENT
	}
	return decodeState(msgs[0])
}

func (k *nlKernel) addState(s *State, update bool) error {
	body, err := encodeState(s)
	if err != nil {
		return err
	}
	typ := nl.XFRM_MSG_NEWSA
	if update {
		typ = nl.XFRM_MSG_UPDSA
	}
	_, err = k.exec(typ, unix.NLM_F_ACK, body, 0)
	return err
}

// batchMessages is how many messages apply sends per system call: about
// 30 KB of states, well inside the socket's send buffer, and at most as
// many error replies as the 4 MB receive buffer can always take.
const batchMessages = 64

// apply sends reqs batchMessages to a sendto. Only the last message of a
// batch asks for an acknowledgement: the kernel processes a batch in
// order, goes on after a failed message, and reports every failure as an
// error reply whether or not it was asked to, so the acknowledgement of
// the last message means every earlier verdict has arrived.
func (k *nlKernel) apply(reqs []request) ([]error, error) {
	verdicts := make([]error, len(reqs))
	s := k.sh.Socket
	s.Lock()
	defer s.Unlock()
	var buf []byte
	for start := 0; start < len(reqs); start += batchMessages {
		part := reqs[start:min(start+batchMessages, len(reqs))]
		n := uint32(len(part))
		first := atomic.AddUint32(&k.sh.Seq, n) - n + 1
		buf = buf[:0]
		for i, r := range part {
			flags := unix.NLM_F_REQUEST
			if i == len(part)-1 {
				flags |= unix.NLM_F_ACK
			}
			buf = appendMessage(buf, uint16(r.typ), uint16(flags), first+uint32(i), k.pid, r.body)
		}
		if err := unix.Sendto(s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return verdicts, fmt.Errorf("sending %d XFRM messages: %w", len(part), err)
		}
		for acked := false; !acked; {
			msgs, from, err := s.Receive()
			if err != nil {
				return verdicts, fmt.Errorf("reading the kernel's verdicts on %d XFRM messages: %w", len(part), err)
			}
			if from.Pid != nl.PidKernel {
				continue
			}
			for _, m := range msgs {
				// Unsigned arithmetic keeps this right across a wrap of the
				// sequence counter; replies to earlier requests fall outside.
				off := m.Header.Seq - first
				if m.Header.Pid != k.pid || m.Header.Type != unix.NLMSG_ERROR || off >= n {
					continue
				}
				if len(m.Data) < 4 {
					return verdicts, fmt.Errorf("a %d-byte XFRM error reply", len(m.Data))
				}
				if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
					verdicts[start+int(off)] = unix.Errno(-errno)
				}
				if off == n-1 {
					acked = true
				}
			}
		}
	}
	return verdicts, nil
}

// appendMessage appends one netlink message (header and body, padded to
// the netlink alignment) to buf.
func appendMessage(buf []byte, typ, flags uint16, seq, pid uint32, body []byte) []byte {
	l := unix.NLMSG_HDRLEN + len(body)
	off := len(buf)
	buf = append(buf, make([]byte, unix.NLMSG_HDRLEN)...)
	binary.NativeEndian.PutUint32(buf[off:], uint32(l))
	binary.NativeEndian.PutUint16(buf[off+4:], typ)
	binary.NativeEndian.PutUint16(buf[off+6:], flags)
	binary.NativeEndian.PutUint32(buf[off+8:], seq)
	binary.NativeEndian.PutUint32(buf[off+12:], pid)
	buf = append(buf, body...)
	for len(buf)%unix.NLMSG_ALIGNTO != 0 {
		buf = append(buf, 0)
	}
	return buf
}

func (k *nlKernel) delState(key Key) error {
	_, err := k.exec(nl.XFRM_MSG_DELSA, unix.NLM_F_ACK, encodeStateID(key), 0)
	return err
}

func (k *nlKernel) newAE(key Key, s *sa.State, r *Replay, th *Thresholds, hz uint32) error {
	_, err := k.exec(nl.XFRM_MSG_NEWAE, unix.NLM_F_ACK|unix.NLM_F_REPLACE, encodeAE(key, s, r, th, hz), 0)
	return err
}

func (k *nlKernel) getAE(key Key, s *sa.State) (ReplayEvent, uint32, error) {
	body := encodeAE(key, s, nil, nil, 0)
	native.PutUint32(body[40:], aeRVAL|aeLVAL|aeETHR|aeRTHR)
	msgs, err := k.exec(nl.XFRM_MSG_GETAE, 0, body, nl.XFRM_MSG_NEWAE)
	if err != nil {
		return ReplayEvent{}, 0, err
	}
	if len(msgs) == 0 {
		return ReplayEvent{}, 0, unix.ENOENT
	}
	return decodeAE(msgs[0])
}

func (k *nlKernel) dumpPolicies() ([]*Policy, error) {
	msgs, err := k.exec(nl.XFRM_MSG_GETPOLICY, unix.NLM_F_DUMP, nil, nl.XFRM_MSG_NEWPOLICY)
	if err != nil && !errors.Is(err, errInterrupted) {
		return nil, err
	}
	out := make([]*Policy, 0, len(msgs))
	for _, m := range msgs {
		p, derr := decodePolicy(m)
		if derr != nil {
			return nil, derr
		}
		if p != nil {
			out = append(out, p)
		}
	}
	return out, err
}

func (k *nlKernel) updPolicy(p *sa.Policy) error {
	body, err := encodePolicy(p)
	if err != nil {
		return err
	}
	_, err = k.exec(nl.XFRM_MSG_UPDPOLICY, unix.NLM_F_ACK, body, 0)
	return err
}

func (k *nlKernel) delPolicy(p *sa.Policy) error {
	_, err := k.exec(nl.XFRM_MSG_DELPOLICY, unix.NLM_F_ACK, encodePolicyID(p), 0)
	return err
}

func (k *nlKernel) subscribeAE() (aeSource, error) {
	s, err := nl.SubscribeAt(k.ns, netns.None(), unix.NETLINK_XFRM, nl.XFRMNLGRP_AEVENTS)
	if err != nil {
		return nil, fmt.Errorf("subscribing to XFRM async events: %w", err)
	}
	_ = s.SetReceiveBufferSize(4<<20, false)
	return &nlAE{s: s}, nil
}

type nlAE struct{ s *nl.NetlinkSocket }

func (a *nlAE) next() ([]ReplayEvent, error) {
	msgs, _, err := a.s.Receive()
	if err != nil {
		return nil, err
	}
	var out []ReplayEvent
	for _, m := range msgs {
		if m.Header.Type != nl.XFRM_MSG_NEWAE {
			continue
		}
		ev, _, err := decodeAE(m.Data)
		if err != nil {
			return out, err
		}
		out = append(out, ev)
	}
	return out, nil
}

func (a *nlAE) close() error {
	a.s.Close()
	return nil
}

// isNotFound reports the kernel's "no such state/policy" errnos.
func isNotFound(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}
