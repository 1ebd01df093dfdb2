package xfrm

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"golang.org/x/sys/unix"
)

// fakeKernel stands in for the kernel's XFRM netlink interface in unit
// tests: a state table keyed the way the kernel looks states up, a policy
// table, the kernel's errnos, and hooks to inject failures and races. It
// records every call as a line of text.
type fakeKernel struct {
	mu       sync.Mutex
	states   map[Key]*State
	policies map[string]*Policy
	log      []string
	// interrupt makes the next n dumps report NLM_F_DUMP_INTR.
	interrupt int
	// before runs before each operation; a non-nil error is returned
	// instead of performing it.
	before func(op string, k Key) error
	hz     uint32
	// applyBreak > 0 breaks every batch after that many messages.
	applyBreak int
	aeCh       chan ReplayEvent
	closed     bool
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{states: map[Key]*State{}, policies: map[string]*Policy{}, hz: 250}
}

func (f *fakeKernel) record(format string, args ...any) {
	f.log = append(f.log, fmt.Sprintf(format, args...))
}

func (f *fakeKernel) transcript() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.log, "\n")
}

func (f *fakeKernel) hook(op string, k Key) error {
	if f.before == nil {
		return nil
	}
	f.mu.Unlock()
	defer f.mu.Lock()
	return f.before(op, k)
}

func copyState(s *State) *State {
	c := *s
	c.Replay.Bitmap = slices.Clone(s.Replay.Bitmap)
	return &c
}

func (f *fakeKernel) dumpStates() ([]*State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.hook("dumpsa", Key{}); err != nil {
		return nil, err
	}
	var out []*State
	for _, s := range f.states {
		out = append(out, copyState(s))
	}
	slices.SortFunc(out, func(a, b *State) int { return int(a.SPI) - int(b.SPI) })
	if f.interrupt > 0 {
		f.interrupt--
		f.record("dumpsa interrupted")
		return out[:len(out)/2], errInterrupted
	}
	f.record("dumpsa")
	return out, nil
}

func (f *fakeKernel) getState(k Key) (*State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.hook("getsa", k); err != nil {
		return nil, err
	}
	f.record("getsa %s", k)
	s, ok := f.states[k]
	if !ok {
		return nil, unix.ESRCH
	}
	return copyState(s), nil
}

func (f *fakeKernel) addState(s *State, update bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := s.Key()
	if err := f.hook("newsa", k); err != nil {
		return err
	}
	if _, err := encodeState(s); err != nil {
		return unix.EINVAL
	}
	if _, ok := f.states[k]; ok {
		f.record("newsa %s: EEXIST", k)
		return unix.EEXIST
	}
	f.record("newsa %s oseq %#x seq %#x", k, s.Replay.OSeq, s.Replay.Seq)
	f.states[k] = copyState(s)
	return nil
}

func (f *fakeKernel) delState(k Key) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.hook("delsa", k); err != nil {
		return err
	}
	if _, ok := f.states[k]; !ok {
		f.record("delsa %s: ESRCH", k)
		return unix.ESRCH
	}
	f.record("delsa %s", k)
	delete(f.states, k)
	return nil
}

func (f *fakeKernel) newAE(k Key, s *sa.State, r *Replay, th *Thresholds, hz uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.hook("newae", k); err != nil {
		return err
	}
	st, ok := f.states[k]
	if !ok {
		return unix.ESRCH
	}
	if r != nil {
		f.record("newae %s oseq %#x seq %#x", k, r.OSeq, r.Seq)
		st.Replay = Replay{OSeq: r.OSeq, Seq: r.Seq, Bitmap: slices.Clone(r.Bitmap)}
	}
	if th != nil {
		f.record("newae %s thresholds %d packets %v (hz %d)", k, th.Packets, th.Timer, hz)
	}
	return nil
}

func (f *fakeKernel) getAE(k Key, s *sa.State) (ReplayEvent, uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.states[k]
	if !ok {
		return ReplayEvent{}, 0, unix.ESRCH
	}
	// The kernel reports the timer set in the last NEWAE in tenths of a
	// second: calibrationJiffies*10/HZ.
	return ReplayEvent{Key: k, Replay: st.Replay}, calibrationJiffies * 10 / f.hz, nil
}

func policyKey(p *sa.Policy) string {
	m := ""
	if p.Mark != nil {
		m = fmt.Sprintf(" mark %#x/%#x", p.Mark.Value, p.Mark.Mask)
	}
	return fmt.Sprintf("%s %s->%s%s", p.Dir, p.Selector.Src, p.Selector.Dst, m)
}

func (f *fakeKernel) dumpPolicies() ([]*Policy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*Policy
	for _, p := range f.policies {
		c := *p
		out = append(out, &c)
	}
	slices.SortFunc(out, func(a, b *Policy) int { return strings.Compare(policyKey(&a.Policy), policyKey(&b.Policy)) })
	if f.interrupt > 0 {
		f.interrupt--
		f.record("dumppolicy interrupted")
		return out, errInterrupted
	}
	f.record("dumppolicy")
	return out, nil
}

func (f *fakeKernel) updPolicy(p *sa.Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := encodePolicy(p); err != nil {
		return unix.EINVAL
	}
	f.record("updpolicy %s", policyKey(p))
	f.policies[policyKey(p)] = &Policy{Policy: *p}
	return nil
}

// apply plays a batch the way the kernel does: in order, every message
// whatever the ones before it did, one verdict each. applyBreak, when set,
// breaks the exchange after that many messages (a socket error).
func (f *fakeKernel) apply(reqs []request) ([]error, error) {
	f.mu.Lock()
	f.record("batch of %d", len(reqs))
	brk := f.applyBreak
	f.mu.Unlock()
	verdicts := make([]error, len(reqs))
	for i, r := range reqs {
		if brk > 0 && i == brk {
			return verdicts, unix.ENOBUFS
		}
		switch {
		case r.state != nil:
			verdicts[i] = f.addState(r.state, false)
		case r.policy != nil:
			verdicts[i] = f.updPolicy(r.policy)
		default:
			verdicts[i] = unix.EINVAL
		}
	}
	return verdicts, nil
}

func (f *fakeKernel) delPolicy(p *sa.Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := policyKey(p)
	if _, ok := f.policies[k]; !ok {
		f.record("delpolicy %s: ENOENT", k)
		return unix.ENOENT
	}
	f.record("delpolicy %s", k)
	delete(f.policies, k)
	return nil
}

type fakeAE struct {
	ch   chan ReplayEvent
	done chan struct{}
	once sync.Once
}

func (a *fakeAE) next() ([]ReplayEvent, error) {
	select {
	case ev, ok := <-a.ch:
		if !ok {
			return nil, unix.ENOBUFS
		}
		return []ReplayEvent{ev}, nil
	case <-a.done:
		return nil, unix.EBADF
	}
}

func (a *fakeAE) close() error {
	a.once.Do(func() { close(a.done) })
	return nil
}

func (f *fakeKernel) subscribeAE() (aeSource, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.aeCh == nil {
		f.aeCh = make(chan ReplayEvent, 16)
	}
	return &fakeAE{ch: f.aeCh, done: make(chan struct{})}, nil
}

func (f *fakeKernel) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}
