package raftstore_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/internal/faultnet"
	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/raftstore"
)

type fixture struct {
	t   *testing.T
	ca  *pki.CA
	net *faultnet.Net
	// For the stores opened from then on: Raft's heartbeat (and election)
	// timeout, default 100 ms, and the logger, default one whose output
	// the test prints if it fails.
	heartbeat time.Duration
	log       *slog.Logger
}

func newFixture(t *testing.T) *fixture {
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, ca: ca, net: faultnet.New()}
	// The nodes' logs are kept, and shown only when the test fails: a
	// failure under a busy machine (CI) is otherwise a bare timeout.
	var logs lockedBuffer
	f.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the nodes' logs:\n%s", logs.String())
		}
	})
	return f
}

func (f *fixture) material(ca *pki.CA, id string) *pki.Material {
	f.t.Helper()
	nc, err := ca.Issue(id, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	m, err := pki.FromPEM(ca.PEM, nc.CertPEM, nc.KeyPEM)
	if err != nil {
		f.t.Fatal(err)
	}
	return m
}

func (f *fixture) open(id string, mat *pki.Material, authorize pki.Authorize) *raftstore.Store {
	f.t.Helper()
	if mat == nil {
		mat = f.material(f.ca, id)
	}
	cfg := f.config(id, mat)
	cfg.Authorize = authorize
	s, err := raftstore.Open(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { s.Close() })
	return s
}

// config is the configuration open gives a store with mat.
func (f *fixture) config(id string, mat *pki.Material) raftstore.Config {
	hb := cmp.Or(f.heartbeat, 100*time.Millisecond)
	return raftstore.Config{NodeID: id, BindAddr: "127.0.0.1:0", DataDir: f.t.TempDir(), TLS: mat,
		Network: f.net, HeartbeatTimeout: hb, ElectionTimeout: hb,
		// The lease as long as Raft allows: a leader that fences itself
		// because a busy machine (CI builds the other packages beside
		// these tests) delayed one answer by 30 ms fails tests that ask
		// the leader something; none of them is about the lease.
		LeaderLeaseTimeout: hb, NoSync: true, Logger: f.log}
}

// lockedBuffer is a bytes.Buffer the nodes' goroutines may log to at once.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitLeader(t *testing.T, s *raftstore.Store) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !s.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// form bootstraps a cluster on the first store and joins the others to it
// as gateways, in order.
func form(t *testing.T, stores []*raftstore.Store) {
	t.Helper()
	if err := stores[0].Bootstrap([]raftstore.Server{{ID: stores[0].NodeID(), Address: stores[0].Addr()}}); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, stores[0])
	for i, s := range stores[1:] {
		if err := s.JoinCluster(ctx(t, 10*time.Second), []string{stores[0].Addr()}, raftstore.RoleGateway, 50-i); err != nil {
			t.Fatalf("join %s: %v", s.NodeID(), err)
		}
	}
}

func ctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func voters(t *testing.T, s *raftstore.Store) map[string]string {
	t.Helper()
	servers, err := s.Servers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, srv := range servers {
		out[string(srv.ID)] = string(srv.Address)
	}
	return out
}

func suffrages(t *testing.T, s *raftstore.Store) map[string]raft.ServerSuffrage {
	t.Helper()
	servers, err := s.Servers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]raft.ServerSuffrage{}
	for _, srv := range servers {
		out[string(srv.ID)] = srv.Suffrage
	}
	return out
}

// A learner that never answers costs the leader nothing; the same node
// added as a voter takes the quorum with it, which is why JoinCluster
// joins as a learner first.
func TestLearnerThatNeverAnswersLeavesTheLeaderItsQuorum(t *testing.T) {
	f := newFixture(t)
	s1 := f.open("gw1", nil, nil)
	if err := s1.Bootstrap([]raftstore.Server{{ID: "gw1", Address: s1.Addr()}}); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, s1)
	dead := raftstore.MemberCmd{ID: "gw2", Address: "127.0.0.1:1", Role: raftstore.RoleGateway}
	if err := s1.JoinAsLearner(ctx(t, 5*time.Second), dead); err != nil {
		t.Fatal(err)
	}
	if got := suffrages(t, s1)["gw2"]; got != raft.Nonvoter {
		t.Fatalf("gw2 after JoinAsLearner is a %v, want a nonvoter", got)
	}
	// Many leases later the leader still leads and commits.
	time.Sleep(20 * 30 * time.Millisecond)
	if !s1.IsLeader() {
		t.Fatal("the leader lost its lease to a learner that never answered")
	}
	if err := s1.Barrier(ctx(t, 5*time.Second)); err != nil {
		t.Fatalf("committing with a dead learner in the configuration: %v", err)
	}
	// Promoting it moves the quorum onto a node that cannot answer.
	if err := s1.Join(ctx(t, 5*time.Second), dead); err == nil {
		deadline := time.Now().Add(10 * time.Second)
		for s1.IsLeader() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if s1.IsLeader() {
		t.Fatal("the leader kept leading two voters with one of them dead: the test does not see quorum loss")
	}
}

func TestMembershipJoinIsIdempotentLeaveAndRemove(t *testing.T) {
	f := newFixture(t)
	s1 := f.open("gw1", nil, nil)
	if err := s1.Bootstrap([]raftstore.Server{{ID: "gw1", Address: s1.Addr()}}); err != nil {
		t.Fatal(err)
	}
	if err := s1.Bootstrap([]raftstore.Server{{ID: "gw1", Address: s1.Addr()}}); err != nil {
		t.Fatalf("bootstrapping twice must be a no-op: %v", err)
	}
	waitLeader(t, s1)
	s2 := f.open("gw2", nil, nil)
	w1 := f.open("w1", nil, nil)
	for i := 0; i < 2; i++ {
		if err := s2.JoinCluster(ctx(t, 10*time.Second), []string{s1.Addr()}, raftstore.RoleGateway, 50+i); err != nil {
			t.Fatalf("join %d: %v", i, err)
		}
	}
	if err := w1.JoinCluster(ctx(t, 10*time.Second), []string{s2.Addr()}, raftstore.RoleWitness, 0); err != nil {
		t.Fatalf("witness join through a follower: %v", err)
	}
	if v := voters(t, s1); len(v) != 3 || v["gw2"] != s2.Addr() || v["w1"] != w1.Addr() {
		t.Fatalf("voters after joins = %v", v)
	}
	for id, suffrage := range suffrages(t, s1) {
		if suffrage != raft.Voter {
			t.Errorf("%s is a %v after JoinCluster returned: a joiner that caught up must vote", id, suffrage)
		}
	}
	var m raftstore.Member
	s1.FSM().View(func(st *raftstore.State) { m = st.Members["gw2"] })
	if m.Priority != 51 || m.Role != raftstore.RoleGateway {
		t.Errorf("gw2 member = %+v: the second join must refresh the metadata", m)
	}
	// A node that comes back on another address replaces its old entry.
	if err := s1.Join(ctx(t, 5*time.Second), raftstore.MemberCmd{ID: "w1", Address: "127.0.0.1:1", Role: raftstore.RoleWitness}); err != nil {
		t.Fatal(err)
	}
	if v := voters(t, s1); len(v) != 3 || v["w1"] != "127.0.0.1:1" {
		t.Errorf("voters after an address change = %v", v)
	}
	if err := s1.Remove(ctx(t, 5*time.Second), "w1"); err != nil {
		t.Fatal(err)
	}
	if err := s2.Leave(ctx(t, 10*time.Second)); err != nil {
		t.Fatalf("leave: %v", err)
	}
	if v := voters(t, s1); len(v) != 1 {
		t.Errorf("voters after leave and remove = %v", v)
	}
	var members int
	s1.FSM().View(func(st *raftstore.State) { members = len(st.Members) })
	if members != 0 {
		t.Errorf("%d members left in the state after leave and remove (gw1 never recorded itself)", members)
	}
	if err := s2.Join(ctx(t, time.Second), raftstore.MemberCmd{ID: "x", Address: "y:1", Role: raftstore.RoleGateway}); !errors.Is(err, raftstore.ErrNotLeader) {
		t.Errorf("join on a follower: err = %v, want ErrNotLeader", err)
	}
}

func TestTransportAuthorisesPeersByCertificate(t *testing.T) {
	f := newFixture(t)
	s1 := f.open("gw1", nil, func(id string) error {
		if strings.HasPrefix(id, "gw") || id == "w1" {
			return nil
		}
		return errors.New("not allowed")
	})
	if err := s1.Bootstrap([]raftstore.Server{{ID: "gw1", Address: s1.Addr()}}); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, s1)

	other, err := pki.NewCA("someone else", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	stranger := f.open("gw9", f.material(other, "gw9"), nil)
	if err := stranger.JoinCluster(ctx(t, 500*time.Millisecond), []string{s1.Addr()}, raftstore.RoleGateway, 1); err == nil {
		t.Error("a node with a certificate from another CA joined")
	}
	denied := f.open("intruder", nil, nil)
	if err := denied.JoinCluster(ctx(t, 500*time.Millisecond), []string{s1.Addr()}, raftstore.RoleGateway, 1); err == nil {
		t.Error("a node refused by the authorisation hook joined")
	}
	// A node may only join as the identity in its certificate.
	imp := f.open("gw3", f.material(f.ca, "gw3"), nil)
	err = imp.Call(ctx(t, 500*time.Millisecond), []string{s1.Addr()}, &raftstore.RPCRequest{Op: "join", ID: "gw1", Address: imp.Addr(), Role: raftstore.RoleGateway})
	if err == nil || !strings.Contains(err.Error(), "certificate says") {
		t.Errorf("joining under another node's ID: err = %v", err)
	}
	if v := voters(t, s1); len(v) != 1 {
		t.Errorf("voters = %v, want only gw1", v)
	}
}

// A node whose agent is busy (not reading LeaderCh) must keep taking part
// in Raft: leadership moves around a cluster nobody reads the leadership
// channel of, and every new leader still commits. With Config.NotifyCh
// (Raft blocks until it is read) the second change on a node stalls its
// main loop for good, and with it the agent waiting on a Raft future.
func TestLeadershipChangesNeverWaitForTheirReader(t *testing.T) {
	f := newFixture(t)
	stores := []*raftstore.Store{f.open("gw1", nil, nil), f.open("gw2", nil, nil), f.open("gw3", nil, nil)}
	form(t, stores)
	leader := stores[0]
	for round := 0; round < 6; round++ {
		next := stores[(round+1)%len(stores)]
		if next == leader {
			continue
		}
		if err := leader.TransferLeadership(next.NodeID(), next.Addr()); err != nil {
			t.Fatalf("round %d: transferring %s → %s: %v", round, leader.NodeID(), next.NodeID(), err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			leader = nil
			for _, s := range stores {
				if s.IsLeader() {
					leader = s
				}
			}
			if leader != nil {
				if _, err := leader.Apply(ctx(t, 2*time.Second), &raftstore.MemberCmd{ID: "gw1", Address: stores[0].Addr(), Role: raftstore.RoleGateway, Priority: round}); err == nil {
					break
				} else if time.Now().After(deadline) {
					t.Fatalf("round %d: %s leads but cannot commit: %v", round, leader.NodeID(), err)
				}
			} else if time.Now().After(deadline) {
				t.Fatalf("round %d: no leader within 10 s after the transfer", round)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
