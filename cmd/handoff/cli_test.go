package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/ipsec/memdp"
	"github.com/handoffvpn/handoff/operator/fleet"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/raftstore"
)

const cliToken = "cli-test-token-0123456789"

// cliCluster is an in-process cluster of three real nodes with every
// node's operator API on a loopback port.
type cliCluster struct {
	c     *cluster.Cluster
	f     *fleet.Fleet
	first *cluster.Node
	act   raftstore.Active
}

func startCLICluster(t *testing.T) *cliCluster {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	ids := []string{"gw1", "gw2", "gw3"}
	f, err := fleet.New(ids, fleet.Options{Tokens: []string{cliToken}, Logger: log, Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var specs []cluster.NodeSpec
	for i, id := range ids {
		specs = append(specs, cluster.NodeSpec{ID: id, Role: raftstore.RoleGateway, Priority: 100 - i})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: specs, Dir: t.TempDir(), HeartbeatTimeout: 250 * time.Millisecond, NoSync: true,
		Resources: []providers.Resource{{Kind: "eip", ID: "eipalloc-cli"}}, Events: f.Events, WrapProvider: f.WrapProvider, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Cleanup(func() { f.Close() }) // before the nodes close under the APIs
	first, act, err := c.WaitActive(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Serve(c, nil); err != nil {
		t.Fatal(err)
	}
	return &cliCluster{c: c, f: f, first: first, act: act}
}

// tokenFile writes tok to a file only its owner can read, as the CLI wants
// tokens: from a file or the environment, never the command line.
func tokenFile(t *testing.T, tok string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// handoff runs the CLI with args and returns its output.
func handoff(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, args, &out, &errOut)
	return out.String(), err
}

func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := handoff(t, args...)
	if err != nil {
		t.Fatalf("handoff %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// activeNode waits for a takeover at a term above after, then until every
// node knows the new leader and has applied its active entry, as an
// operator would before the next command.
func (cc *cliCluster) activeNode(t *testing.T, after uint64) (*cluster.Node, raftstore.Active) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, act, err := cc.c.WaitActive(ctx, after)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "every node to know the new active", func() bool {
		for _, o := range cc.c.Nodes() {
			leader, _ := o.Store.Leader()
			var a raftstore.Active
			o.Store.FSM().View(func(st *raftstore.State) { a = st.Active })
			if leader != n.Spec.ID || a.Node != act.Node || a.Term != act.Term || a.Phase != act.Phase {
				return false
			}
		}
		return true
	})
	return n, act
}

func historyLen(n *cluster.Node) int {
	var h int
	n.Store.FSM().View(func(st *raftstore.State) { h = len(st.History) })
	return h
}

func TestCLIVerbs(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: runs an in-process cluster; not with -short")
	}
	cc := startCLICluster(t)
	first := cc.first.Spec.ID
	addr := cc.f.URL(first)
	sas := memdp.Synthetic(12, cc.c.VIP)
	cc.first.DP.Add(sas...)
	tctx, stopTraffic := context.WithCancel(context.Background())
	defer stopTraffic()
	go cc.c.Traffic(tctx, 2*time.Millisecond, 1)
	waitUntil(t, "SAs replicated", func() bool {
		ok := true
		for _, n := range cc.c.Nodes() {
			var got int
			n.Store.FSM().View(func(st *raftstore.State) { got = len(st.Replay) })
			ok = ok && got == len(sas)
		}
		return ok
	})

	t.Run("status", func(t *testing.T) {
		out := mustCLI(t, "status", "-addr", addr)
		for _, want := range []string{"Node", first + " (gateway, Leader)", "Active", "SAs", "12 (replay states 12)", "NODE", "HEALTH", "gw2", "gw3"} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		var st map[string]any
		if err := json.Unmarshal([]byte(mustCLI(t, "status", "-json", "-addr", addr)), &st); err != nil {
			t.Fatal(err)
		}
		if st["active"] != first || st["leader"] != first {
			t.Errorf("status -json: active %v, leader %v", st["active"], st["leader"])
		}
	})

	t.Run("members", func(t *testing.T) {
		out := mustCLI(t, "members", "-addr", addr)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], "NODE") {
			t.Fatalf("members:\n%s", out)
		}
		var ms []agent.MemberStatus
		if err := json.Unmarshal([]byte(mustCLI(t, "members", "-json", "-addr", addr)), &ms); err != nil {
			t.Fatal(err)
		}
		if len(ms) != 3 || !ms[0].Voter || ms[0].Role != raftstore.RoleGateway {
			t.Errorf("members -json = %+v", ms)
		}
	})

	t.Run("sa ls", func(t *testing.T) {
		out := mustCLI(t, "sa", "ls", "-addr", addr)
		if !strings.Contains(out, "12 SAs") || !strings.Contains(out, sas[0].ID) || !strings.Contains(out, "c0000001") || !strings.Contains(out, "rfc4106(gcm(aes))") {
			t.Errorf("sa ls:\n%s", out)
		}
		js := mustCLI(t, "sa", "ls", "-json", "-addr", addr)
		var list []agent.SAInfo
		if err := json.Unmarshal([]byte(js), &list); err != nil {
			t.Fatal(err)
		}
		if len(list) != 12 || list[0].InSPI == "" || list[0].Remote == "" || list[0].Error != "" {
			t.Errorf("sa ls -json: %d entries, first %+v", len(list), list[0])
		}
		// No key, in any encoding, in either output.
		for _, s := range sas {
			for _, al := range append(s.In.Algos(), s.Out.Algos()...) {
				for _, enc := range []string{hex.EncodeToString(al.Key), base64.StdEncoding.EncodeToString(al.Key)} {
					if strings.Contains(out, enc) || strings.Contains(js, enc) {
						t.Fatalf("sa ls printed key material of %s", s.ID)
					}
				}
			}
		}
		if strings.Contains(strings.ToLower(js), `"key"`) {
			t.Error("sa ls -json has a key field")
		}
		// A limit and filters: by peer address (with or without port) or
		// identity, by IKE or CHILD_SA name.
		if out := mustCLI(t, "sa", "ls", "-limit", "5", "-addr", addr); strings.Count(out, "\n") != 7 || !strings.Contains(out, "5 of 12 SAs (-limit 5)") {
			t.Errorf("sa ls -limit 5:\n%s", out)
		}
		one := list[3]
		host, _, _ := strings.Cut(one.Remote, ":")
		for _, q := range [][]string{{"-peer", one.Remote}, {"-peer", host}, {"-peer", one.RemoteID}} {
			var got []agent.SAInfo
			if err := json.Unmarshal([]byte(mustCLI(t, append([]string{"sa", "ls", "-json", "-addr", addr}, q...)...)), &got); err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 || len(got) == len(list) {
				t.Errorf("sa ls %v: %d of %d SAs", q, len(got), len(list))
			}
			for _, s := range got {
				if s.Remote != one.Remote && s.RemoteID != one.RemoteID {
					t.Errorf("sa ls %v listed %s (remote %s, %s)", q, s.ID, s.Remote, s.RemoteID)
				}
			}
		}
		if out := mustCLI(t, "sa", "ls", "-ike", one.IKE, "-addr", addr); !strings.Contains(out, one.ID) {
			t.Errorf("sa ls -ike %s:\n%s", one.IKE, out)
		}
		if out := mustCLI(t, "sa", "ls", "-peer", "198.51.100.254", "-addr", addr); !strings.HasSuffix(out, "0 SAs\n") {
			t.Errorf("sa ls for a peer with no SA:\n%s", out)
		}
	})

	t.Run("list-peers", func(t *testing.T) {
		out := mustCLI(t, "operator", "raft", "list-peers", "-addr", addr)
		if strings.Count(out, "leader") != 1 || strings.Count(out, "follower") != 2 {
			t.Errorf("list-peers:\n%s", out)
		}
		var peers []agent.Peer
		if err := json.Unmarshal([]byte(mustCLI(t, "operator", "raft", "list-peers", "-json", "-addr", addr)), &peers); err != nil {
			t.Fatal(err)
		}
		if len(peers) != 3 {
			t.Errorf("peers = %+v", peers)
		}
	})

	snap := filepath.Join(t.TempDir(), "state.snap")
	histAtSave := historyLen(cc.first)
	t.Run("snapshot save", func(t *testing.T) {
		// Ask a follower: the client follows its hint to the leader.
		out := mustCLI(t, "snapshot", "save", snap, "-addr", cc.f.URL("gw2"), "-token-file", tokenFile(t, cliToken))
		if !strings.Contains(out, "saved snapshot at index") {
			t.Errorf("snapshot save: %s", out)
		}
		st, err := os.Stat(snap)
		if err != nil || st.Mode().Perm() != 0o600 || st.Size() < 100 {
			t.Fatalf("snapshot file: %v %v", st, err)
		}
		raw, _ := os.ReadFile(snap)
		if !bytes.HasPrefix(raw, []byte("HOSNAP")) {
			t.Errorf("snapshot file starts with %q", raw[:8])
		}
		got, err := raftstore.ReadSnapshot(bytes.NewReader(raw))
		if err != nil || len(got.SAs) != 12 || len(got.Members) != 3 {
			t.Fatalf("saved snapshot: %v", err)
		}
	})

	// From here the verbs change state: token and address from the
	// environment, as scripts set them.
	t.Setenv("HANDOFF_ADDR", addr)
	t.Setenv("HANDOFF_TOKEN", cliToken)
	act := cc.act
	var target *cluster.Node
	t.Run("promote", func(t *testing.T) {
		target = cc.c.Node("gw3")
		if target == cc.first {
			target = cc.c.Node("gw2")
		}
		out := mustCLI(t, "promote", target.Spec.ID)
		if !strings.Contains(out, "leadership handed from "+first+" to "+target.Spec.ID) || !strings.Contains(out, target.Spec.ID+" is active at term") ||
			!strings.Contains(out, "replay counters of 12 SAs committed") {
			t.Errorf("promote:\n%s", out)
		}
		n, a := cc.activeNode(t, act.Term)
		if n != target {
			t.Fatalf("%s is active after promote %s", n.Spec.ID, target.Spec.ID)
		}
		act = a
	})

	t.Run("drain", func(t *testing.T) {
		var res struct {
			agent.Handover
			Active string `json:"active"`
		}
		if err := json.Unmarshal([]byte(mustCLI(t, "drain", "-json")), &res); err != nil {
			t.Fatal(err)
		}
		if res.From != target.Spec.ID || res.To == target.Spec.ID || res.Active != res.To {
			t.Errorf("drain -json = %+v", res)
		}
		n, a := cc.activeNode(t, act.Term)
		if n.Spec.ID != res.To {
			t.Errorf("drain said %s, %s is active", res.To, n.Spec.ID)
		}
		act = a
	})

	t.Run("transfer-leadership", func(t *testing.T) {
		leader := act.Node
		to := "gw1"
		if leader == to {
			to = "gw2"
		}
		out := mustCLI(t, "operator", "raft", "transfer-leadership", to)
		if !strings.Contains(out, "leadership transferred from "+leader+" to "+to) {
			t.Errorf("transfer-leadership: %s", out)
		}
		n, a := cc.activeNode(t, act.Term)
		if n.Spec.ID != to {
			t.Errorf("%s is active after the transfer to %s", n.Spec.ID, to)
		}
		act = a
	})

	t.Run("history", func(t *testing.T) {
		out := mustCLI(t, "history")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) < 5 || !strings.HasPrefix(lines[0], "TERM") || !strings.Contains(out, "completed") || !strings.Contains(out, "ms") {
			t.Fatalf("history:\n%s", out)
		}
		// The agent asked is a follower now: wait until it applied the
		// takeover's last entry.
		var h []raftstore.HistoryEntry
		waitUntil(t, "the takeover in the follower's history", func() bool {
			if err := json.Unmarshal([]byte(mustCLI(t, "history", "-json")), &h); err != nil {
				t.Fatal(err)
			}
			return len(h) > 0 && h[len(h)-1].Result != "claiming"
		})
		last := h[len(h)-1]
		if last.Term != act.Term || last.To != act.Node || last.Result != "completed" || last.Timings.Total <= 0 {
			t.Errorf("last history entry %+v, active %+v", last, act)
		}
	})

	t.Run("snapshot restore", func(t *testing.T) {
		active := cc.c.Node(act.Node)
		// The tunnels changed since the save: the restore brings back the
		// history and members, while the active resyncs the SAs it carries.
		active.DP.Delete(sas[0].ID)
		active.DP.Delete(sas[1].ID)
		if historyLen(active) <= histAtSave {
			t.Fatalf("history did not grow since the save")
		}
		out := mustCLI(t, "snapshot", "restore", snap)
		if !strings.Contains(out, "restored snapshot of index") || !strings.Contains(out, "12 SAs") {
			t.Errorf("snapshot restore: %s", out)
		}
		waitUntil(t, "restored state everywhere", func() bool {
			for _, n := range cc.c.Nodes() {
				var sasN, hist int
				var a raftstore.Active
				n.Store.FSM().View(func(st *raftstore.State) { sasN, hist, a = len(st.SAs), len(st.History), st.Active })
				if sasN != 10 || hist != histAtSave+1 || a.Node != active.Spec.ID || a.Phase != raftstore.PhaseActive {
					return false
				}
			}
			return true
		})
		if !active.Agent.IsActive() {
			t.Error("the active node stopped carrying the tunnels after a restore")
		}
		_, act = cc.activeNode(t, act.Term-1)
		var bad bytes.Buffer
		bad.WriteString("HOSNAP\x07garbage")
		badFile := filepath.Join(t.TempDir(), "bad.snap")
		if err := os.WriteFile(badFile, bad.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := handoff(t, "snapshot", "restore", badFile); err == nil || !strings.Contains(err.Error(), "malformed snapshot") {
			t.Errorf("restoring garbage: %v", err)
		}
	})

	t.Run("remove-peer", func(t *testing.T) {
		leader := act.Node
		victim := "gw3"
		if leader == victim {
			victim = "gw2"
		}
		out := mustCLI(t, "operator", "raft", "remove-peer", victim)
		if !strings.Contains(out, "removed "+victim) {
			t.Errorf("remove-peer: %s", out)
		}
		out = mustCLI(t, "operator", "raft", "list-peers", "-addr", cc.f.URL(leader))
		if strings.Contains(out, victim) || strings.Count(out, "\n") != 3 {
			t.Errorf("list-peers after removing %s:\n%s", victim, out)
		}
	})
	stopTraffic()
	if reused := cc.c.Wire.Reused(); len(reused) > 0 {
		t.Errorf("sequence numbers reused on %d SAs", len(reused))
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCLIErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: runs an in-process cluster; not with -short")
	}
	cc := startCLICluster(t)
	addr := cc.f.URL(cc.first.Spec.ID)
	before := historyLen(cc.first)

	// Nothing listens on a port we just closed.
	dead := "127.0.0.1:1"
	_, err := handoff(t, "status", "-addr", dead)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the agent") || !strings.Contains(err.Error(), "HANDOFF_ADDR") {
		t.Errorf("unreachable agent: %v", err)
	}
	_, err = handoff(t, "promote", "gw2", "-addr", addr, "-token-file", tokenFile(t, "wrong-token-0123456789"))
	if err == nil || !strings.Contains(err.Error(), "token not accepted") || !strings.Contains(err.Error(), "check -token-file or HANDOFF_TOKEN") {
		t.Errorf("wrong token: %v", err)
	}
	_, err = handoff(t, "drain", "-addr", addr)
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "missing token") {
		t.Errorf("no token: %v", err)
	}
	_, err = handoff(t, "promote", "gw9", "-addr", addr, "-token-file", tokenFile(t, cliToken))
	if err == nil || !strings.Contains(err.Error(), `"gw9" is not a member`) {
		t.Errorf("promote of a stranger: %v", err)
	}
	for _, args := range [][]string{{"promote"}, {"promote", "gw1", "gw2"}, {"sa"}, {"operator", "raft", "remove-peer"},
		{"operator", "raft", "nope"}, {"snapshot", "save"}, {"status", "extra"}, {"status", "-addr", "ftp://x"}} {
		_, err := handoff(t, args...)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("handoff %v: %v, want a usage error", args, err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if after := historyLen(cc.first); after != before || !cc.first.Agent.IsActive() {
		t.Errorf("refused commands changed the cluster: history %d → %d", before, after)
	}
}

// TestTokensNeverOnTheCommandLine: -token, which put the token in every
// user's ps, is refused by the verbs and the demo, pointing at -token-file
// and HANDOFF_TOKEN without repeating the token, before anything is asked
// or started; a token file others can read is refused too.
func TestTokensNeverOnTheCommandLine(t *testing.T) {
	const secret = "a-token-that-must-not-echo"
	for _, args := range [][]string{
		{"status", "-addr", "127.0.0.1:1", "-token", secret},
		{"promote", "gw2", "-token=" + secret, "-addr", "127.0.0.1:1"},
		{"snapshot", "save", filepath.Join(t.TempDir(), "s"), "-token", secret},
		{"demo", "-serve", "127.0.0.1:0", "-token", secret},
	} {
		_, err := handoff(t, args...)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "-token is no longer accepted") ||
			!strings.Contains(err.Error(), "-token-file") || !strings.Contains(err.Error(), "HANDOFF_TOKEN") {
			t.Errorf("handoff %s: %v, want a usage error pointing at -token-file and HANDOFF_TOKEN", args[0], err)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("handoff %s repeated the token: %v", args[0], err)
		}
	}
	exposed := tokenFile(t, cliToken)
	if err := os.Chmod(exposed, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := handoff(t, "drain", "-addr", "127.0.0.1:1", "-token-file", exposed); err == nil || !strings.Contains(err.Error(), "-token-file: ") || !strings.Contains(err.Error(), "readable by others") {
		t.Errorf("a world-readable token file: %v", err)
	}
	if _, err := handoff(t, "demo", "-serve", "127.0.0.1:0", "-token-file", exposed); err == nil || !strings.Contains(err.Error(), "-token-file: ") || !strings.Contains(err.Error(), "readable by others") {
		t.Errorf("the demo with a world-readable token file: %v", err)
	}
}

// TestCLIHelpListsVerbs keeps the usage text honest.
func TestCLIHelpListsVerbs(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"help"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"status", "members", "history", "sa ls", "promote NODE", "drain", "operator raft list-peers", "snapshot save FILE", "validate"} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("help lacks %q", v)
		}
	}
}

// TestDemoServe runs `handoff demo --serve` and uses the served API after
// the failover, then interrupts it.
func TestDemoServe(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: the demo runs a cluster; not with -short")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"demo", "-tunnels", "50", "-serve", "127.0.0.1:0", "-token-file", tokenFile(t, cliToken), "-realtime-priority", "0"}, out, io.Discard)
	}()
	var url string
	waitUntil(t, "the demo to serve", func() bool {
		for _, l := range strings.Split(out.String(), "\n") {
			if rest, ok := strings.CutPrefix(l, "try: HANDOFF_ADDR="); ok {
				url, _, _ = strings.Cut(rest, " ")
				return true
			}
		}
		select {
		case err := <-done:
			t.Fatalf("demo ended early: %v\n%s", err, out.String())
		default:
		}
		return false
	})
	st := mustCLI(t, "status", "-json", "-addr", url)
	var s agent.Status
	if err := json.Unmarshal([]byte(st), &s); err != nil {
		t.Fatal(err)
	}
	if s.Active == "" || s.Active != s.Node || s.SAs != 50 || !strings.Contains(out.String(), "failover of") {
		t.Errorf("served status: %+v\n%s", s, out.String())
	}
	if h := mustCLI(t, "history", "-addr", url); strings.Count(h, "completed") < 2 {
		t.Errorf("history after the demo's failover:\n%s", h)
	}
	// The token in the demo's token file guards the mutating endpoints.
	if _, err := handoff(t, "drain", "-addr", url, "-token-file", tokenFile(t, "not-the-demo-token-at-all")); err == nil {
		t.Error("drain with a wrong token succeeded")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("demo --serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("demo --serve did not stop after the interrupt")
	}
}
