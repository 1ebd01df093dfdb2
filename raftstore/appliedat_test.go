package raftstore

import (
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// applyTo applies one command to fsm as Raft would, failing the test on a
// refusal.
func applyTo(t *testing.T, fsm *FSM, index uint64, payload any) {
	t.Helper()
	data, err := Encode(payload)
	if err != nil {
		t.Fatal(err)
	}
	if res, ok := fsm.Apply(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}).(ApplyResult); !ok || res.Err != nil {
		t.Fatalf("applying entry %d: %+v", index, res)
	}
}

// An SA's clock is its replay record's: re-upserting an SA the log holds
// must not make its counters look fresher than they are, or a takeover
// would jump its sequence numbers too little (agent.SeqStart).
func TestAppliedAtFollowsTheReplayRecordNotReUpserts(t *testing.T) {
	fsm := NewFSM(slog.New(slog.DiscardHandler))
	applyTo(t, fsm, 1, &SABatchCmd{Upserts: []SAUpsert{{ID: "a", Sealed: []byte{1}}}})
	first := fsm.AppliedAt("a")
	if first.IsZero() {
		t.Fatal("a new SA has no clock")
	}
	// A clock step between applies that any machine shows.
	for time.Now().Equal(first) {
		time.Sleep(time.Microsecond)
	}
	applyTo(t, fsm, 2, &SABatchCmd{Upserts: []SAUpsert{{ID: "a", Sealed: []byte{2}}}})
	if got := fsm.AppliedAt("a"); !got.Equal(first) {
		t.Fatalf("re-upsert moved the SA's clock from %v to %v", first, got)
	}
	applyTo(t, fsm, 3, &ReplayBatchCmd{Records: []ReplayRecord{{ID: "a", OSeq: 10}}})
	rec := fsm.AppliedAt("a")
	if !rec.After(first) {
		t.Fatalf("a replay record left the clock at %v (first apply %v)", rec, first)
	}
	for time.Now().Equal(rec) {
		time.Sleep(time.Microsecond)
	}
	applyTo(t, fsm, 4, &SABatchCmd{Upserts: []SAUpsert{{ID: "a", Sealed: []byte{3}}}})
	if got := fsm.AppliedAt("a"); !got.Equal(rec) {
		t.Fatalf("re-upsert after a record moved the clock from %v to %v", rec, got)
	}
	// Deleted and created again: a new SA, a new clock.
	applyTo(t, fsm, 5, &SABatchCmd{Deletes: []string{"a"}})
	if got := fsm.AppliedAt("a"); !got.IsZero() {
		t.Fatalf("a deleted SA keeps a clock: %v", got)
	}
	applyTo(t, fsm, 6, &SABatchCmd{Upserts: []SAUpsert{{ID: "a", Sealed: []byte{4}}}})
	if got := fsm.AppliedAt("a"); !got.After(rec) {
		t.Fatalf("a re-created SA has the old clock %v", got)
	}
}

// A ReplayCurrentCmd restarts the clock of every SA, those whose counters
// stand still (no record since long) included; it changes nothing
// replicated, and it survives the codec.
func TestReplayCurrentRestartsEveryClock(t *testing.T) {
	fsm := NewFSM(slog.New(slog.DiscardHandler))
	applyTo(t, fsm, 1, &SABatchCmd{Upserts: []SAUpsert{{ID: "idle", Sealed: []byte{1}}, {ID: "moving", Sealed: []byte{2}}}})
	applyTo(t, fsm, 2, &ReplayBatchCmd{Records: []ReplayRecord{{ID: "idle", OSeq: 7}, {ID: "moving", OSeq: 9}}})
	idle := fsm.AppliedAt("idle")
	for time.Now().Equal(idle) {
		time.Sleep(time.Microsecond)
	}
	applyTo(t, fsm, 3, &ReplayBatchCmd{Records: []ReplayRecord{{ID: "moving", OSeq: 20}}})
	if got := fsm.AppliedAt("idle"); !got.Equal(idle) {
		t.Fatalf("another SA's record moved the idle SA's clock")
	}
	var before State
	fsm.View(func(st *State) { before = *st.Clone() })
	readAt := time.Date(2026, 12, 8, 1, 2, 3, 4, time.UTC)
	data, err := Encode(&ReplayCurrentCmd{ReadAt: readAt})
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := cmd.Payload.(*ReplayCurrentCmd); !ok || !p.ReadAt.Equal(readAt) || cmd.Type != CmdReplayCurrent || cmd.Type.String() != "replay-current" {
		t.Fatalf("decoded %+v (%s)", cmd.Payload, cmd.Type)
	}
	applyTo(t, fsm, 4, &ReplayCurrentCmd{ReadAt: readAt})
	if got := fsm.AppliedAt("idle"); !got.After(idle) {
		t.Fatalf("the idle SA's clock stayed at %v after the counters were confirmed current", got)
	}
	var after State
	fsm.View(func(st *State) { after = *st.Clone() })
	if after.Replay["idle"].OSeq != 7 || after.Replay["moving"].OSeq != 20 || len(after.SAs) != len(before.SAs) {
		t.Fatalf("confirming changed the replicated state: %+v", after.Replay)
	}
}
