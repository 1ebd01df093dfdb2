package operator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/ipsec/memdp"
	"github.com/handoffvpn/handoff/operator"
	"github.com/handoffvpn/handoff/operator/api"
	"github.com/handoffvpn/handoff/operator/fleet"
	"github.com/handoffvpn/handoff/operator/webhook"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/raftstore"
)

const token = "test-token-0123456789abcdef"

// tlog routes slog to t.Log until the test ends.
type tlog struct {
	mu sync.Mutex
	t  *testing.T
}

func (w *tlog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.t != nil {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

type env struct {
	c     *cluster.Cluster
	f     *fleet.Fleet
	first *cluster.Node
	act   raftstore.Active
}

// start runs an in-process cluster of real nodes with the operator surface
// of each serving on a loopback port, and waits for the first takeover.
func start(t *testing.T, ids []string, fo fleet.Options) *env {
	t.Helper()
	w := &tlog{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.t = nil; w.mu.Unlock() })
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelError}))
	fo.Tokens, fo.Logger = []string{token}, log
	if fo.Interval == 0 {
		fo.Interval = 50 * time.Millisecond
	}
	f, err := fleet.New(ids, fo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var specs []cluster.NodeSpec
	for i, id := range ids {
		role := raftstore.RoleGateway
		if strings.HasPrefix(id, "w") {
			role = raftstore.RoleWitness
		}
		specs = append(specs, cluster.NodeSpec{ID: id, Role: role, Priority: 100 - i})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: specs, Dir: t.TempDir(), HeartbeatTimeout: 250 * time.Millisecond,
		Resources: []providers.Resource{{Kind: "eip", ID: "eipalloc-1"}}, NewProvider: nil, NoSync: true,
		Events: f.Events, WrapProvider: f.WrapProvider, Logger: log})
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
	return &env{c: c, f: f, first: first, act: act}
}

func (e *env) follower() *cluster.Node {
	for _, n := range e.c.Nodes() {
		if n.Spec.ID != e.first.Spec.ID {
			return n
		}
	}
	return nil
}

// call does one request and decodes a JSON answer into out (if not nil).
func call(t *testing.T, method, url, tok, body string, out any) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: answer is not JSON: %v\n%s", method, url, err, raw)
		}
	}
	return resp.StatusCode, resp.Header, string(raw)
}

// fingerprint is what a refused request must leave unchanged.
func fingerprint(n *cluster.Node) string {
	var s string
	n.Store.FSM().View(func(st *raftstore.State) {
		s = fmt.Sprintf("active=%s term=%d phase=%s history=%d members=%d", st.Active.Node, st.Active.Term, st.Active.Phase, len(st.History), len(st.Members))
	})
	leader, _ := n.Store.Leader()
	servers, _ := n.Store.Servers()
	return fmt.Sprintf("%s leader=%s raft-term=%d peers=%d", s, leader, n.Store.Term(), len(servers))
}

func TestAPIAuthStatusAndBadRequests(t *testing.T) {
	e := start(t, []string{"gw1", "gw2", "gw3"}, fleet.Options{})
	leaderURL := e.f.URL(e.first.Spec.ID)
	target := e.follower().Spec.ID

	var st agent.Status
	code, _, raw := call(t, "GET", leaderURL+"/v1/status", "", "", &st)
	if code != 200 {
		t.Fatalf("GET /v1/status: %d %s", code, raw)
	}
	var generic map[string]any
	if err := json.Unmarshal([]byte(raw), &generic); err != nil {
		t.Fatal(err)
	}
	if got, ok := generic["active"]; !ok || got != e.first.Spec.ID {
		t.Fatalf("status has active %v (present %v), want %s:\n%s", got, ok, e.first.Spec.ID, raw)
	}
	if st.Leader != e.first.Spec.ID || len(st.Members) != 3 || !st.Carrying {
		t.Errorf("status = %+v", st)
	}

	before := fingerprint(e.first)
	promote := fmt.Sprintf(`{"node": %q}`, target)
	refused := []struct {
		name, method, path, tok, body string
		status                        int
		want                          string
	}{
		{"no token", "POST", "/v1/promote", "", promote, 401, "missing token"},
		{"wrong token", "POST", "/v1/promote", "not-the-token-at-all", promote, 403, "token not accepted"},
		{"unknown field", "POST", "/v1/promote", token, `{"nod": "gw2"}`, 400, `unknown field "nod"`},
		{"field in another case", "POST", "/v1/promote", token, fmt.Sprintf(`{"Node": %q}`, target), 400, `unknown field "Node" (names are exact: "node")`},
		{"field twice", "POST", "/v1/promote", token, fmt.Sprintf(`{"node": %q, "node": %q}`, e.first.Spec.ID, target), 400, `field "node" given twice`},
		{"no node", "POST", "/v1/promote", token, `{}`, 400, "node: required"},
		{"not JSON", "POST", "/v1/promote", token, `gw2`, 400, "decoding request body"},
		{"trailing data", "POST", "/v1/promote", token, promote + `{}`, 400, "trailing data"},
		{"unknown node", "POST", "/v1/promote", token, `{"node": "gw9"}`, 400, `"gw9" is not a member`},
		{"already active", "POST", "/v1/promote", token, fmt.Sprintf(`{"node": %q}`, e.first.Spec.ID), 409, "already the active node"},
		{"drain with a parameter", "POST", "/v1/drain", token, promote, 400, `unknown field "node"`},
		{"remove the leader", "POST", "/v1/raft/remove-peer", token, fmt.Sprintf(`{"node": %q}`, e.first.Spec.ID), 409, "transfer leadership first"},
		{"remove a stranger", "POST", "/v1/raft/remove-peer", token, `{"node": "gw9"}`, 400, "not a Raft peer"},
		{"transfer to a stranger", "POST", "/v1/raft/transfer-leadership", token, `{"node": "gw9"}`, 400, "not a Raft peer"},
		{"restore garbage", "POST", "/v1/snapshot", token, "not a snapshot", 400, "malformed snapshot"},
		{"snapshot without token", "GET", "/v1/snapshot", "", "", 401, "missing token"},
		{"wrong method", "GET", "/v1/promote", token, "", 405, "method not allowed"},
		{"no such endpoint", "GET", "/v1/nothing", "", "", 404, "no endpoint /v1/nothing"},
	}
	for _, r := range refused {
		var body struct {
			Error string `json:"error"`
		}
		code, hdr, raw := call(t, r.method, leaderURL+r.path, r.tok, r.body, &body)
		if code != r.status || !strings.Contains(body.Error, r.want) {
			t.Errorf("%s: %d %q, want %d containing %q", r.name, code, body.Error, r.status, r.want)
		}
		if code == 401 && hdr.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", r.name)
		}
		if !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") {
			t.Errorf("%s: content type %q: %s", r.name, hdr.Get("Content-Type"), raw)
		}
	}
	// A refused promote must not have started anything: give a transfer
	// the time it would take, then compare.
	time.Sleep(500 * time.Millisecond)
	if after := fingerprint(e.first); after != before {
		t.Errorf("refused requests changed the cluster:\nbefore %s\nafter  %s", before, after)
	}
	if !e.first.Agent.IsActive() {
		t.Error("the active node stopped being active after refused requests")
	}

	// A follower serves snapshots to nobody but says where the leader is.
	fURL := e.f.URL(target)
	var nl struct {
		Error, Code, Leader string
		LeaderAPI           string `json:"leader_api"`
	}
	if code, _, raw := call(t, "GET", fURL+"/v1/snapshot", token, "", &nl); code != 421 || nl.Leader != e.first.Spec.ID || nl.LeaderAPI != leaderURL {
		t.Errorf("snapshot on a follower: %d %s", code, raw)
	}
}

// TestAPIReadsBeyondLoopbackNeedToken drives the handler with a request
// whose peer address is not loopback, as the server sees it from a remote
// client.
func TestAPIReadsBeyondLoopbackNeedToken(t *testing.T) {
	e := start(t, []string{"gw1", "gw2"}, fleet.Options{})
	h := apiHandler(t, e)
	for _, c := range []struct {
		remote, tok string
		status      int
	}{
		{"192.0.2.10:40000", "", 401},
		{"192.0.2.10:40000", "wrong-token-wrong-token", 403},
		{"192.0.2.10:40000", token, 200},
		{"127.0.0.1:40000", "", 200},
		{"[::1]:40000", "", 200},
	} {
		req := httptest.NewRequest("GET", "/v1/status", nil)
		// As a local client names the agent (api.TestLoopbackReadsCheckTheHost
		// covers the other names).
		req.RemoteAddr, req.Host = c.remote, "127.0.0.1:7950"
		if c.tok != "" {
			req.Header.Set("Authorization", "Bearer "+c.tok)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.status {
			t.Errorf("read from %s with token %q: %d, want %d: %s", c.remote, c.tok, rec.Code, c.status, rec.Body)
		}
	}
}

// apiHandler builds a second API server on the leader's agent, to reach
// its handler directly.
func apiHandler(t *testing.T, e *env) http.Handler {
	t.Helper()
	s, err := api.New(api.Config{Tokens: []string{token}}, e.first.Agent)
	if err != nil {
		t.Fatal(err)
	}
	return s.Handler()
}

func TestPromoteThroughFollowerAndDrain(t *testing.T) {
	rcv := newReceiver(t, 0)
	e := start(t, []string{"gw1", "gw2", "gw3"}, fleet.Options{Webhook: func(string) *webhook.Config {
		return &webhook.Config{URL: rcv.srv.URL, Secret: []byte(rcv.secret), MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	}})
	var target *cluster.Node
	for _, n := range e.c.Nodes() {
		if n.Spec.ID != e.first.Spec.ID {
			target = n
		}
	}
	// Traffic on live SAs, so that promote's fresh counters matter.
	e.first.DP.Add(memdp.Synthetic(20, e.c.VIP)...)
	tctx, stop := context.WithCancel(context.Background())
	defer stop()
	go e.c.Traffic(tctx, 2*time.Millisecond, 1)
	waitFor(t, "SAs replicated", func() bool {
		var n int
		target.Store.FSM().View(func(st *raftstore.State) { n = len(st.Replay) })
		return n == 20
	})
	// Ask a follower other than the target: it forwards to the leader.
	var via *cluster.Node
	for _, n := range e.c.Nodes() {
		if n != e.first && n != target {
			via = n
		}
	}
	var h agent.Handover
	code, _, raw := call(t, "POST", e.f.URL(via.Spec.ID)+"/v1/promote", token, fmt.Sprintf(`{"node": %q}`, target.Spec.ID), &h)
	if code != 200 {
		t.Fatalf("promote through a follower: %d %s", code, raw)
	}
	if h.From != e.first.Spec.ID || h.To != target.Spec.ID || h.ReplaySynced != 20 {
		t.Errorf("handover = %+v", h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	next, act, err := e.c.WaitActive(ctx, e.act.Term)
	if err != nil {
		t.Fatal(err)
	}
	if next != target {
		t.Fatalf("%s became active, want %s", next.Spec.ID, target.Spec.ID)
	}
	waitFor(t, "old active fenced", func() bool { return !e.first.Agent.IsActive() && !e.first.DP.FencedAt().IsZero() })
	// A planned hand-over keeps the old active carrying the tunnels (its
	// outbound SAs kept sending, see the reuse check below) until the new
	// one has committed active: fencing earlier leaves them no gateway.
	if fenced := e.first.DP.FencedAt(); fenced.Before(act.ActiveAt) {
		t.Errorf("old active fenced at %s, before the new one was active at %s", fenced.Format(time.StampMicro), act.ActiveAt.Format(time.StampMicro))
	}
	if got := len(target.DP.Outbound()); got != 20 {
		t.Errorf("new active carries %d SAs, want 20", got)
	}
	// Drain the new active: the role moves on to the best other gateway.
	code, _, raw = call(t, "POST", e.f.URL(target.Spec.ID)+"/v1/drain", token, "", &h)
	if code != 200 || h.From != target.Spec.ID || h.To == target.Spec.ID {
		t.Fatalf("drain: %d %s", code, raw)
	}
	third, act3, err := e.c.WaitActive(ctx, act.Term)
	if err != nil {
		t.Fatal(err)
	}
	if third.Spec.ID != h.To {
		t.Errorf("drain went to %s, active is %s", h.To, third.Spec.ID)
	}
	stop()
	if reused := e.c.Wire.Reused(); len(reused) > 0 {
		t.Errorf("sequence numbers reused on %d SAs after promote and drain", len(reused))
	}
	var hist []raftstore.HistoryEntry
	call(t, "GET", e.f.URL(third.Spec.ID)+"/v1/history", "", "", &hist)
	if len(hist) < 3 || hist[len(hist)-1].Term != act3.Term || hist[len(hist)-1].Result != "completed" {
		t.Errorf("history = %+v", hist)
	}
	// Each takeover's webhooks say why: the drain's are a drain's, not a
	// promote's (they once said "operator promote").
	for _, c := range []struct {
		node, from, reason string
		term               uint64
	}{{target.Spec.ID, e.first.Spec.ID, "promote", act.Term}, {third.Spec.ID, target.Spec.ID, "drain", act3.Term}} {
		done := rcv.waitKind(t, "failover.completed", c.node, c.term)
		if done.Reason != c.reason || !strings.Contains(done.Text, strings.ReplaceAll(c.reason, "_", " ")) {
			t.Errorf("failover.completed at term %d: reason %q, text %q; want %s", c.term, done.Reason, done.Text, c.reason)
		}
		moved := rcv.waitKind(t, "leadership.transferred", c.from, 0)
		if c.reason == "drain" {
			moved = rcv.lastKind(t, "leadership.transferred", c.from)
		}
		if moved.Reason != c.reason || strings.Contains(moved.Text, map[string]string{"promote": "drain", "drain": "promote"}[c.reason]) {
			t.Errorf("leadership.transferred by %s: reason %q, text %q; want %s", c.from, moved.Reason, moved.Text, c.reason)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMetricsAndWebhookOfAFailover(t *testing.T) {
	rcv := newReceiver(t, 0)
	e := start(t, []string{"gw1", "gw2", "gw3"}, fleet.Options{Webhook: func(string) *webhook.Config {
		return &webhook.Config{URL: rcv.srv.URL, Secret: []byte(rcv.secret), MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	}})
	first := e.first.Spec.ID
	if err := e.c.Kill(first); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	next, act, err := e.c.WaitActive(ctx, e.act.Term, first)
	if err != nil {
		t.Fatal(err)
	}
	ev := rcv.waitKind(t, "failover.completed", next.Spec.ID, act.Term)
	if tm := ev.TimingsMs; tm == nil || tm.Detect <= 0 || tm.Elect <= 0 || tm.Claim <= 0 || tm.Total < tm.Detect+tm.Elect+tm.Claim {
		t.Errorf("failover.completed timings: %+v", ev.TimingsMs)
	}
	if ev.TimingsMs.Total <= 0 || !strings.Contains(ev.Text, next.Spec.ID+" is active") || ev.Reason != "leader_silent" {
		t.Errorf("event = %+v", ev)
	}
	rcv.waitKind(t, "failover.started", next.Spec.ID, act.Term)

	// One duration convention: the API's history and status give the same
	// milliseconds, in the same _ms fields, as the webhook (the nanosecond
	// fields stay beside them for older scripts).
	var hist []map[string]any
	call(t, "GET", e.f.URL(next.Spec.ID)+"/v1/history", "", "", &hist)
	last := hist[len(hist)-1]
	tms, _ := last["timings_ms"].(map[string]any)
	tns, _ := last["timings"].(map[string]any)
	if tms == nil || tms["total"] != ev.TimingsMs.Total || tms["detect"] != ev.TimingsMs.Detect || tns["total"].(float64)/1e6-ev.TimingsMs.Total > 0.001 {
		t.Errorf("history timings_ms %v (ns %v), webhook timings_ms %+v", tms, tns, ev.TimingsMs)
	}
	var st map[string]any
	call(t, "GET", e.f.URL(next.Spec.ID)+"/v1/status", "", "", &st)
	if a, _ := st["assignment"].(map[string]any); a == nil || a["timings_ms"].(map[string]any)["total"] != ev.TimingsMs.Total {
		t.Errorf("status assignment %v", st["assignment"])
	}
	if _, ok := st["leader_contact_ms"].(float64); !ok {
		t.Errorf("status lacks leader_contact_ms: %v", st)
	}

	var body string
	waitFor(t, "the new leader's gauges", func() bool {
		_, _, body = call(t, "GET", e.f.URL(next.Spec.ID)+"/metrics", "", "", nil)
		return strings.Contains(body, `handoff_raft_state{state="Leader"} 1`) && strings.Contains(body, "handoff_active 1")
	})
	for _, want := range []string{
		`handoff_raft_state{state="Leader"} 1`,
		`handoff_active 1`,
		`handoff_failovers_total{result="completed"} 1`,
		`handoff_failover_phase_seconds_count{phase="move"} 1`,
		`handoff_provider_call_seconds_count{op="claim"} 1`,
		`handoff_webhook_dead_letters_total 0`,
		`handoff_member_healthy{member="` + next.Spec.ID + `"} 1`,
		`handoff_node_info{node="` + next.Spec.ID + `"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	for _, name := range []string{"handoff_raft_commit_seconds_count", "handoff_sas ", "handoff_replication_lag_seconds", "handoff_raft_term"} {
		if !strings.Contains(body, name) {
			t.Errorf("metrics lack %s", name)
		}
	}
	// The surviving follower lost contact with the killed leader for a
	// moment; its lag gauge is back under a heartbeat now.
	var other *cluster.Node
	for _, n := range e.c.Nodes() {
		if n != next {
			other = n
		}
	}
	var fbody string
	waitFor(t, "the follower's gauges", func() bool {
		_, _, fbody = call(t, "GET", e.f.URL(other.Spec.ID)+"/metrics", "", "", nil)
		return strings.Contains(fbody, `handoff_raft_state{state="Follower"} 1`) && strings.Contains(fbody, "handoff_active 0")
	})
	if lag := grep(fbody, "handoff_replication_lag_seconds "); lag == "" {
		t.Errorf("follower metrics lack the lag gauge")
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// receiver is a webhook endpoint that checks every signature and can fail
// the first attempts with 500.
type receiver struct {
	srv    *httptest.Server
	secret string

	mu       sync.Mutex
	fail     int
	attempts int
	events   []webhook.Event
	arrived  []time.Time // of each of events
	bad      []string
}

func newReceiver(t *testing.T, failFirst int) *receiver {
	r := &receiver{secret: "receiver-secret-0123456789", fail: failFirst}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.attempts++
		if err := webhook.Verify([]byte(r.secret), req.Header.Get(webhook.HeaderTimestamp), req.Header.Get(webhook.HeaderSignature), body, 5*time.Minute, time.Now()); err != nil {
			r.bad = append(r.bad, err.Error())
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		if r.fail > 0 {
			r.fail--
			http.Error(w, "try later", http.StatusInternalServerError)
			return
		}
		var e webhook.Event
		if err := json.Unmarshal(body, &e); err != nil {
			r.bad = append(r.bad, err.Error())
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.events = append(r.events, e)
		r.arrived = append(r.arrived, time.Now())
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) waitKind(t *testing.T, kind, node string, term uint64) webhook.Event {
	t.Helper()
	var found *webhook.Event
	waitFor(t, kind+" webhook", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for i := range r.events {
			if e := r.events[i]; e.Kind == kind && e.Node == node && (term == 0 || e.Term == term) {
				found = &e
				return true
			}
		}
		return false
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) > 0 {
		t.Errorf("receiver refused deliveries: %v", r.bad)
	}
	return *found
}

// lastKind is the last event of kind about node received so far.
func (r *receiver) lastKind(t *testing.T, kind, node string) webhook.Event {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.events) - 1; i >= 0; i-- {
		if e := r.events[i]; e.Kind == kind && e.Node == node {
			return e
		}
	}
	t.Fatalf("no %s about %s received", kind, node)
	return webhook.Event{}
}

func TestMonitorRaisesHealthAndLagEvents(t *testing.T) {
	rcv := newReceiver(t, 0)
	s, err := operator.New(operator.Options{Node: "gw1", LagThreshold: time.Second,
		Webhook: &webhook.Config{URL: rcv.srv.URL, Secret: []byte(rcv.secret), MinBackoff: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	member := func(id string, healthy bool) agent.MemberStatus {
		m := agent.MemberStatus{Member: raftstore.Member{ID: id, Role: raftstore.RoleGateway}, Healthy: healthy}
		m.Observations = []raftstore.Observation{{Observer: "gw1", Subject: id, Healthy: healthy, Detail: "ike probe timeout"},
			{Observer: "w1", Subject: id, Healthy: healthy}}
		return m
	}
	leader := func(gw2 bool) agent.Status {
		return agent.Status{Node: "gw1", RaftState: "Leader", Term: 7, Members: []agent.MemberStatus{member("gw1", true), member("gw2", gw2)}}
	}
	s.Observe(leader(true))
	s.Observe(leader(false)) // gw2 flips: one alert
	s.Observe(leader(false)) // no change: no alert
	s.Observe(leader(true))  // back
	down := rcv.waitKind(t, "node.unhealthy", "gw2", 7)
	if !strings.Contains(down.Detail, "2 of 2 observers report it down") || !strings.Contains(down.Detail, "ike probe timeout") {
		t.Errorf("unhealthy event = %+v", down)
	}
	rcv.waitKind(t, "node.recovered", "gw2", 7)

	// A follower raises nothing about health (the leader does) but does
	// raise its own lag.
	follower := agent.Status{Node: "gw1", RaftState: "Follower", Term: 8, Leader: "gw2", Members: []agent.MemberStatus{member("gw2", false)}}
	follower.LeaderContact = 3 * time.Second
	s.Observe(follower)
	follower.LeaderContact = 100 * time.Millisecond
	s.Observe(follower)
	lag := rcv.waitKind(t, "replication.lag", "gw1", 8)
	if !strings.Contains(lag.Detail, "threshold 1s") {
		t.Errorf("lag event = %+v", lag)
	}
	rcv.waitKind(t, "replication.recovered", "gw1", 8)
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	kinds := map[string]int{}
	for _, e := range rcv.events {
		kinds[e.Kind]++
	}
	if kinds["node.unhealthy"] != 1 || kinds["node.recovered"] != 1 || kinds["replication.lag"] != 1 {
		t.Errorf("events by kind: %v", kinds)
	}
}

// TestFlappingClusterIsSummarised: a cluster whose active role moves eight
// times in a few seconds with nobody saying why (as lost leases do) sends
// each receiver at most Limit+1 webhooks per window from each node, then a
// cluster.flapping summary that counts what it held back; /v1/status, and
// so the status page's banner, says it is flapping.
func TestFlappingClusterIsSummarised(t *testing.T) {
	rcv := newReceiver(t, 0)
	const limit, window = 3, 2 * time.Second
	e := start(t, []string{"gw1", "gw2", "gw3"}, fleet.Options{Webhook: func(string) *webhook.Config {
		return &webhook.Config{URL: rcv.srv.URL, Secret: []byte(rcv.secret), Limit: limit, Window: window, MinBackoff: 10 * time.Millisecond}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	act := e.act
	for i := 0; i < 8; i++ {
		if err := e.c.Node(act.Node).Store.TransferLeadership("", ""); err != nil {
			t.Fatalf("moving leadership (round %d): %v", i+1, err)
		}
		var err error
		if _, act, err = e.c.WaitActive(ctx, act.Term); err != nil {
			t.Fatal(err)
		}
	}
	var st agent.Status
	call(t, "GET", e.f.URL(act.Node)+"/v1/status", "", "", &st)
	if !st.Flap.Flapping || st.Flap.Unplanned < 8 || st.Flap.Reasons[raftstore.ReasonUnknown] < 8 || st.Flap.WindowMs != 300000 {
		t.Errorf("status flap = %+v, want flapping with 8 unplanned takeovers of unknown reason", st.Flap)
	}
	var summary webhook.Event
	waitFor(t, "a cluster.flapping summary", func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		for _, ev := range rcv.events {
			if ev.Kind == webhook.KindFlapping {
				summary = ev
				return true
			}
		}
		return false
	})
	total := 0
	for _, n := range summary.Counts {
		total += n
	}
	if summary.Held == 0 || total != summary.Held || !strings.Contains(summary.Text, "flapping") || summary.Term == 0 {
		t.Errorf("summary = %+v", summary)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	bySource := map[string][]time.Time{}
	for i, ev := range rcv.events {
		bySource[ev.Source] = append(bySource[ev.Source], rcv.arrived[i])
	}
	for src, at := range bySource {
		for i := range at {
			n := 0
			for _, b := range at[i:] {
				if b.Sub(at[i]) < window {
					n++
				}
			}
			if n > limit+1 {
				t.Errorf("%s: %d webhooks within %s, want at most %d", src, n, window, limit+1)
			}
		}
	}
	if len(rcv.bad) > 0 {
		t.Errorf("receiver refused deliveries: %v", rcv.bad)
	}
}
