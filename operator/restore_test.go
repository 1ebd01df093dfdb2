package operator_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/internal/allocguard"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/ipsec/memdp"
	"github.com/handoffvpn/handoff/operator/fleet"
	"github.com/handoffvpn/handoff/raftstore"
)

// replicated is what a refused restore must leave as it was on a node:
// the members, the SAs as sealed, the active assignment.
func replicated(n *cluster.Node) string {
	var b strings.Builder
	n.Store.FSM().View(func(st *raftstore.State) {
		for _, m := range st.SortedMembers() {
			fmt.Fprintf(&b, "member %s %s %s %d\n", m.ID, m.Address, m.Role, m.Priority)
		}
		ids := make([]string, 0, len(st.SAs))
		for id := range st.SAs {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			fmt.Fprintf(&b, "sa %s %x\n", id, sha256.Sum256(st.SAs[id].Sealed))
		}
		fmt.Fprintf(&b, "active %s %d %s\n", st.Active.Node, st.Active.Term, st.Active.Phase)
	})
	return b.String()
}

func encodeSnapshot(t *testing.T, st *raftstore.State) string {
	t.Helper()
	var buf bytes.Buffer
	if err := raftstore.WriteSnapshot(&buf, st); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestRestoreRefusesAnotherClustersSnapshot: a snapshot sealed with another
// cluster's key, one whose members are another cluster's, one without
// members and a 16-byte one whose prefixes claim gigabytes are each refused
// with 400 naming why, and change nothing on any node; this cluster's own
// snapshot still restores.
func TestRestoreRefusesAnotherClustersSnapshot(t *testing.T) {
	e := start(t, []string{"gw1", "gw2"}, fleet.Options{})
	leaderURL := e.f.URL(e.first.Spec.ID)
	e.first.DP.Add(memdp.Synthetic(5, e.c.VIP)...)
	for _, n := range e.c.Nodes() {
		waitFor(t, n.Spec.ID+" to hold the 5 SAs", func() bool {
			var k int
			n.Store.FSM().View(func(st *raftstore.State) { k = len(st.SAs) })
			return k == 5
		})
	}
	code, _, raw := call(t, "GET", leaderURL+"/v1/snapshot", token, "", nil)
	if code != 200 {
		t.Fatalf("GET /v1/snapshot: %d %s", code, raw)
	}
	own, err := raftstore.ReadSnapshot(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}

	otherKey := make([]byte, raftstore.KeySize)
	if _, err := rand.Read(otherKey); err != nil {
		t.Fatal(err)
	}
	otherSealer, err := raftstore.NewSealer(otherKey)
	if err != nil {
		t.Fatal(err)
	}
	foreignKey := own.Clone()
	for id, e := range foreignKey.SAs {
		sealed, err := otherSealer.Seal(id, []byte("another cluster's SA"))
		if err != nil {
			t.Fatal(err)
		}
		foreignKey.SAs[id] = &raftstore.SAEntry{ID: id, Sealed: sealed, Term: e.Term, Index: e.Index}
	}
	foreignMembers := own.Clone()
	for id, m := range foreignMembers.Members {
		m.Address = strings.Replace(m.Address, "127.0.0.1", "198.51.100.7", 1)
		foreignMembers.Members[id] = m
	}
	noMembers := own.Clone()
	clear(noMembers.Members)
	noMembers.Active = raftstore.Active{}
	gigabytes := binary.AppendUvarint([]byte("HOSNAP\x01\x02{}\x00"), 1<<31-1)

	before := map[string]string{}
	for _, n := range e.c.Nodes() {
		before[n.Spec.ID] = replicated(n)
	}
	for _, c := range []struct {
		name, body string
		want       []string
	}{
		{"sealed with another key", encodeSnapshot(t, foreignKey), []string{"snapshot refused", "5 of its 5 SAs do not open with this cluster's key", "sealed with a different cluster key"}},
		{"another cluster's members", encodeSnapshot(t, foreignMembers), []string{"snapshot refused", "198.51.100.7", "this cluster's Raft configuration has it at 127.0.0.1"}},
		{"no members", encodeSnapshot(t, noMembers), []string{"snapshot refused", "it has no members"}},
		{"16 bytes claiming 2 GiB", string(gigabytes), []string{"malformed snapshot", "reading replay states of 2147483647 bytes"}},
	} {
		var body struct{ Error, Code string }
		var status int
		grew := allocguard.Allocated(func() {
			status, _, raw = call(t, "POST", leaderURL+"/v1/snapshot", token, c.body, &body)
		})
		if status != 400 || body.Code != "bad-snapshot" {
			t.Errorf("%s: %d %s, want 400 bad-snapshot", c.name, status, raw)
		}
		for _, w := range c.want {
			if !strings.Contains(body.Error, w) {
				t.Errorf("%s: the refusal %q does not say %q", c.name, body.Error, w)
			}
		}
		// The whole process (the cluster's nodes run in it) for one
		// request: the old reader took 2 GiB for the last one.
		if grew > 64<<20 {
			t.Errorf("%s: the request cost %d MiB", c.name, grew>>20)
		}
	}
	for _, n := range e.c.Nodes() {
		if after := replicated(n); after != before[n.Spec.ID] {
			t.Errorf("a refused restore changed %s:\nbefore %s\nafter  %s", n.Spec.ID, before[n.Spec.ID], after)
		}
	}

	if code, _, raw := call(t, "POST", leaderURL+"/v1/snapshot", token, encodeSnapshot(t, own), nil); code != 200 {
		t.Errorf("restoring this cluster's own snapshot: %d %s", code, raw)
	}
}
