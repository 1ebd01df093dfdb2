package raftstore

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

func testSealer(t testing.TB, b byte) *Sealer {
	t.Helper()
	s, err := NewSealer(bytes.Repeat([]byte{b}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSealRoundTripAndRefusals(t *testing.T) {
	s := testSealer(t, 1)
	pt := []byte("key material 0123456789")
	blob, err := s.Seal("sa-1", pt)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(blob, pt) {
		t.Fatal("sealed blob contains the plaintext")
	}
	got, err := s.Open("sa-1", blob)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("open = %q, %v", got, err)
	}
	if _, err := s.Open("sa-2", blob); err == nil {
		t.Error("a blob opened under another SA's ID")
	}
	if _, err := testSealer(t, 2).Open("sa-1", blob); !errors.Is(err, ErrSealKey) {
		t.Errorf("wrong key: err = %v, want ErrSealKey", err)
	}
	tampered := append([]byte(nil), blob...)
	tampered[len(tampered)-1] ^= 1
	if _, err := s.Open("sa-1", tampered); err == nil {
		t.Error("a tampered blob opened")
	}
	if _, err := s.Open("sa-1", blob[:10]); err == nil {
		t.Error("a truncated blob opened")
	}
	if _, err := NewSealer(make([]byte, 16)); err == nil {
		t.Error("a 16-byte cluster key was accepted")
	}
}

func sampleCommands() []any {
	at := time.Date(2026, 11, 25, 4, 0, 0, 0, time.UTC)
	return []any{
		&MemberCmd{ID: "gw1", Address: "192.0.2.1:7946", Role: RoleGateway, Priority: 100, Version: "v1.2.0"},
		&RemoveMemberCmd{ID: "gw3"},
		&ClaimCmd{Node: "gw1", At: at, Reason: ReasonLeaderSilent, Detail: "gw2 silent for 76ms", From: "gw2"},
		&HandoverCmd{From: "gw1", To: "gw2", Reason: ReasonDrain, Detail: "operator drain of gw1", At: at},
		&ActiveCmd{Node: "gw1", At: at, SAs: 3, Timings: Timings{Detect: time.Millisecond, Total: time.Second}},
		&FailedCmd{Node: "gw1", At: at, Phase: "move", Error: "throttled"},
		&HealthCmd{Observer: "gw2", Subject: "gw1", Healthy: false, Detail: "ike 500 timeout", At: at},
		&SABatchCmd{Upserts: []SAUpsert{{ID: "a", Sealed: []byte{1, 2, 3}}, {ID: "b", Sealed: []byte{4}}}, Deletes: []string{"c"}},
		&ReplayBatchCmd{Records: []ReplayRecord{{ID: "a", OSeq: 1 << 40, Seq: 7, Bitmap: []uint32{0xffffffff, 1}, ReadAt: at}}},
		&IKEChainsCmd{Node: "gw1", Upserts: []SAUpsert{{ID: "v2-01-02-r", Sealed: []byte{5, 6}}}, Deletes: []string{"v2-03-04-r"}},
	}
}

func TestCommandRoundTrip(t *testing.T) {
	for _, p := range sampleCommands() {
		data, err := Encode(p)
		if err != nil {
			t.Fatalf("encode %T: %v", p, err)
		}
		c, err := Decode(data)
		if err != nil {
			t.Fatalf("decode %T: %v", p, err)
		}
		if !reflect.DeepEqual(c.Payload, p) {
			t.Errorf("%T round trip:\n got %+v\nwant %+v", p, c.Payload, p)
		}
	}
}

func TestDecodeRefusesAndSkips(t *testing.T) {
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"type only", []byte{byte(CmdClaim)}, ErrMalformed},
		{"unknown type", []byte{0x41, 1, '{', '}'}, ErrUnknownType},
		{"future version", []byte{byte(CmdClaim), 9, '{', '}'}, ErrMalformed},
		{"version zero", []byte{byte(CmdClaim), 0, '{', '}'}, ErrMalformed},
		{"bad json", []byte{byte(CmdMember), 1, '{'}, ErrMalformed},
		{"sa batch lying count", []byte{byte(CmdSABatch), 1, 0x05}, ErrMalformed},
		{"sa batch trailing", append(encodeSABatch(&SABatchCmd{}), 0), ErrMalformed},
		{"ike chains without node", encodeIKEChains(&IKEChainsCmd{}), ErrMalformed},
		{"ike chain without payload", encodeIKEChains(&IKEChainsCmd{Node: "gw1", Upserts: []SAUpsert{{ID: "k"}}}), ErrMalformed},
		{"replay truncated bitmap", []byte{byte(CmdReplayBatch), 1, 1, 1, 'a', 0, 0, 2, 0, 0}, ErrMalformed},
	}
	for _, c := range cases {
		if _, err := Decode(c.data); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	c, err := Decode([]byte{0x80 | 0x41, 1, 'x'})
	if err != nil || c.Payload != nil {
		t.Errorf("ignorable unknown type: payload %v, err %v; want skipped", c.Payload, err)
	}
}

func applyAll(t *testing.T, st *State, term uint64, ps ...any) error {
	t.Helper()
	var last error
	for i, p := range ps {
		data, err := Encode(p)
		if err != nil {
			t.Fatal(err)
		}
		c, err := Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		last = st.apply(uint64(i+1), term, c)
	}
	return last
}

func TestStateClaimRules(t *testing.T) {
	st := NewState()
	members := []any{
		&MemberCmd{ID: "gw1", Address: "a:1", Role: RoleGateway},
		&MemberCmd{ID: "gw2", Address: "b:1", Role: RoleGateway},
		&MemberCmd{ID: "w1", Address: "c:1", Role: RoleWitness},
	}
	if err := applyAll(t, st, 1, members...); err != nil {
		t.Fatal(err)
	}
	if err := applyAll(t, st, 5, &ClaimCmd{Node: "gw1"}); err != nil {
		t.Fatalf("claim: %v", err)
	}
	if err := applyAll(t, st, 5, &ClaimCmd{Node: "gw2"}); !errors.Is(err, ErrRefused) {
		t.Errorf("second claimer in one term: err = %v", err)
	}
	if err := applyAll(t, st, 4, &ClaimCmd{Node: "gw2"}); !errors.Is(err, ErrRefused) {
		t.Errorf("claim at a lower term: err = %v", err)
	}
	if err := applyAll(t, st, 6, &ClaimCmd{Node: "w1"}); !errors.Is(err, ErrRefused) {
		t.Errorf("witness claim: err = %v", err)
	}
	if err := applyAll(t, st, 6, &ClaimCmd{Node: "nobody"}); !errors.Is(err, ErrNotMember) {
		t.Errorf("claim by a stranger: err = %v", err)
	}
	if err := applyAll(t, st, 6, &ActiveCmd{Node: "gw1"}); !errors.Is(err, ErrRefused) {
		t.Errorf("active at another term than the claim: err = %v", err)
	}
	if err := applyAll(t, st, 5, &ActiveCmd{Node: "gw1", SAs: 2}); err != nil {
		t.Errorf("active: %v", err)
	}
	if st.Active.Node != "gw1" || st.Active.Term != 5 || st.Active.Phase != PhaseActive {
		t.Errorf("active = %+v", st.Active)
	}
	if err := applyAll(t, st, 7, &ClaimCmd{Node: "gw2", From: "gw1"}); err != nil {
		t.Fatal(err)
	}
	if len(st.History) != 2 || st.History[0].Result != "completed" || st.History[1].Result != "claiming" {
		t.Errorf("history = %+v", st.History)
	}
	if err := applyAll(t, st, 7, &MemberCmd{ID: "gw2", Address: "b:1", Role: RoleWitness}); !errors.Is(err, ErrRefused) {
		t.Errorf("turning the active gateway into a witness: err = %v", err)
	}
}

func TestStateReplayAndHistoryBounds(t *testing.T) {
	st := NewState()
	_ = applyAll(t, st, 1, &SABatchCmd{Upserts: []SAUpsert{{ID: "a", Sealed: []byte{1}}}})
	_ = applyAll(t, st, 1, &ReplayBatchCmd{Records: []ReplayRecord{{ID: "a", OSeq: 100}, {ID: "gone", OSeq: 5}}})
	_ = applyAll(t, st, 1, &ReplayBatchCmd{Records: []ReplayRecord{{ID: "a", OSeq: 90, Seq: 3}}})
	if r := st.Replay["a"]; r.OSeq != 100 || r.Seq != 3 {
		t.Errorf("replay a = %+v: outbound counters must never go back", r)
	}
	if _, ok := st.Replay["gone"]; ok {
		t.Error("replay state kept for an SA that does not exist")
	}
	if err := applyAll(t, st, 1, &SABatchCmd{Upserts: []SAUpsert{{ID: "x", Sealed: []byte{1}}, {ID: "x", Sealed: []byte{2}}}}); !errors.Is(err, ErrRefused) {
		t.Errorf("duplicate SA in one batch: err = %v", err)
	}
	if _, ok := st.SAs["x"]; ok {
		t.Error("a refused batch changed the SA set")
	}
	_ = applyAll(t, st, 1, &MemberCmd{ID: "gw1", Address: "a:1", Role: RoleGateway})
	for term := uint64(2); term < 2+2*HistoryLimit; term++ {
		if err := applyAll(t, st, term, &ClaimCmd{Node: "gw1"}); err != nil {
			t.Fatal(err)
		}
	}
	if len(st.History) != HistoryLimit {
		t.Errorf("history holds %d entries, limit %d", len(st.History), HistoryLimit)
	}
}

func sampleState(t testing.TB) *State {
	st := NewState()
	at := time.Date(2026, 11, 25, 4, 0, 0, 0, time.UTC)
	for i, p := range []any{
		&MemberCmd{ID: "gw1", Address: "192.0.2.1:7946", Role: RoleGateway, Priority: 100, Version: "v1.2.0"},
		&MemberCmd{ID: "gw2", Address: "192.0.2.2:7946", Role: RoleGateway, Priority: 90},
		&HealthCmd{Observer: "gw2", Subject: "gw1", Healthy: true, At: at},
		&ClaimCmd{Node: "gw1", At: at},
		&SABatchCmd{Upserts: []SAUpsert{{ID: "a", Sealed: []byte{1, 2}}, {ID: "b", Sealed: []byte{3}}}},
		&ReplayBatchCmd{Records: []ReplayRecord{{ID: "a", OSeq: 42, Seq: 7, Bitmap: []uint32{3}, ReadAt: at}}},
		&ActiveCmd{Node: "gw1", At: at, SAs: 2},
		&IKEChainsCmd{Node: "gw1", Upserts: []SAUpsert{{ID: "v2-01-02-r", Sealed: []byte{7, 8, 9}}}},
		&HandoverCmd{From: "gw1", To: "gw2", Reason: ReasonPromote, At: at},
	} {
		data, _ := Encode(p)
		c, err := Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.apply(uint64(i+1), 3, c); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func TestSnapshotRoundTrip(t *testing.T) {
	st := sampleState(t)
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, st); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSnapshot(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Errorf("snapshot round trip:\n got %+v\nwant %+v", got, st)
	}
	// A snapshot written before IKE chains were replicated ends after the
	// replay states; it restores, with no chains. Cut anywhere else, it is
	// refused.
	legacy := st.Clone()
	legacy.IKEChains = map[string]*SAEntry{}
	var old bytes.Buffer
	if err := WriteSnapshot(&old, legacy); err != nil {
		t.Fatal(err)
	}
	oldLen := old.Len() - 1 // the empty chain block is one byte
	if got, err := ReadSnapshot(bytes.NewReader(buf.Bytes()[:oldLen])); err != nil || len(got.IKEChains) != 0 || len(got.SAs) != 2 {
		t.Fatalf("a snapshot without the IKE chain block: %v, %d chains, %d SAs", err, len(got.IKEChains), len(got.SAs))
	}
	for n := 0; n < buf.Len(); n += 7 {
		if n == oldLen {
			continue
		}
		if _, err := ReadSnapshot(bytes.NewReader(buf.Bytes()[:n])); !errors.Is(err, ErrSnapshot) {
			t.Fatalf("truncated at %d: err = %v, want ErrSnapshot", n, err)
		}
	}
}

// IKE chains are taken only from the node holding the active role: an old
// active whose charon still reports cannot write over its successor's.
func TestIKEChainsOnlyFromTheActive(t *testing.T) {
	st := sampleState(t) // gw1 active, one chain
	before := st.IKEChains["v2-01-02-r"]
	for _, node := range []string{"gw2", "gw9"} {
		err := applyAll(t, st, 3, &IKEChainsCmd{Node: node, Upserts: []SAUpsert{{ID: "v2-01-02-r", Sealed: []byte{1}}}, Deletes: []string{"v2-01-02-r"}})
		if !errors.Is(err, ErrRefused) || st.IKEChains["v2-01-02-r"] != before {
			t.Fatalf("chains from %q: err %v, chain now %v", node, err, st.IKEChains["v2-01-02-r"])
		}
	}
	if err := applyAll(t, st, 4, &ClaimCmd{Node: "gw2", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := applyAll(t, st, 4, &IKEChainsCmd{Node: "gw1", Deletes: []string{"v2-01-02-r"}}); !errors.Is(err, ErrRefused) {
		t.Fatalf("the old active wrote after gw2 claimed: %v", err)
	}
	if err := applyAll(t, st, 4, &IKEChainsCmd{Node: "gw2", Upserts: []SAUpsert{{ID: "k2", Sealed: []byte{2}}}, Deletes: []string{"v2-01-02-r"}}); err != nil {
		t.Fatalf("the claiming node's chains: %v", err)
	}
	if _, ok := st.IKEChains["v2-01-02-r"]; ok || st.IKEChains["k2"] == nil {
		t.Fatalf("chains after the claimant's batch: %v", st.IKEChains)
	}
	if err := applyAll(t, st, 4, &IKEChainsCmd{Node: "gw2", Upserts: []SAUpsert{{ID: "x", Sealed: []byte{1}}, {ID: "x", Sealed: []byte{2}}}}); !errors.Is(err, ErrRefused) {
		t.Fatalf("a chain twice in one batch: %v", err)
	}
}

func TestCloneIsIndependent(t *testing.T) {
	st := sampleState(t)
	cl := st.Clone()
	_ = applyAll(t, st, 9, &SABatchCmd{Deletes: []string{"a"}}, &HealthCmd{Observer: "gw1", Subject: "gw2", At: time.Now()})
	if _, ok := cl.SAs["a"]; !ok || len(cl.Health["gw2"]) != 0 {
		t.Error("a snapshot copy changed after the state moved on")
	}
}

// TestHandoverExplainsOnlyTheNextClaim: a hand-over announced by the
// leader explains the election that follows it, for the node it names,
// within two terms; the claim that follows consumes it, and an
// announcement with no reason withdraws it.
func TestHandoverExplainsOnlyTheNextClaim(t *testing.T) {
	st := NewState()
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if err := applyAll(t, st, 1, &MemberCmd{ID: "gw1", Address: "a:1", Role: RoleGateway},
		&MemberCmd{ID: "gw2", Address: "b:1", Role: RoleGateway}, &ClaimCmd{Node: "gw1", Reason: ReasonFirstElection}); err != nil {
		t.Fatal(err)
	}
	if err := applyAll(t, st, 3, &HandoverCmd{From: "stranger", Reason: ReasonDrain}); !errors.Is(err, ErrNotMember) {
		t.Errorf("a hand-over announced by a stranger: err = %v", err)
	}
	if err := applyAll(t, st, 3, &HandoverCmd{From: "gw1", To: "gw2", Reason: ReasonDrain, Detail: "operator drain of gw1", At: at}); err != nil {
		t.Fatal(err)
	}
	h := st.Handover
	if h.Term != 3 || h.Reason != ReasonDrain || h.To != "gw2" {
		t.Fatalf("handover = %+v", h)
	}
	for _, c := range []struct {
		node string
		term uint64
		want bool
	}{{"gw2", 4, true}, {"gw2", 5, true}, {"gw2", 6, false}, {"gw2", 3, false}, {"gw1", 4, false}} {
		if got := h.Explains(c.node, c.term, st.Active); got != c.want {
			t.Errorf("hand-over at term 3 to gw2 explains %s elected at term %d: %v, want %v", c.node, c.term, got, c.want)
		}
	}
	if err := applyAll(t, st, 4, &ClaimCmd{Node: "gw2", Reason: h.Reason, Detail: h.Detail, From: "gw1"}); err != nil {
		t.Fatal(err)
	}
	if st.Handover != (Handover{}) {
		t.Errorf("the claim left the hand-over in place: %+v", st.Handover)
	}
	if last := st.History[len(st.History)-1]; last.Reason != ReasonDrain || last.Detail != "operator drain of gw1" || st.Active.Reason != ReasonDrain {
		t.Errorf("history entry %+v, active %+v", last, st.Active)
	}
	_ = applyAll(t, st, 4, &HandoverCmd{From: "gw2", Reason: ReasonTransfer})
	_ = applyAll(t, st, 4, &HandoverCmd{From: "gw2"})
	if st.Handover != (Handover{}) {
		t.Errorf("a withdrawn hand-over stands: %+v", st.Handover)
	}
}
