//lint:file-ignore SA1019 the forgeries fill the deprecated Leader and Candidate fields, as hashicorp/raft itself still does

package raftstore_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/handoffvpn/handoff/internal/faultnet"
	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/raftstore"
)

// rogueStream is a raft.StreamLayer that reaches a node the way a peer
// does (mutual TLS with a certificate, then the 'R' service byte) but for
// whoever holds the certificate: the attacker of issue 17. It only dials.
// Its TLS config is built here, not with pki's, so that it speaks exactly
// what any client with the key could.
type rogueStream struct {
	from string
	net  *faultnet.Net
	tls  *tls.Config
	done chan struct{}
	once sync.Once
}

func newRogueStream(from string, n *faultnet.Net, mat *pki.Material) *rogueStream {
	return &rogueStream{from: from, net: n, done: make(chan struct{}), tls: &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{mat.Cert},
		InsecureSkipVerify: true, //nolint:gosec // the attacker does not care who answers
	}}
}

func (r *rogueStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	raw, err := r.net.DialContext(ctx, r.from, string(addr))
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, r.tls)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	if _, err := conn.Write([]byte{'R'}); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func (r *rogueStream) Accept() (net.Conn, error) { <-r.done; return nil, net.ErrClosed }
func (r *rogueStream) Close() error              { r.once.Do(func() { close(r.done) }); return nil }
func (r *rogueStream) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// rogue is hashicorp/raft's own client transport over a rogueStream: what
// it sends is byte for byte what a Raft peer sends.
func rogue(t *testing.T, f *fixture, mat *pki.Material) *raft.NetworkTransport {
	t.Helper()
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: newRogueStream(mat.NodeID, f.net, mat), MaxPool: 1, Timeout: 2 * time.Second,
		Logger: hclog.NewNullLogger(),
	})
	t.Cleanup(func() { tr.Close() })
	return tr
}

// threeNodes starts gw1 (bootstrapped, so it leads), then gw2 and gw3
// joined through it, and waits until every node has the three voters and
// members.
func threeNodes(t *testing.T, f *fixture) []*raftstore.Store {
	t.Helper()
	stores := []*raftstore.Store{f.open("gw1", nil, nil), f.open("gw2", nil, nil), f.open("gw3", nil, nil)}
	if err := stores[0].Bootstrap([]raftstore.Server{{ID: "gw1", Address: stores[0].Addr()}}); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, stores[0])
	for _, s := range stores {
		if err := s.JoinCluster(ctx(t, 10*time.Second), []string{stores[0].Addr()}, raftstore.RoleGateway, 1); err != nil {
			t.Fatalf("join %s: %v", s.NodeID(), err)
		}
	}
	// Settled: every node votes (a join is a learner first, then a voter),
	// and every node's log ends where the leader's does, so that nothing
	// of the joins lands while a test watches the log.
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range stores {
		for !allVote(t, s) || len(memberIDs(s)) != 3 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: voters %v, members %v", s.NodeID(), suffrages(t, s), memberIDs(s))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for {
		want, _ := lastLog(t, stores[0])
		caughtUp := true
		for _, s := range stores[1:] {
			if got, _ := lastLog(t, s); got != want {
				caughtUp = false
			}
		}
		if caughtUp {
			return stores
		}
		if time.Now().After(deadline) {
			t.Fatal("the followers' logs did not reach the leader's")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func allVote(t *testing.T, s *raftstore.Store) bool {
	t.Helper()
	sf := suffrages(t, s)
	for _, v := range sf {
		if v != raft.Voter {
			return false
		}
	}
	return len(sf) == 3
}

func memberIDs(s *raftstore.Store) []string {
	var ids []string
	s.FSM().View(func(st *raftstore.State) {
		for _, m := range st.SortedMembers() {
			ids = append(ids, m.ID)
		}
	})
	return ids
}

// lastLog is a store's last log index and term (what a real leader
// would build on, so that a forged entry is one Raft would append).
func lastLog(t *testing.T, s *raftstore.Store) (index, term uint64) {
	t.Helper()
	st := s.Raft().Stats()
	var err error
	if index, err = strconv.ParseUint(st["last_log_index"], 10, 64); err == nil {
		term, err = strconv.ParseUint(st["last_log_term"], 10, 64)
	}
	if err != nil {
		t.Fatal(err)
	}
	return index, term
}

// forgery is one Raft RPC an attacker sends to target, claiming to be id
// at addr.
type forgery struct {
	name string
	send func(tr *raft.NetworkTransport, target *raftstore.Store, id, addr string) error
}

// forgeries covers every Raft RPC type: AppendEntries with an entry that
// adds the member "ghost" at a higher term (sent alone, and through the
// pipeline), a heartbeat (Raft's fast path), RequestVote and
// RequestPreVote at a higher term, InstallSnapshot of a state and
// configuration that hold "ghost", and TimeoutNow.
func forgeries(t *testing.T) []forgery {
	ghostEntry, err := raftstore.Encode(&raftstore.MemberCmd{ID: "ghost", Address: "127.0.0.1:1", Role: raftstore.RoleGateway, Priority: 1000})
	if err != nil {
		t.Fatal(err)
	}
	header := func(id, addr string) raft.RPCHeader {
		return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(id), Addr: []byte(addr)}
	}
	appendReq := func(target *raftstore.Store, id, addr string) *raft.AppendEntriesRequest {
		idx, lt := lastLog(t, target)
		term := target.Term() + 10
		return &raft.AppendEntriesRequest{RPCHeader: header(id, addr), Term: term, Leader: []byte(addr),
			PrevLogEntry: idx, PrevLogTerm: lt, LeaderCommitIndex: idx + 1,
			Entries: []*raft.Log{{Index: idx + 1, Term: term, Type: raft.LogCommand, Data: ghostEntry}}}
	}
	return []forgery{
		{"AppendEntries", func(tr *raft.NetworkTransport, target *raftstore.Store, id, addr string) error {
			return tr.AppendEntries(raft.ServerID(target.NodeID()), raft.ServerAddress(target.Addr()),
				appendReq(target, id, addr), &raft.AppendEntriesResponse{})
		}},
		{"AppendEntries pipelined", func(tr *raft.NetworkTransport, target *raftstore.Store, id, addr string) error {
			p, err := tr.AppendEntriesPipeline(raft.ServerID(target.NodeID()), raft.ServerAddress(target.Addr()))
			if err != nil {
				return err
			}
			defer p.Close()
			fut, err := p.AppendEntries(appendReq(target, id, addr), &raft.AppendEntriesResponse{})
			if err != nil {
				return err
			}
			return fut.Error()
		}},
		{"heartbeat", func(tr *raft.NetworkTransport, target *raftstore.Store, id, addr string) error {
			return tr.AppendEntries(raft.ServerID(target.NodeID()), raft.ServerAddress(target.Addr()),
				&raft.AppendEntriesRequest{RPCHeader: header(id, addr), Term: target.Term() + 10, Leader: []byte(addr)},
				&raft.AppendEntriesResponse{})
		}},
		{"RequestVote", func(tr *raft.NetworkTransport, target *raftstore.Store, id, addr string) error {
			return tr.RequestVote(raft.ServerID(target.NodeID()), raft.ServerAddress(target.Addr()),
				&raft.RequestVoteRequest{RPCHeader: header(id, addr), Term: target.Term() + 10, Candidate: []byte(addr),
					LastLogIndex: 1 << 40, LastLogTerm: 1 << 40, LeadershipTransfer: true},
				&raft.RequestVoteResponse{})
		}},
		{"RequestPreVote", func(tr *raft.NetworkTransport, target *raftstore.Store, id, addr string) error {
			return tr.RequestPreVote(raft.ServerID(target.NodeID()), raft.ServerAddress(target.Addr()),
				&raft.RequestPreVoteRequest{RPCHeader: header(id, addr), Term: target.Term() + 10,
					LastLogIndex: 1 << 40, LastLogTerm: 1 << 40},
				&raft.RequestPreVoteResponse{})
		}},
		{"InstallSnapshot", func(tr *raft.NetworkTransport, target *raftstore.Store, id, addr string) error {
			st := raftstore.NewState()
			st.Members["ghost"] = raftstore.Member{ID: "ghost", Address: "127.0.0.1:1", Role: raftstore.RoleGateway, Priority: 1000}
			st.LastIndex = 1 << 30
			var data bytes.Buffer
			if err := raftstore.WriteSnapshot(&data, st); err != nil {
				return err
			}
			cfg := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: "ghost", Address: "127.0.0.1:1"}}}
			term := target.Term() + 10
			return tr.InstallSnapshot(raft.ServerID(target.NodeID()), raft.ServerAddress(target.Addr()),
				&raft.InstallSnapshotRequest{RPCHeader: header(id, addr), SnapshotVersion: raft.SnapshotVersionMax,
					Term: term, Leader: []byte(addr), LastLogIndex: 1 << 30, LastLogTerm: term,
					Configuration: raft.EncodeConfiguration(cfg), ConfigurationIndex: 1 << 30, Size: int64(data.Len())},
				&raft.InstallSnapshotResponse{}, &data)
		}},
		{"TimeoutNow", func(tr *raft.NetworkTransport, target *raftstore.Store, id, addr string) error {
			return tr.TimeoutNow(raft.ServerID(target.NodeID()), raft.ServerAddress(target.Addr()),
				&raft.TimeoutNowRequest{RPCHeader: header(id, addr)}, &raft.TimeoutNowResponse{})
		}},
	}
}

// Issue 17, finding 1: a Raft RPC speaks for the node of the certificate
// it came with, and only a member of the configuration is heard. gw2's
// certificate claiming to be "ghost", or the leader gw1, and a certificate
// the CA signed for a node that never was a member (as itself, or claiming
// gw1) are refused on every RPC type with an error that says why, and
// nothing reaches the target: its term, log, configuration and members are
// as before. On the old transport the forged AppendEntries made gw3 follow
// "ghost" and apply its MemberCmd, and TimeoutNow started an election.
func TestRaftRPCsAreBoundToTheCertificate(t *testing.T) {
	f := newFixture(t)
	// Raft's own elections must not move the term while the test looks:
	// a shared CI machine delays a 100 ms heartbeat now and then.
	f.heartbeat = time.Second
	var logs lockedBuffer
	f.log = slog.New(slog.NewTextHandler(&logs, nil))
	stores := threeNodes(t, f)
	gw1, gw2, gw3 := stores[0], stores[1], stores[2]
	target := gw3 // a follower: the one a forged leader would capture

	attacks := []struct {
		name     string
		cert     *pki.Material
		id, addr string
		want     string // in the refusal
	}{
		{"gw2's certificate claiming ghost", f.material(f.ca, "gw2"), "ghost", "127.0.0.1:1", `certificate is "gw2"`},
		{"gw2's certificate claiming the leader gw1", f.material(f.ca, "gw2"), "gw1", gw1.Addr(), `certificate is "gw2"`},
		{"a non-member's certificate as itself", f.material(f.ca, "gw9"), "gw9", "127.0.0.1:2", "not in this node's Raft configuration"},
		{"a non-member's certificate claiming gw1", f.material(f.ca, "gw9"), "gw1", gw1.Addr(), `certificate is "gw9"`},
	}
	term := target.Term()
	index, _ := lastLog(t, target)
	for _, a := range attacks {
		tr := rogue(t, f, a.cert)
		for _, fg := range forgeries(t) {
			err := fg.send(tr, target, a.id, a.addr)
			switch {
			case err == nil:
				t.Errorf("%s: %s accepted", a.name, fg.name)
			case !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), a.want):
				t.Errorf("%s: %s: error %q does not say it was refused and why (%q)", a.name, fg.name, err, a.want)
			}
		}
	}
	// The honest use of a member's certificate still works: the refusals
	// above are the identity check, not a broken client. A stale
	// RequestVote is answered (not granted) without a transport error.
	var resp raft.RequestVoteResponse
	if err := rogue(t, f, f.material(f.ca, "gw2")).RequestVote(raft.ServerID(target.NodeID()), raft.ServerAddress(target.Addr()),
		&raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("gw2"), Addr: []byte(gw2.Addr())},
			Term: 1, Candidate: []byte(gw2.Addr())}, &resp); err != nil || resp.Granted {
		t.Errorf("gw2 as itself, stale RequestVote: granted %v, err %v; want an answer, not granted", resp.Granted, err)
	}

	time.Sleep(300 * time.Millisecond) // anything accepted would have been applied by now
	if got := target.Term(); got != term {
		t.Errorf("target term %d → %d: a refused RPC moved it", term, got)
	}
	if got, _ := lastLog(t, target); got != index {
		t.Errorf("target last log index %d → %d", index, got)
	}
	for _, s := range stores {
		if v := voters(t, s); len(v) != 3 || v["ghost"] != "" {
			t.Errorf("%s: voters %v", s.NodeID(), v)
		}
		if m := memberIDs(s); strings.Join(m, ",") != "gw1,gw2,gw3" {
			t.Errorf("%s: members %v, want gw1,gw2,gw3", s.NodeID(), m)
		}
	}
	if id, _ := target.Leader(); id != "gw1" {
		t.Errorf("target follows %q, want gw1", id)
	}
	// Each refusal is logged (at most once per peer and 10 s), with the
	// peer's certificate serial and never its key.
	for _, want := range []string{`msg="refused a raft RPC" node=gw3 peer=gw2`, `msg="refused a raft RPC" node=gw3 peer=gw9`, "serial="} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Error("a private key was logged")
	}
}

// A member that missed the configuration change which added the node now
// leading must still follow it: gw3 is cut off while gw4 joins and takes
// the lead, so gw3's configuration has never heard of gw4. It asks the
// members it knows, which vouch for gw4 (peerAuthz.vouched), and catches
// up. Binding RPCs to the configuration without that would leave gw3
// refusing its leader for ever.
func TestLaggingMemberFollowsALeaderItHasNotSeenJoin(t *testing.T) {
	f := newFixture(t)
	f.heartbeat = 300 * time.Millisecond
	stores := threeNodes(t, f)
	gw1, gw3 := stores[0], stores[2]
	f.net.Isolate("gw3")
	gw4 := f.open("gw4", nil, nil)
	if err := gw4.JoinCluster(ctx(t, 10*time.Second), []string{gw1.Addr()}, raftstore.RoleGateway, 1); err != nil {
		t.Fatal(err)
	}
	if err := gw1.TransferLeadership("gw4", gw4.Addr()); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, gw4)
	if v := voters(t, gw3); v["gw4"] != "" {
		t.Fatalf("gw3 knows gw4 already: %v", v)
	}
	f.net.Heal()
	if _, err := gw4.Apply(ctx(t, 5*time.Second), &raftstore.MemberCmd{ID: "gw4", Address: gw4.Addr(), Role: raftstore.RoleGateway, Priority: 7}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var m raftstore.Member
		gw3.FSM().View(func(st *raftstore.State) { m = st.Members["gw4"] })
		leader, _ := gw3.Leader()
		if m.Priority == 7 && leader == "gw4" && voters(t, gw3)["gw4"] == gw4.Addr() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gw3 did not catch up with gw4: follows %q, gw4 member %+v, voters %v", leader, m, voters(t, gw3))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Issue 17, finding 2, at the transport: a cluster RPC from a
// certificate the CA signed for a node that is not a member reaches no
// handler (operator requests, health reports, leave, ping, membership
// questions), and join, the one it may call, cannot take a member's
// address to evict it. A member's RPCs are served as before. On the old
// transport every one of them reached its handler, and the join removed
// gw2.
func TestClusterRPCsNeedMembership(t *testing.T) {
	f := newFixture(t)
	stores := []*raftstore.Store{f.open("gw1", nil, nil), f.open("gw2", nil, nil), f.open("gw3", nil, nil)}
	gw1, gw2 := stores[0], stores[1]
	var (
		mu     sync.Mutex
		served []string
	)
	gw1.SetRPCHandler(func(_ context.Context, peer string, req *raftstore.RPCRequest) *raftstore.RPCResponse {
		mu.Lock()
		defer mu.Unlock()
		served = append(served, peer+" "+req.Op)
		return &raftstore.RPCResponse{}
	})
	if err := gw1.Bootstrap([]raftstore.Server{{ID: "gw1", Address: gw1.Addr()}}); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, gw1)
	for _, s := range stores[1:] {
		if err := s.JoinCluster(ctx(t, 10*time.Second), []string{gw1.Addr()}, raftstore.RoleGateway, 1); err != nil {
			t.Fatal(err)
		}
	}

	outsider := f.open("gw9", nil, nil) // signed by the cluster CA, never joined
	for _, op := range []string{"operator.remove-peer", "operator.promote", "operator.drain", "operator.transfer-leadership",
		"health", "leave", "ping", "raft.member"} {
		resp, err := outsider.CallOnce(ctx(t, 5*time.Second), gw1.Addr(), &raftstore.RPCRequest{Op: op, ID: "gw2"})
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		if !strings.Contains(resp.Error, "refused") || !strings.Contains(resp.Error, "not in this node's Raft configuration") || resp.Code != "refused" {
			t.Errorf("%s from a non-member: answer %+v, want a refusal that says it is not a member", op, resp)
		}
	}
	resp, err := callLeaderOnce(t, outsider, stores, &raftstore.RPCRequest{Op: "join", ID: "gw9", Address: gw2.Addr(), Role: raftstore.RoleGateway})
	if err != nil || !strings.Contains(resp.Error, "belongs to member gw2") {
		t.Errorf("join on gw2's address: %+v, %v; want it refused", resp, err)
	}
	mu.Lock()
	if len(served) != 0 {
		t.Errorf("a non-member's RPCs reached the handler: %v", served)
	}
	mu.Unlock()
	if v := voters(t, gw1); len(v) != 3 || v["gw2"] != gw2.Addr() {
		t.Errorf("voters = %v, want gw1, gw2, gw3 as before", v)
	}

	// A member's operator request is served.
	if resp, err := gw2.CallOnce(ctx(t, 5*time.Second), gw1.Addr(), &raftstore.RPCRequest{Op: "operator.remove-peer", ID: "gw3"}); err != nil || resp.Error != "" {
		t.Errorf("a member's forwarded request: %+v, %v", resp, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(served) != 1 || served[0] != "gw2 operator.remove-peer" {
		t.Errorf("served %v, want gw2's operator.remove-peer", served)
	}
}

// callLeaderOnce sends req from one node to whichever of stores leads, once
// per leader: a busy machine may move leadership between the test's look
// and the call, and only the leader judges a join.
func callLeaderOnce(t *testing.T, from *raftstore.Store, stores []*raftstore.Store, req *raftstore.RPCRequest) (*raftstore.RPCResponse, error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, s := range stores {
			if !s.IsLeader() {
				continue
			}
			resp, err := from.CallOnce(ctx(t, 5*time.Second), s.Addr(), req)
			if err != nil || resp.Error != raftstore.ErrNotLeader.Error() {
				return resp, err
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no node led long enough to answer within 10 s", req.Op)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// impostorStream accepts Raft connections the way a node does, presenting
// a certificate the CA signed for another node: what answers at a
// member's address when the address changed hands.
type impostorStream struct {
	ln  net.Listener
	tls *tls.Config
}

func (s *impostorStream) Accept() (net.Conn, error) {
	raw, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	conn := tls.Server(raw, s.tls)
	var kind [1]byte
	if err := conn.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	if _, err := conn.Read(kind[:]); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func (s *impostorStream) Close() error   { return s.ln.Close() }
func (s *impostorStream) Addr() net.Addr { return s.ln.Addr() }
func (s *impostorStream) Dial(raft.ServerAddress, time.Duration) (net.Conn, error) {
	return nil, net.ErrClosed
}

// A Raft dial is bound to the certificate too: whoever answers at a
// member's address must hold that member's certificate. Here gw2 and gw3
// are gone and a node with a certificate the CA signed for gw9 answers at
// gw3's address, acknowledging every AppendEntries. The old transport
// counted it as gw3, so gw1 alone committed an entry with a "majority" of
// gw1 and the impostor; now gw1 refuses the connection, cannot reach a
// quorum, and commits nothing.
func TestRaftDialIsBoundToTheCertificate(t *testing.T) {
	f := newFixture(t)
	f.heartbeat = time.Second
	stores := threeNodes(t, f)
	gw1, gw3 := stores[0], stores[2]
	addr := gw3.Addr()
	stores[1].Close()
	gw3.Close()

	ln, err := f.net.Listen("gw9", addr)
	if err != nil {
		t.Fatal(err)
	}
	mat := f.material(f.ca, "gw9")
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: &impostorStream{ln: ln, tls: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{mat.Cert},
			ClientAuth: tls.RequireAnyClientCert}},
		Timeout: time.Second, Logger: hclog.NewNullLogger(),
	})
	t.Cleanup(func() { tr.Close() })
	go func() {
		for rpc := range tr.Consumer() {
			switch c := rpc.Command.(type) {
			case *raft.AppendEntriesRequest:
				rpc.Respond(&raft.AppendEntriesResponse{Term: c.Term, Success: true, LastLog: c.PrevLogEntry + uint64(len(c.Entries))}, nil)
			case *raft.RequestVoteRequest:
				rpc.Respond(&raft.RequestVoteResponse{Term: c.Term, Granted: true}, nil)
			default:
				rpc.Respond(nil, nil)
			}
		}
	}()

	if _, err := gw1.Apply(ctx(t, 3*time.Second), &raftstore.MemberCmd{ID: "ghost", Address: "127.0.0.1:1", Role: raftstore.RoleGateway}); err == nil {
		t.Error("gw1 committed an entry with only an impostor at gw3's address to acknowledge it")
	}
	if m := memberIDs(gw1); strings.Join(m, ",") != "gw1,gw2,gw3" {
		t.Errorf("gw1's members %v, want gw1,gw2,gw3", m)
	}
}
