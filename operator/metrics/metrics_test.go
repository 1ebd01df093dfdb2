package metrics_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/buildinfo"
	"github.com/handoffvpn/handoff/operator/metrics"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/memory"
	"github.com/handoffvpn/handoff/raftstore"
)

// releasing stands in for a provider with node-local resources (the Linux
// VIP provider): a memory provider that also releases.
type releasing struct {
	providers.Provider
	released int
}

func (r *releasing) Release(context.Context, []providers.Resource) error {
	r.released++
	return nil
}

// refusing stands in for a cloud whose credentials lack a permission.
type refusing struct{ providers.Provider }

func (refusing) Claim(context.Context, uint64, []providers.Resource) error {
	return fmt.Errorf("claiming eip: %w", providers.ErrPermission)
}

func (refusing) CheckPermissions(context.Context, []providers.Resource) error {
	return fmt.Errorf("ec2:AssociateAddress: %w", providers.ErrPermission)
}

func TestInstrumentedProviderKeepsCapabilitiesAndCounts(t *testing.T) {
	m := metrics.New("gw1")
	cloud := memory.NewCloud(2 * time.Millisecond)
	res := []providers.Resource{{Kind: "eip", ID: "eipalloc-1"}}
	ctx := context.Background()

	plain := m.InstrumentProvider(memory.New(cloud, "gw1"))
	if _, ok := plain.(providers.Releaser); ok {
		t.Error("a provider without Release gained it")
	}
	if err := plain.Claim(ctx, 3, res); err != nil {
		t.Fatal(err)
	}
	if h, err := plain.Owner(ctx, res[0]); err != nil || h.Node != "gw1" || h.Term != 3 {
		t.Fatalf("owner %+v, %v", h, err)
	}

	rel := &releasing{Provider: memory.New(cloud, "gw2")}
	wrapped := m.InstrumentProvider(rel)
	r, ok := wrapped.(providers.Releaser)
	if !ok {
		t.Fatal("the Releaser capability was lost")
	}
	if _, ok := wrapped.(providers.PermissionChecker); ok {
		t.Error("a provider without CheckPermissions gained it")
	}
	if err := r.Release(ctx, res); err != nil || rel.released != 1 {
		t.Errorf("release: %v, released %d", err, rel.released)
	}
	// A stale term is an error of kind stale_term.
	if err := wrapped.Claim(ctx, 2, res); err == nil {
		t.Error("claim at a lower term succeeded")
	}

	bad := m.InstrumentProvider(refusing{memory.New(cloud, "gw3")})
	pc, ok := bad.(providers.PermissionChecker)
	if !ok {
		t.Fatal("the PermissionChecker capability was lost")
	}
	_ = pc.CheckPermissions(ctx, res)
	_ = bad.Claim(ctx, 9, res)

	reg := m.Registry()
	want := `
# HELP handoff_provider_errors_total Failed provider calls by operation and kind of error.
# TYPE handoff_provider_errors_total counter
handoff_provider_errors_total{kind="permission",op="check_permissions"} 1
handoff_provider_errors_total{kind="permission",op="claim"} 1
handoff_provider_errors_total{kind="stale_term",op="claim"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "handoff_provider_errors_total"); err != nil {
		t.Error(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "handoff_provider_call_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			h := mt.GetHistogram()
			counts[mt.GetLabel()[0].GetValue()] = h.GetSampleCount()
			if mt.GetLabel()[0].GetValue() == "claim" && h.GetSampleSum() < 0.002 {
				t.Errorf("claim latency sum %v: the cloud's 2ms per call was not timed", h.GetSampleSum())
			}
		}
	}
	if counts["claim"] != 3 || counts["owner"] != 1 || counts["release"] != 1 || counts["check_permissions"] != 1 {
		t.Errorf("call counts %v", counts)
	}
}

func TestObserveStatusAndEvents(t *testing.T) {
	m := metrics.New("gw1")
	m.ObserveStatus(agent.Status{Node: "gw1", RaftState: "Follower", Term: 4, SAs: 12, ReplayStates: 10,
		LeaderContact: 1500 * time.Millisecond, Members: []agent.MemberStatus{
			{Member: raftstore.Member{ID: "gw1", Role: raftstore.RoleGateway}, Healthy: true},
			{Member: raftstore.Member{ID: "gw2", Role: raftstore.RoleGateway}, Healthy: false,
				Observations: []raftstore.Observation{{Observer: "gw1", Subject: "gw2", Healthy: false}}},
			{Member: raftstore.Member{ID: "w1", Role: raftstore.RoleWitness}, Healthy: true},
		}})
	m.ObserveEvent(agent.Event{Kind: "failover.completed", Timings: raftstore.Timings{Detect: 200 * time.Millisecond, Move: 80 * time.Millisecond, Total: 400 * time.Millisecond}})
	m.ObserveCommit(3*time.Millisecond, nil)
	m.ObserveCommit(time.Second, fmt.Errorf("not leader"))
	want := `
# HELP handoff_member_healthy 1 unless a majority of a member's observers report it unhealthy.
# TYPE handoff_member_healthy gauge
handoff_member_healthy{member="gw1"} 1
handoff_member_healthy{member="gw2"} 0
handoff_member_healthy{member="w1"} 1
# HELP handoff_members Members by role.
# TYPE handoff_members gauge
handoff_members{role="gateway"} 2
handoff_members{role="witness"} 1
# HELP handoff_replication_lag_seconds Time since this follower last heard from the leader (0 on the leader).
# TYPE handoff_replication_lag_seconds gauge
handoff_replication_lag_seconds 1.5
# HELP handoff_sas Replicated CHILD_SAs in this node's copy of the state.
# TYPE handoff_sas gauge
handoff_sas 12
# HELP handoff_raft_commit_errors_total Log entries proposed on this node that did not commit (not leader, timeout).
# TYPE handoff_raft_commit_errors_total counter
handoff_raft_commit_errors_total 1
# HELP handoff_health_observation Last health result one observer reported about one member (1 healthy, 0 not).
# TYPE handoff_health_observation gauge
handoff_health_observation{member="gw2",observer="gw1"} 0
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "handoff_member_healthy", "handoff_members",
		"handoff_replication_lag_seconds", "handoff_sas", "handoff_raft_commit_errors_total", "handoff_health_observation"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.Registry(), "handoff_failover_phase_seconds"); n != 6 {
		t.Errorf("%d phase series, want 6", n)
	}
}

// TestElectionsFencesAndBuild: takeovers started and fences count by
// reason, the reason label stays within the vocabulary (an older node's
// free text counts as unknown), every reason's series exists from the
// start, and handoff_build_info names the agent's build.
func TestElectionsFencesAndBuild(t *testing.T) {
	m := metrics.New("gw1")
	m.ObserveStatus(agent.Status{Node: "gw1", Build: buildinfo.Info{Version: "v1.4.0", Revision: "abc123", GoVersion: "go1.26.8"}})
	for _, e := range []agent.Event{
		{Kind: "failover.started", Reason: raftstore.ReasonLeaderSilent},
		{Kind: "failover.started", Reason: raftstore.ReasonLeaderSilent},
		{Kind: "failover.started", Reason: raftstore.ReasonDrain},
		{Kind: "failover.started", Reason: "leader elected"},
		{Kind: "node.fenced", Reason: raftstore.ReasonLeaseLost},
		{Kind: "node.fenced", Reason: raftstore.ReasonDrain},
	} {
		m.ObserveEvent(e)
	}
	elections := map[raftstore.Reason]int{raftstore.ReasonLeaderSilent: 2, raftstore.ReasonDrain: 1, raftstore.ReasonUnknown: 1}
	fences := map[raftstore.Reason]int{raftstore.ReasonLeaseLost: 1, raftstore.ReasonDrain: 1}
	var want strings.Builder
	want.WriteString(`# HELP handoff_build_info Always 1; the labels name the build this agent runs (as handoff version and /v1/status do).
# TYPE handoff_build_info gauge
handoff_build_info{goversion="go1.26.8",revision="abc123",version="v1.4.0"} 1
# HELP handoff_elections_total Takeovers this node started after winning an election, by why the active role moved.
# TYPE handoff_elections_total counter
`)
	for _, r := range raftstore.Reasons() {
		fmt.Fprintf(&want, "handoff_elections_total{reason=%q} %d\n", r, elections[r])
	}
	want.WriteString(`# HELP handoff_fences_total Times this node fenced itself while it carried the tunnels, by why it gave the role up.
# TYPE handoff_fences_total counter
`)
	for _, r := range raftstore.Reasons() {
		fmt.Fprintf(&want, "handoff_fences_total{reason=%q} %d\n", r, fences[r])
	}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want.String()), "handoff_build_info",
		"handoff_elections_total", "handoff_fences_total"); err != nil {
		t.Error(err)
	}
	// Every metric of the registry carries the handoff_ prefix, except
	// the Go runtime's and the process's own.
	mfs, _ := m.Registry().Gather()
	for _, mf := range mfs {
		if n := mf.GetName(); !strings.HasPrefix(n, "handoff_") && !strings.HasPrefix(n, "go_") && !strings.HasPrefix(n, "process_") {
			t.Errorf("metric %s lacks the handoff_ prefix", n)
		}
	}
}
