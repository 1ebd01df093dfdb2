package xfrm

import (
	"errors"
	"fmt"

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
