package raftstore

import (
	"time"

	"github.com/hashicorp/raft"
)

// warmEvery is how often a follower makes sure it holds an open Raft
// connection to every other voter.
const warmEvery = time.Second

// keepVotersWarm keeps an open, pooled Raft connection from this follower
// to every other voter but the leader, until the store closes.
//
// Followers never send each other anything while a leader lives, so the
// first RPC between two of them is an election's vote request, and it
// waited for a TCP connect and a mutual-TLS handshake. In the one-CPU lab
// guest that was longer than the candidate's patience: the first round
// of votes failed and the election took Raft's randomised election
// timeout more (an `elect` phase of 200–300 ms in four runs of five at
// the product's timings, against 25–50 ms when it did not wait).
//
// The RPC that keeps a connection open is an AppendEntries at term 0:
// every Raft node drops one from an older term before it looks at
// anything else, silently and without touching its state, and answers,
// which returns the connection to the transport's pool. A pooled
// connection that died (the peer restarted) fails that RPC and is
// dropped; the next round dials a fresh one.
func (s *Store) keepVotersWarm() {
	t := time.NewTicker(warmEvery)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		s.warmOnce()
	}
}

// warmOnce sends the keep-open RPC to each voter that needs one.
func (s *Store) warmOnce() {
	if s.raft.State() != raft.Follower {
		return
	}
	servers, err := s.Servers()
	if err != nil {
		return
	}
	_, leader := s.raft.LeaderWithID()
	self := []byte(s.cfg.NodeID)
	addr := []byte(s.layer.Addr().String())
	for _, srv := range servers {
		if srv.Suffrage != raft.Voter || string(srv.ID) == s.cfg.NodeID || srv.ID == leader {
			continue
		}
		req := &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: self, Addr: addr},
			Term:      0,
		}
		var resp raft.AppendEntriesResponse
		// The answer says nothing (a refusal at the peer's term): only
		// the connection it leaves in the pool matters. An error drops
		// the connection, and the next round dials again.
		_ = s.transport.AppendEntries(srv.ID, srv.Address, req, &resp)
	}
}
