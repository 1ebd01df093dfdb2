package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/raftstore"
)

// Issue 17, finding 2: a certificate the cluster CA signed for a node that
// never was a member, with no API token, sends operator.remove-peer (and
// the other forwarded operator requests) straight to the leader over the
// Raft port. The leader refuses each, naming why, and the peer stays. On
// the old transport the request was served and the peer removed. A
// member still forwards operator requests on behalf of its API
// (TestOperatorRequestWaitsOutAnElection here, and the operator
// package's promote through a follower).
func TestNonMemberCannotRunOperatorRequests(t *testing.T) {
	e := start(t, cluster.Options{Nodes: specs("gw1", "gw2", "w1")})
	leader, _ := e.waitActive(0)
	victim := "gw1"
	if leader.Spec.ID == victim {
		victim = "gw2"
	}
	mat, err := e.c.Certificate("gw9")
	if err != nil {
		t.Fatal(err)
	}
	outsider, err := raftstore.Open(raftstore.Config{NodeID: "gw9", BindAddr: "127.0.0.1:0", DataDir: t.TempDir(), TLS: mat,
		Network: e.c.Net, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { outsider.Close() })
	for _, req := range []*raftstore.RPCRequest{
		{Op: "operator.remove-peer", ID: victim},
		{Op: "operator.transfer-leadership", ID: victim},
		{Op: "operator.promote", ID: victim},
		{Op: "operator.drain"},
	} {
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		resp, err := outsider.CallOnce(ctx, leader.Store.Addr(), req)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", req.Op, err)
		}
		if resp.Error == "" || !strings.Contains(resp.Error, "not in this node's Raft configuration") {
			t.Errorf("%s from a non-member: answer %+v, want a refusal naming why", req.Op, resp)
		}
	}
	peers, err := leader.Agent.RaftPeers()
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 3 {
		t.Errorf("peers after the non-member's requests: %+v", peers)
	}
	if l, _ := leader.Store.Leader(); l != leader.Spec.ID {
		t.Errorf("leadership moved to %q", l)
	}
}
