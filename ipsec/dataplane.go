package ipsec

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
	"github.com/handoffvpn/handoff/ipsec/vici"
	"github.com/handoffvpn/handoff/ipsec/xfrm"
)

// kernelXFRM is what the Dataplane needs from the kernel's XFRM tables
// (*xfrm.Handle in production).
type kernelXFRM interface {
	States(ctx context.Context) ([]*xfrm.State, error)
	Policies(ctx context.Context) ([]*xfrm.Policy, error)
	Get(ctx context.Context, k xfrm.Key) (*xfrm.State, error)
	Install(ctx context.Context, s *xfrm.State) (xfrm.Result, error)
	Delete(ctx context.Context, k xfrm.Key) error
	InstallPolicy(ctx context.Context, p *sa.Policy) error
	DeletePolicy(ctx context.Context, p *sa.Policy) error
	// The batched forms of Install and InstallPolicy, for a takeover:
	// one error per item, nil where it is installed.
	InstallStates(ctx context.Context, states []*xfrm.State) []error
	InstallPolicies(ctx context.Context, policies []*sa.Policy) []error
}

var _ kernelXFRM = (*xfrm.Handle)(nil)

// Config configures a Dataplane.
type Config struct {
	// VICI talks to the local charon.
	VICI *vici.Client
	// XFRM reads and writes the local kernel's XFRM tables.
	XFRM *xfrm.Handle
	// Logger receives the dataplane's messages (slog.Default if nil).
	Logger *slog.Logger
	// Debounce groups SA events arriving within this window into one
	// read of charon and the kernel (default 5ms).
	Debounce time.Duration
	// Reconcile is the period of the full resync Watch runs as a safety
	// net against anything missed (default 30s).
	Reconcile time.Duration
	// BulkThreshold: a batch touching more IKE SAs than this is read with
	// one full listing instead of one per IKE SA (default 32).
	BulkThreshold int
	// IncompleteRetry is how long Watch waits before reading again a
	// CHILD_SA whose kernel states are not all installed yet (default
	// 100ms); it gives up after IncompleteRetries (default 30) and leaves
	// the SA to the next reconcile.
	IncompleteRetry   time.Duration
	IncompleteRetries int
	// ReconnectWait bounds how long Watch retries reaching charon before
	// it returns an error to its caller (default 10s).
	ReconnectWait time.Duration
	// Reestablish configures IKE SA re-establishment after a takeover.
	Reestablish ReestablishConfig
	// Now is the clock (time.Now if nil).
	Now func() time.Time
}

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Debounce <= 0 {
		c.Debounce = 5 * time.Millisecond
	}
	if c.Reconcile <= 0 {
		c.Reconcile = 30 * time.Second
	}
	if c.BulkThreshold <= 0 {
		c.BulkThreshold = 32
	}
	if c.IncompleteRetry <= 0 {
		c.IncompleteRetry = 100 * time.Millisecond
	}
	if c.IncompleteRetries <= 0 {
		c.IncompleteRetries = 30
	}
	if c.ReconnectWait <= 0 {
		c.ReconnectWait = 10 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.Reestablish.defaults()
}

// Dataplane is charon plus the kernel's XFRM tables behind the agent's
// Dataplane interface. Its methods are safe for concurrent use.
type Dataplane struct {
	cfg  Config
	log  *slog.Logger
	vici *vici.Client
	x    kernelXFRM

	// mu guards the following fields.
	mu sync.Mutex
	// known is the SA set last reported to the caller (Export, Watch),
	// by ID.
	known map[string]*knownSA
	// installed holds the SAs this node installed from replication and
	// still carries itself: charon does not know them, so they are
	// exported from here until Reestablish replaces them.
	installed map[string]*installedSA
	// staged holds the inbound states pre-installed on a standby.
	staged map[string]xfrm.Key
	synced bool
}

type knownSA struct {
	sa    *sa.ChildSA
	ikeID uint32 // 0 for installed SAs, which no charon IKE SA owns
	fp    string
}

type installedSA struct {
	sa      *sa.ChildSA
	in, out xfrm.Key
	// retireAt is set once Reestablish replaced the SA (make-before-break
	// mode): the inbound copy is removed then; until then it is kept but
	// no longer exported.
	retireAt time.Time
}

// New returns a Dataplane. The caller owns cfg.VICI and cfg.XFRM and
// closes them after the last call; the Dataplane starts no goroutine that
// outlives a call.
func New(cfg Config) (*Dataplane, error) {
	if cfg.VICI == nil || cfg.XFRM == nil {
		return nil, errors.New("ipsec: VICI client and XFRM handle are required")
	}
	return newDataplane(cfg, cfg.XFRM), nil
}

func newDataplane(cfg Config, x kernelXFRM) *Dataplane {
	cfg.defaults()
	return &Dataplane{
		cfg:       cfg,
		log:       cfg.Logger,
		vici:      cfg.VICI,
		x:         x,
		known:     map[string]*knownSA{},
		installed: map[string]*installedSA{},
		staged:    map[string]xfrm.Key{},
	}
}

// Export returns every CHILD_SA the node carries: those charon reports with
// their kernel states and policies, and those installed from replication
// that charon does not know (after a takeover, until Reestablish).
func (d *Dataplane) Export(ctx context.Context) ([]*sa.ChildSA, error) {
	found, err := d.readAll(ctx)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.known = found
	d.synced = true
	out := make([]*sa.ChildSA, 0, len(found))
	for _, k := range found {
		out = append(out, k.sa)
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// readAll reads charon's full SA list and the kernel tables once.
func (d *Dataplane) readAll(ctx context.Context) (map[string]*knownSA, error) {
	if err := d.retireDue(ctx); err != nil {
		d.log.Warn("ipsec: removing retired inbound copies", "err", err)
	}
	ikes, err := d.vici.ListSAs(ctx, vici.ListFilter{})
	if err != nil {
		return nil, fmt.Errorf("listing charon's SAs: %w", err)
	}
	snap, err := d.readKernel(ctx)
	if err != nil {
		return nil, err
	}
	found, _ := d.assembleAll(ikes, snap)
	d.addInstalled(found, snap)
	return found, nil
}

func (d *Dataplane) readKernel(ctx context.Context) (*snapshot, error) {
	states, err := d.x.States(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading XFRM states: %w", err)
	}
	pols, err := d.x.Policies(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading XFRM policies: %w", err)
	}
	return newSnapshot(states, pols), nil
}

// assembleAll builds the models of every exportable CHILD_SA of ikes. It
// returns the SAs and the unique IDs of IKE SAs with a CHILD_SA whose
// kernel state is incomplete.
func (d *Dataplane) assembleAll(ikes []vici.IKESA, snap *snapshot) (map[string]*knownSA, []uint32) {
	now := d.cfg.Now()
	found := map[string]*knownSA{}
	var incomplete []uint32
	for i := range ikes {
		ike := &ikes[i]
		succeeded := rekeySuccessors(ike)
		for j := range ike.Children {
			c := &ike.Children[j]
			if !exportable(c) || c.State == "REKEYED" && succeeded[childGeneration(c)] {
				continue
			}
			child, unsupported, err := assemble(ike, c, snap, now)
			if err != nil {
				if errors.Is(err, errIncomplete) {
					d.log.Debug("ipsec: CHILD_SA not (yet) in the kernel", "ike", ike.Name, "err", err)
					incomplete = append(incomplete, ike.UniqueID)
				} else {
					d.log.Warn("ipsec: CHILD_SA cannot be exported", "ike", ike.Name, "err", err)
				}
				continue
			}
			if len(unsupported) > 0 {
				d.log.Warn("ipsec: CHILD_SA has kernel state the model cannot carry; its copy will lack it",
					"id", child.ID, "attributes", unsupported)
			}
			found[child.ID] = &knownSA{sa: child, ikeID: ike.UniqueID, fp: fingerprint(child)}
		}
	}
	return found, incomplete
}

// childGeneration names the CHILD_SAs a rekey replaces one by another:
// one name, one pair of traffic selectors.
func childGeneration(c *vici.ChildSA) string {
	return c.Name + "|" + strings.Join(c.LocalTS, ",") + "|" + strings.Join(c.RemoteTS, ",")
}

// rekeySuccessors are the generations of ike with an INSTALLED CHILD_SA:
// a REKEYED one of the same generation is not exported. charon keeps it a
// while (its inbound state catches stragglers) but no longer sends on it,
// and its peer deletes its copy within delete_rekeyed_delay; carried to a
// new active next to its successor, it was sent on (the kernel lab: a
// kill a second after a CHILD_SA rekey broke the tunnel four seconds
// later). Leaving it out makes the feed delete it from the log as soon as
// the successor is in.
func rekeySuccessors(ike *vici.IKESA) map[string]bool {
	var out map[string]bool
	for j := range ike.Children {
		if c := &ike.Children[j]; c.State == "INSTALLED" {
			if out == nil {
				out = map[string]bool{}
			}
			out[childGeneration(c)] = true
		}
	}
	return out
}

// addInstalled adds the installed SAs whose states the kernel still has
// and that charon does not report itself.
func (d *Dataplane) addInstalled(found map[string]*knownSA, snap *snapshot) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, ins := range d.installed {
		if _, ok := found[id]; ok || !ins.retireAt.IsZero() {
			continue
		}
		if snap.find(ins.in.Dst, ins.in.SPI, ins.in.Proto, ins.in.Mark.Value, ins.in.Mark.Mask) == nil {
			// Gone from the kernel (expired, or removed by hand).
			delete(d.installed, id)
			continue
		}
		found[id] = &knownSA{sa: ins.sa, fp: fingerprint(ins.sa)}
	}
}

// Replay reads the replay counters of every exported CHILD_SA: the
// outbound state's sequence number, the inbound state's sequence number
// and window. One dump of the kernel's states serves all of them.
func (d *Dataplane) Replay(ctx context.Context) ([]sa.Replay, error) {
	d.mu.Lock()
	synced := d.synced
	d.mu.Unlock()
	if !synced {
		if _, err := d.Export(ctx); err != nil {
			return nil, err
		}
	}
	if err := d.retireDue(ctx); err != nil {
		d.log.Warn("ipsec: removing retired inbound copies", "err", err)
	}
	states, err := d.x.States(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading XFRM states for replay counters: %w", err)
	}
	now := d.cfg.Now()
	byKey := make(map[xfrm.Key]*xfrm.State, len(states))
	for _, s := range states {
		byKey[s.Key()] = s
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]sa.Replay, 0, len(d.known))
	for id, k := range d.known {
		in, okIn := byKey[xfrm.KeyOf(&k.sa.In)]
		o, okOut := byKey[xfrm.KeyOf(&k.sa.Out)]
		if !okIn && !okOut {
			continue
		}
		r := sa.Replay{ID: id, ReadAt: now}
		if okOut {
			r.OSeq = o.Replay.OSeq
		}
		if okIn {
			r.Seq = in.Replay.Seq
			r.Bitmap = slices.Clone(in.Replay.Bitmap)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ErrSeqExhausted: the outbound sequence number to start from does not fit
// the SA's sequence number space (32 bits without ESN). Installing it would
// wrap and reuse numbers; the SA must be rekeyed instead.
var ErrSeqExhausted = errors.New("outbound sequence number space exhausted")

// Install installs SAs idempotently: both states of each (inbound first,
// so the outbound policy never points at nothing), then its policies.
// Each outbound state starts after Install.OSeq (the kernel's oseq is set
// to it; the first packet carries OSeq+1), each inbound state resumes from
// Install.Replay. A state already there (pre-staged, or a retried install)
// keeps its counters when they are further along. Errors are collected per
// SA; the others are still installed.
func (d *Dataplane) Install(ctx context.Context, sas []sa.Install) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("installing %d SAs: %w", len(sas), err)
	}
	// Every SA's states first, in one batched call, then the policies of
	// the SAs whose states went in: inbound ones (in, fwd) before outbound
	// ones, so that no packet is sent under a policy without its state.
	failed := make([]error, len(sas))
	var states []*xfrm.State
	var owner []int
	for i := range sas {
		in := &sas[i]
		c := in.SA
		switch {
		case c == nil:
			failed[i] = errors.New("install without an SA")
			continue
		case c.Validate() != nil:
			failed[i] = fmt.Errorf("installing %s: %w", c.ID, c.Validate())
			continue
		case !c.Out.ESN && in.OSeq >= 1<<32-1:
			failed[i] = fmt.Errorf("installing %s: outbound sequence number %d: %w", c.ID, in.OSeq, ErrSeqExhausted)
			continue
		}
		addTime := c.Child.InstalledAt
		states = append(states,
			&xfrm.State{State: c.In, Replay: xfrm.Replay{Seq: in.Replay.Seq, Bitmap: slices.Clone(in.Replay.Bitmap)}, AddTime: addTime},
			&xfrm.State{State: c.Out, Replay: xfrm.Replay{OSeq: in.OSeq}, AddTime: addTime})
		owner = append(owner, i, i)
	}
	for j, err := range d.x.InstallStates(ctx, states) {
		if i := owner[j]; err != nil && failed[i] == nil {
			failed[i] = fmt.Errorf("installing %s: %w", sas[i].SA.ID, err)
		}
	}
	var pols []*sa.Policy
	owner = owner[:0]
	for _, outbound := range []bool{false, true} {
		for i := range sas {
			if failed[i] != nil {
				continue
			}
			for k := range sas[i].SA.Policies {
				if p := &sas[i].SA.Policies[k]; (p.Dir == sa.DirOut) == outbound {
					pols = append(pols, p)
					owner = append(owner, i)
				}
			}
		}
	}
	for j, err := range d.x.InstallPolicies(ctx, pols) {
		if i := owner[j]; err != nil && failed[i] == nil {
			failed[i] = fmt.Errorf("installing %s: %w", sas[i].SA.ID, err)
		}
	}
	d.mu.Lock()
	for i := range sas {
		if failed[i] == nil {
			c := sas[i].SA
			d.installed[c.ID] = &installedSA{sa: c, in: xfrm.KeyOf(&c.In), out: xfrm.KeyOf(&c.Out)}
			delete(d.staged, c.ID)
		}
	}
	d.mu.Unlock()
	return errors.Join(failed...)
}

// Stage pre-installs the inbound states of sas on a standby, so that a
// takeover only has to add outbound states and policies. No traffic
// reaches a standby, so an inbound state there is inert. Inbound states
// this node staged earlier that are not in sas any more are removed.
func (d *Dataplane) Stage(ctx context.Context, sas []*sa.ChildSA) error {
	want := make(map[string]*sa.ChildSA, len(sas))
	for _, c := range sas {
		want[c.ID] = c
	}
	var errs []error
	d.mu.Lock()
	var stale []xfrm.Key
	for id, k := range d.staged {
		if _, ok := want[id]; !ok {
			stale = append(stale, k)
			delete(d.staged, id)
		}
	}
	d.mu.Unlock()
	for _, k := range stale {
		if err := d.x.Delete(ctx, k); err != nil {
			errs = append(errs, err)
		}
	}
	for _, c := range sas {
		d.mu.Lock()
		_, done := d.staged[c.ID]
		_, live := d.installed[c.ID]
		d.mu.Unlock()
		if done || live {
			continue
		}
		if err := c.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("staging %s: %w", c.ID, err))
			continue
		}
		st := &xfrm.State{State: c.In, AddTime: c.Child.InstalledAt}
		if _, err := d.x.Install(ctx, st); err != nil {
			errs = append(errs, fmt.Errorf("staging %s: %w", c.ID, err))
			continue
		}
		d.mu.Lock()
		d.staged[c.ID] = st.Key()
		d.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Fence deletes every outbound state on this node: those of the SAs it
// exported or installed, and every state an outbound policy's template
// points at, so that it works even when charon is dead. Deleting is
// idempotent; each failure is reported and the rest still deleted.
func (d *Dataplane) Fence(ctx context.Context) error {
	targets := map[xfrm.Key]bool{}
	d.mu.Lock()
	for _, k := range d.known {
		targets[xfrm.KeyOf(&k.sa.Out)] = true
	}
	for _, ins := range d.installed {
		targets[ins.out] = true
	}
	d.mu.Unlock()
	var errs []error
	used, err := d.outboundStates(ctx)
	if err != nil {
		// Without a fresh view, still delete what is known.
		errs = append(errs, err)
	}
	for k := range used {
		targets[k] = true
	}
	return d.deleteOutbound(ctx, targets, errs, "fenced")
}

// FenceStrays deletes the outbound states an outbound policy points at
// that this node did not install: with IKE continuity, the new active's
// charon installed every carried CHILD_SA at sequence number 0, and
// Install replaced (with the jumped counters) those whose SA came through
// the log; one that did not (created just before the takeover) must not
// send under a key its peer saw in use. Its CHILD_SA stays inbound-only
// until its next rekey.
func (d *Dataplane) FenceStrays(ctx context.Context) error {
	used, err := d.outboundStates(ctx)
	if err != nil {
		return fmt.Errorf("fencing stray outbound states: %w", err)
	}
	d.mu.Lock()
	for _, ins := range d.installed {
		delete(used, ins.out)
	}
	d.mu.Unlock()
	return d.deleteOutbound(ctx, used, nil, "stray outbound states deleted")
}

// outboundStates are the states an outbound policy's template points at.
func (d *Dataplane) outboundStates(ctx context.Context) (map[xfrm.Key]bool, error) {
	pols, perr := d.x.Policies(ctx)
	states, serr := d.x.States(ctx)
	if err := errors.Join(perr, serr); err != nil {
		return nil, err
	}
	type tmplKey struct {
		src, dst netip.Addr
		proto    uint8
		reqid    uint32
	}
	outTmpl := map[tmplKey]bool{}
	for _, p := range pols {
		if p.Dir != sa.DirOut {
			continue
		}
		for _, t := range p.Templates {
			outTmpl[tmplKey{t.Src, t.Dst, t.Proto, t.Reqid}] = true
		}
	}
	used := map[xfrm.Key]bool{}
	for _, s := range states {
		if outTmpl[tmplKey{s.Src, s.Dst, s.Proto, s.Reqid}] {
			used[s.Key()] = true
		}
	}
	return used, nil
}

// deleteOutbound deletes targets, collecting errors after errs.
func (d *Dataplane) deleteOutbound(ctx context.Context, targets map[xfrm.Key]bool, errs []error, what string) error {
	n := 0
	for k := range targets {
		if err := d.x.Delete(ctx, k); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	// A standby sweeps after every feed of CHILD_SAs (IKE continuity):
	// a sweep that found nothing is not news.
	level := slog.LevelInfo
	if n == 0 && len(errs) == 0 {
		level = slog.LevelDebug
	}
	d.log.Log(ctx, level, "ipsec: "+what, "count", n, "errors", len(errs))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
