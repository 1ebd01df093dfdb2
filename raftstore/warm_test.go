package raftstore_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/faultnet"
	"github.com/handoffvpn/handoff/raftstore"
)

// dialCount is a Network that counts the connections each node dials to
// each address.
type dialCount struct {
	*faultnet.Net
	mu    sync.Mutex
	dials map[[2]string]int
}

func (d *dialCount) DialContext(ctx context.Context, from, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.dials[[2]string{from, addr}]++
	d.mu.Unlock()
	return d.Net.DialContext(ctx, from, addr)
}

func (d *dialCount) between(a, b *raftstore.Store) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials[[2]string{a.NodeID(), b.Addr()}] + d.dials[[2]string{b.NodeID(), a.Addr()}]
}

// Two followers hold open Raft connections to each other before their
// leader dies, so the election after it dials nothing: its vote requests
// go out at once instead of behind a TCP and TLS handshake (which in the
// one-CPU lab guest cost the first round of votes).
func TestFollowersKeepConnectionsToEachOtherOpen(t *testing.T) {
	f := newFixture(t)
	net := &dialCount{Net: f.net, dials: map[[2]string]int{}}
	open := func(id string) *raftstore.Store {
		cfg := f.config(id, f.material(f.ca, id))
		cfg.Network = net
		s, err := raftstore.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	stores := []*raftstore.Store{open("gw1"), open("gw2"), open("gw3")}
	form(t, stores)
	gw2, gw3 := stores[1], stores[2]
	// Wait (bounded, generously) until the two followers have dialed each
	// other both ways: the keep-open rounds run every second.
	for deadline := time.Now().Add(30 * time.Second); ; {
		net.mu.Lock()
		both := net.dials[[2]string{"gw2", gw3.Addr()}] > 0 && net.dials[[2]string{"gw3", gw2.Addr()}] > 0
		net.mu.Unlock()
		if both {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the followers never opened connections to each other")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A few more rounds reuse them rather than dial again.
	before := net.between(gw2, gw3)
	time.Sleep(2500 * time.Millisecond)
	if got := net.between(gw2, gw3); got != before {
		t.Fatalf("the keep-open rounds dialed %d more connections between the followers: they do not reuse them", got-before)
	}
	if err := stores[0].Close(); err != nil {
		t.Fatal(err)
	}
	var next *raftstore.Store
	for deadline := time.Now().Add(30 * time.Second); next == nil; {
		for _, s := range []*raftstore.Store{gw2, gw3} {
			if s.IsLeader() {
				next = s
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no new leader")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := net.between(gw2, gw3); got != before {
		t.Fatalf("the election dialed %d connections between the followers: their votes waited for a handshake", got-before)
	}
	// And the new leader works: it commits.
	if _, err := next.Apply(ctx(t, 5*time.Second), &raftstore.MemberCmd{ID: next.NodeID(), Address: next.Addr(), Role: raftstore.RoleGateway, Priority: 1}); err != nil {
		t.Fatal(err)
	}
}
