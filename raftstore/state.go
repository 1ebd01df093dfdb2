package raftstore

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"
)

// HistoryLimit bounds the failover history ring.
const HistoryLimit = 64

// Member is one node of the cluster as the state machine knows it.
type Member struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Role     Role   `json:"role"`
	Priority int    `json:"priority"`
	// Version is the build the member last reported (joining, or through
	// the leader when it changed); "" for a member that runs a build from
	// before versions were recorded.
	Version string `json:"version,omitempty"`
}

// Observation is what one observer last reported about one subject.
type Observation struct {
	Observer string    `json:"observer"`
	Subject  string    `json:"subject"`
	Healthy  bool      `json:"healthy"`
	Detail   string    `json:"detail,omitempty"`
	At       time.Time `json:"at"`
}

// Active is the active assignment.
type Active struct {
	Node  string `json:"node"`
	Term  uint64 `json:"term"`
	Phase Phase  `json:"phase"`
	// Reason is why the node claimed (see Reason).
	Reason    Reason    `json:"reason,omitempty"`
	ClaimedAt time.Time `json:"claimed_at"`
	ActiveAt  time.Time `json:"active_at,omitzero"`
	Timings   Timings   `json:"timings"`
}

// SAEntry is one replicated CHILD_SA, sealed. Entries are immutable once
// stored: an upsert replaces the pointer, so snapshots share them safely.
type SAEntry struct {
	ID     string
	Sealed []byte
	// Term and Index of the log entry that last wrote it.
	Term, Index uint64
}

// HistoryEntry is one takeover.
type HistoryEntry struct {
	Term        uint64    `json:"term"`
	From        string    `json:"from,omitempty"`
	To          string    `json:"to"`
	Reason      Reason    `json:"reason,omitempty"`
	Detail      string    `json:"detail,omitempty"`
	Result      string    `json:"result"`
	ClaimedAt   time.Time `json:"claimed_at"`
	CompletedAt time.Time `json:"completed_at,omitzero"`
	Timings     Timings   `json:"timings"`
	SAs         int       `json:"sas"`
	Error       string    `json:"error,omitempty"`
}

// State is the replicated state machine. Its methods are not safe for
// concurrent use; the FSM serialises access.
type State struct {
	Members map[string]Member
	Active  Active
	SAs     map[string]*SAEntry
	Replay  map[string]ReplayRecord
	// IKEChains are the active gateway's IKE lineage chains, sealed, by
	// chain key (ipsec/hasync): what a standby's charon needs to hold its
	// IKE_SAs. ID is the chain key.
	IKEChains map[string]*SAEntry
	// Health is subject → observer → observation.
	Health  map[string]map[string]Observation
	History []HistoryEntry
	// Handover is the hand-over announced and not yet followed by a claim.
	Handover Handover
	// LastIndex is the index of the last applied entry.
	LastIndex uint64
}

// NewState returns an empty state.
func NewState() *State {
	return &State{
		Members:   make(map[string]Member),
		SAs:       make(map[string]*SAEntry),
		Replay:    make(map[string]ReplayRecord),
		IKEChains: make(map[string]*SAEntry),
		Health:    make(map[string]map[string]Observation),
	}
}

// Errors an apply can return. The state is unchanged when they do.
var (
	ErrNotMember = errors.New("not a member")
	ErrRefused   = errors.New("refused by the state machine")
)

// Clone returns a copy that shares only immutable parts (SA entries).
func (s *State) Clone() *State {
	c := &State{
		Members:   maps.Clone(s.Members),
		Active:    s.Active,
		SAs:       maps.Clone(s.SAs),
		Replay:    maps.Clone(s.Replay),
		IKEChains: maps.Clone(s.IKEChains),
		Health:    make(map[string]map[string]Observation, len(s.Health)),
		History:   slices.Clone(s.History),
		Handover:  s.Handover,
		LastIndex: s.LastIndex,
	}
	for k, v := range s.Health {
		c.Health[k] = maps.Clone(v)
	}
	return c
}

// apply executes one decoded command at the given log position. It either
// applies the whole command or returns an error and changes nothing.
func (s *State) apply(index, term uint64, c Command) error {
	var err error
	switch p := c.Payload.(type) {
	case nil:
		// An advisory command from a newer version: skipped on purpose.
	case *MemberCmd:
		err = s.applyMember(p)
	case *RemoveMemberCmd:
		if _, ok := s.Members[p.ID]; !ok {
			return fmt.Errorf("removing %q: %w", p.ID, ErrNotMember)
		}
		delete(s.Members, p.ID)
		delete(s.Health, p.ID)
		for _, obs := range s.Health {
			delete(obs, p.ID)
		}
	case *ClaimCmd:
		err = s.applyClaim(term, p)
	case *ActiveCmd:
		err = s.applyActive(term, p)
	case *FailedCmd:
		err = s.applyFailed(term, p)
	case *HealthCmd:
		err = s.applyHealth(p)
	case *HandoverCmd:
		err = s.applyHandover(term, p)
	case *SABatchCmd:
		err = s.applySABatch(index, term, p)
	case *ReplayBatchCmd:
		err = s.applyReplay(p)
	case *ReplayCurrentCmd:
		// Local clocks only (FSM.Apply): nothing replicated changes.
	case *IKEChainsCmd:
		err = s.applyIKEChains(index, term, p)
	default:
		err = fmt.Errorf("%w: no handler for %T", ErrRefused, p)
	}
	if err == nil {
		s.LastIndex = index
	}
	return err
}

func (s *State) applyMember(p *MemberCmd) error {
	if p.ID == "" || p.Address == "" {
		return fmt.Errorf("%w: member needs id and address (got id %q, address %q)", ErrRefused, p.ID, p.Address)
	}
	if !p.Role.Valid() {
		return fmt.Errorf("%w: member %s: role %q is not gateway or witness", ErrRefused, p.ID, p.Role)
	}
	if p.Role == RoleWitness && s.Active.Node == p.ID {
		return fmt.Errorf("%w: member %s is the active gateway and cannot become a witness", ErrRefused, p.ID)
	}
	s.Members[p.ID] = Member{ID: p.ID, Address: p.Address, Role: p.Role, Priority: p.Priority, Version: p.Version}
	return nil
}

// applyClaim enforces invariant 1: within one term only one node claims,
// and no claim goes back in terms.
func (s *State) applyClaim(term uint64, p *ClaimCmd) error {
	m, ok := s.Members[p.Node]
	if !ok {
		return fmt.Errorf("claim by %q: %w", p.Node, ErrNotMember)
	}
	if m.Role != RoleGateway {
		return fmt.Errorf("%w: claim by %s, a %s", ErrRefused, p.Node, m.Role)
	}
	if term < s.Active.Term {
		return fmt.Errorf("%w: claim by %s at term %d, active term is %d", ErrRefused, p.Node, term, s.Active.Term)
	}
	if term == s.Active.Term && s.Active.Node != "" && s.Active.Node != p.Node {
		return fmt.Errorf("%w: claim by %s at term %d, already claimed by %s", ErrRefused, p.Node, term, s.Active.Node)
	}
	from := s.Active.Node
	if from == p.Node {
		from = ""
	}
	s.Active = Active{Node: p.Node, Term: term, Phase: PhaseClaiming, Reason: p.Reason, ClaimedAt: p.At}
	// A claim answers the hand-over announced before it, if any: it must
	// not explain a later election.
	s.Handover = Handover{}
	s.pushHistory(HistoryEntry{Term: term, From: from, To: p.Node, Reason: p.Reason, Detail: p.Detail, Result: "claiming", ClaimedAt: p.At})
	return nil
}

func (s *State) applyActive(term uint64, p *ActiveCmd) error {
	if s.Active.Node != p.Node || s.Active.Term != term {
		return fmt.Errorf("%w: active by %s at term %d, but the claim is %s at term %d", ErrRefused, p.Node, term, s.Active.Node, s.Active.Term)
	}
	s.Active.Phase = PhaseActive
	s.Active.ActiveAt = p.At
	s.Active.Timings = p.Timings
	if h := s.lastHistory(term, p.Node); h != nil {
		h.Result, h.CompletedAt, h.Timings, h.SAs = "completed", p.At, p.Timings, p.SAs
	}
	return nil
}

func (s *State) applyFailed(term uint64, p *FailedCmd) error {
	if s.Active.Node != p.Node || s.Active.Term != term {
		return fmt.Errorf("%w: failure report by %s at term %d, but the claim is %s at term %d", ErrRefused, p.Node, term, s.Active.Node, s.Active.Term)
	}
	if h := s.lastHistory(term, p.Node); h != nil {
		h.Result, h.CompletedAt, h.Error = "failed", p.At, p.Phase+": "+p.Error
	}
	return nil
}

func (s *State) applyHealth(p *HealthCmd) error {
	if _, ok := s.Members[p.Observer]; !ok {
		return fmt.Errorf("health report from %q: %w", p.Observer, ErrNotMember)
	}
	if _, ok := s.Members[p.Subject]; !ok {
		return fmt.Errorf("health report about %q: %w", p.Subject, ErrNotMember)
	}
	obs := s.Health[p.Subject]
	if obs == nil {
		obs = make(map[string]Observation)
		s.Health[p.Subject] = obs
	}
	obs[p.Observer] = Observation{Observer: p.Observer, Subject: p.Subject, Healthy: p.Healthy, Detail: p.Detail, At: p.At}
	return nil
}

// checkUpserts refuses a batch with an entry without key or payload, or
// one key twice; what names the entries ("SA", "IKE chain").
func checkUpserts(what string, upserts []SAUpsert) error {
	seen := make(map[string]bool, len(upserts))
	for _, u := range upserts {
		if u.ID == "" || len(u.Sealed) == 0 {
			return fmt.Errorf("%w: %s upsert without key or payload", ErrRefused, what)
		}
		if seen[u.ID] {
			return fmt.Errorf("%w: %s %s twice in one batch", ErrRefused, what, u.ID)
		}
		seen[u.ID] = true
	}
	return nil
}

// putEntries stores the upserts as entries written at (term, index).
func putEntries(into map[string]*SAEntry, upserts []SAUpsert, index, term uint64) {
	for _, u := range upserts {
		into[u.ID] = &SAEntry{ID: u.ID, Sealed: u.Sealed, Term: term, Index: index}
	}
}

func (s *State) applySABatch(index, term uint64, p *SABatchCmd) error {
	if err := checkUpserts("SA", p.Upserts); err != nil {
		return err
	}
	putEntries(s.SAs, p.Upserts, index, term)
	for _, id := range p.Deletes {
		delete(s.SAs, id)
		delete(s.Replay, id)
	}
	return nil
}

// applyIKEChains takes chains only from the node holding the active role
// (claiming or active): an old active that lost it, and whose charon
// still reports, must not write over what its successor carries.
func (s *State) applyIKEChains(index, term uint64, p *IKEChainsCmd) error {
	if p.Node == "" || p.Node != s.Active.Node {
		return fmt.Errorf("%w: IKE chains from %q, but the active role is %q's", ErrRefused, p.Node, s.Active.Node)
	}
	if err := checkUpserts("IKE chain", p.Upserts); err != nil {
		return err
	}
	putEntries(s.IKEChains, p.Upserts, index, term)
	for _, k := range p.Deletes {
		delete(s.IKEChains, k)
	}
	return nil
}

func (s *State) applyReplay(p *ReplayBatchCmd) error {
	for _, r := range p.Records {
		if r.ID == "" {
			return fmt.Errorf("%w: replay record without SA id", ErrRefused)
		}
	}
	for _, r := range p.Records {
		if _, ok := s.SAs[r.ID]; !ok {
			// The SA was deleted after the counters were read: nothing to keep.
			continue
		}
		// Counters only move forward; a late batch never rolls one back.
		if old, ok := s.Replay[r.ID]; ok && old.OSeq > r.OSeq {
			r.OSeq = old.OSeq
		}
		s.Replay[r.ID] = r
	}
	return nil
}

func (s *State) pushHistory(h HistoryEntry) {
	s.History = append(s.History, h)
	if n := len(s.History) - HistoryLimit; n > 0 {
		s.History = slices.Delete(s.History, 0, n)
	}
}

func (s *State) lastHistory(term uint64, node string) *HistoryEntry {
	for i := len(s.History) - 1; i >= 0; i-- {
		if h := &s.History[i]; h.Term == term && h.To == node {
			return h
		}
	}
	return nil
}

// SortedMembers returns the members ordered by ID.
func (s *State) SortedMembers() []Member {
	out := slices.Collect(maps.Values(s.Members))
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
