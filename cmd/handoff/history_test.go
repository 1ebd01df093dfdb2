package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/raftstore"
)

// TestHistorySaysWhyEachTakeover: after a promote, a drain, a kill of the
// active and a transfer, `handoff history` names a different reason for
// each takeover (and for the cluster's first), in the table and in -json,
// with the detail the reason came with. Before reasons, every entry said
// "leader elected".
func TestHistorySaysWhyEachTakeover(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: runs an in-process cluster; not with -short")
	}
	cc := startCLICluster(t)
	t.Setenv("HANDOFF_TOKEN", cliToken)
	addr := cc.f.URL(cc.first.Spec.ID)
	act := cc.act

	target := "gw2"
	if cc.first.Spec.ID == target {
		target = "gw3"
	}
	mustCLI(t, "promote", target, "-addr", addr)
	_, act = cc.activeNode(t, act.Term)
	mustCLI(t, "drain", "-addr", cc.f.URL(act.Node))
	drained := act.Node
	_, act = cc.activeNode(t, act.Term)
	killed := act.Node
	if err := cc.c.Kill(killed); err != nil {
		t.Fatal(err)
	}
	n, act := cc.activeNode(t, act.Term)
	addr = cc.f.URL(n.Spec.ID)
	var survivor string
	for _, o := range cc.c.Nodes() {
		if o != n {
			survivor = o.Spec.ID
		}
	}
	// A transfer with no node named: the answer names the node Raft
	// chose (it said "to -"), and the takeover there says transfer.
	if out := mustCLI(t, "operator", "raft", "transfer-leadership", "-addr", addr); !strings.Contains(out, "from "+n.Spec.ID+" to "+survivor+" ") {
		t.Errorf("transfer-leadership with no node: %q, want it to name %s", out, survivor)
	}
	cc.activeNode(t, act.Term)

	var h []raftstore.HistoryEntry
	waitUntil(t, "the last takeover completed in the history", func() bool {
		h = nil
		if err := json.Unmarshal([]byte(mustCLI(t, "history", "-json", "-addr", addr)), &h); err != nil {
			t.Fatal(err)
		}
		return len(h) >= 5 && h[len(h)-1].Result == "completed"
	})
	want := []struct {
		reason raftstore.Reason
		to     string
		detail string
	}{
		{raftstore.ReasonFirstElection, cc.first.Spec.ID, "no node was active"},
		{raftstore.ReasonPromote, target, "operator promote of " + target},
		{raftstore.ReasonDrain, "", "operator drain of " + drained},
		{raftstore.ReasonLeaderSilent, n.Spec.ID, killed + " silent for "},
		{raftstore.ReasonTransfer, survivor, "operator transfer-leadership from " + n.Spec.ID},
	}
	last := h[len(h)-len(want):]
	for i, w := range want {
		e := last[i]
		if e.Reason != w.reason || (w.to != "" && e.To != w.to) || !strings.Contains(e.Detail, w.detail) || e.Result != "completed" {
			t.Errorf("takeover %d: %s → %s, reason %q (%s), %s; want reason %q to %q with %q", i+1, e.From, e.To, e.Reason, e.Detail, e.Result,
				w.reason, w.to, w.detail)
		}
	}
	table := mustCLI(t, "history", "-addr", addr)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if !strings.HasPrefix(lines[0], "TERM") || !strings.Contains(lines[0], "REASON") {
		t.Fatalf("history table header: %s", lines[0])
	}
	for _, w := range want[1:] {
		if !strings.Contains(table, " "+string(w.reason)+" ") {
			t.Errorf("history table lacks reason %s:\n%s", w.reason, table)
		}
	}
	t.Log("\n" + table)
	if strings.Contains(table, "leader elected") {
		t.Errorf("history still says \"leader elected\":\n%s", table)
	}
}
