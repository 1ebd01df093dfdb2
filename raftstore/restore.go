package raftstore

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
)

// ErrSnapshotRefused wraps every reason a well-formed snapshot is not
// restored: it belongs to another cluster, or its membership could not
// run this one. Nothing has changed when it is returned.
var ErrSnapshotRefused = errors.New("snapshot refused")

// CheckRestore decides, before anything changes, whether st may replace
// this cluster's replicated state:
//
//   - every sealed SA opens with sealer, this cluster's key: a snapshot
//     sealed with another key would leave every SA unreadable;
//   - its membership can run this cluster: at least one member, each with
//     an ID, a role and a host:port address (port 1–65535), no two sharing
//     an ID or an address, the active node among them; and it is this
//     cluster's: at least one member is in the current Raft configuration,
//     and every member that is has the address Raft knows it by (another
//     cluster's snapshot names other nodes, or the same IDs elsewhere).
//
// Members the Raft configuration lacks are allowed (a backup from before a
// node left), as are Raft servers the snapshot lacks (one from before a node
// joined: its agent registers again).
func (s *Store) CheckRestore(st *State, sealer *Sealer) error {
	servers, err := s.Servers()
	if err != nil {
		return fmt.Errorf("checking the snapshot against the Raft configuration: %w", err)
	}
	raftAddr := make(map[string]string, len(servers))
	for _, srv := range servers {
		raftAddr[string(srv.ID)] = string(srv.Address)
	}
	return CheckRestore(st, sealer, raftAddr)
}

// CheckRestore is Store.CheckRestore with the Raft configuration given as
// server ID → address.
func CheckRestore(st *State, sealer *Sealer, raftAddr map[string]string) error {
	if err := checkMembership(st, raftAddr); err != nil {
		return fmt.Errorf("%w: %w", ErrSnapshotRefused, err)
	}
	if err := checkSealed(st, sealer); err != nil {
		return fmt.Errorf("%w: %w", ErrSnapshotRefused, err)
	}
	return nil
}

func checkMembership(st *State, raftAddr map[string]string) error {
	if len(st.Members) == 0 {
		return errors.New("it has no members")
	}
	members := st.SortedMembers()
	byAddr := make(map[string]string, len(members))
	var known []string
	for _, m := range members {
		if err := checkMember(m); err != nil {
			return err
		}
		if other, dup := byAddr[m.Address]; dup {
			return fmt.Errorf("members %s and %s share the address %s", other, m.ID, m.Address)
		}
		byAddr[m.Address] = m.ID
		addr, ok := raftAddr[m.ID]
		if !ok {
			continue
		}
		if addr != m.Address {
			return fmt.Errorf("member %s is at %s, but this cluster's Raft configuration has it at %s (a snapshot of another cluster?)", m.ID, m.Address, addr)
		}
		known = append(known, m.ID)
	}
	if len(known) == 0 {
		ids := make([]string, 0, len(raftAddr))
		for id := range raftAddr {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		return fmt.Errorf("none of its members (%s) is in this cluster's Raft configuration (%s): a snapshot of another cluster?",
			memberIDs(members), strings.Join(ids, ", "))
	}
	if a := st.Active.Node; a != "" {
		if _, ok := st.Members[a]; !ok {
			return fmt.Errorf("its active node %s is not one of its members (%s)", a, memberIDs(members))
		}
	}
	return nil
}

func checkMember(m Member) error {
	if m.ID == "" {
		return fmt.Errorf("a member at %q has no ID", m.Address)
	}
	if !m.Role.Valid() {
		return fmt.Errorf("member %s: role %q is not gateway or witness", m.ID, m.Role)
	}
	host, port, err := net.SplitHostPort(m.Address)
	if err != nil || host == "" {
		return fmt.Errorf("member %s: address %q is not host:port", m.ID, m.Address)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("member %s: address %q has no port in 1-65535", m.ID, m.Address)
	}
	return nil
}

func memberIDs(ms []Member) string {
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.ID
	}
	return strings.Join(ids, ", ")
}

// checkSealed opens every SA with sealer and says how many do not open,
// naming the first (in ID order). The plaintext is wiped at once: the
// check needs to know the key fits, not what it opens.
func checkSealed(st *State, sealer *Sealer) error {
	ids := make([]string, 0, len(st.SAs))
	for id := range st.SAs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var (
		bad   int
		first error
	)
	for _, id := range ids {
		pt, err := sealer.Open(id, st.SAs[id].Sealed)
		clear(pt)
		if err != nil {
			bad++
			if first == nil {
				first = err
			}
		}
	}
	if bad == 0 {
		return nil
	}
	hint := ""
	if errors.Is(first, ErrSealKey) {
		hint = " (a snapshot of another cluster, or from before a cluster key rotation?)"
	}
	return fmt.Errorf("%d of its %d SAs do not open with this cluster's key%s; the first: %w", bad, len(ids), hint, first)
}
