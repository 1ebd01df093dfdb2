package raftstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func sealedState(t *testing.T, key byte) (*State, *Sealer) {
	t.Helper()
	s, err := NewSealer(bytes.Repeat([]byte{key}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	st := sampleState(t)
	for id := range st.SAs {
		b, err := s.Seal(id, []byte("sa "+id))
		if err != nil {
			t.Fatal(err)
		}
		st.SAs[id] = &SAEntry{ID: id, Sealed: b}
	}
	return st, s
}

// TestCheckRestoreNamesWhyASnapshotIsNotThisClusters covers every refusal
// of CheckRestore, each naming what is wrong, and the snapshots it takes.
func TestCheckRestoreNamesWhyASnapshotIsNotThisClusters(t *testing.T) {
	raftAddr := map[string]string{"gw1": "192.0.2.1:7946", "gw2": "192.0.2.2:7946", "gw3": "192.0.2.3:7946"}
	_, ours := sealedState(t, 1)
	for _, c := range []struct {
		name   string
		change func(st *State)
		want   string // "" when the snapshot is taken
	}{
		{"own", func(*State) {}, ""},
		{"from before gw3 joined and after gw4 left", func(st *State) {
			st.Members["gw4"] = Member{ID: "gw4", Address: "192.0.2.4:7946", Role: RoleWitness}
		}, ""},
		{"another key", func(st *State) {
			other, _ := sealedState(t, 2)
			st.SAs = other.SAs
		}, "2 of its 2 SAs do not open with this cluster's key (a snapshot of another cluster"},
		{"one blob damaged", func(st *State) {
			b := bytes.Clone(st.SAs["b"].Sealed)
			b[len(b)-1] ^= 1
			st.SAs["b"] = &SAEntry{ID: "b", Sealed: b}
		}, "1 of its 2 SAs do not open with this cluster's key; the first: opening sealed SA b"},
		{"no members", func(st *State) { clear(st.Members) }, "it has no members"},
		{"members elsewhere", func(st *State) {
			st.Members["gw1"] = Member{ID: "gw1", Address: "198.51.100.1:7946", Role: RoleGateway}
		}, "member gw1 is at 198.51.100.1:7946, but this cluster's Raft configuration has it at 192.0.2.1:7946"},
		{"no member known", func(st *State) {
			clear(st.Members)
			st.Members["x1"] = Member{ID: "x1", Address: "198.51.100.1:7946", Role: RoleGateway}
			st.Active = Active{}
		}, "none of its members (x1) is in this cluster's Raft configuration (gw1, gw2, gw3)"},
		{"shared address", func(st *State) {
			st.Members["gw4"] = Member{ID: "gw4", Address: "192.0.2.1:7946", Role: RoleGateway}
		}, "members gw1 and gw4 share the address 192.0.2.1:7946"},
		{"port 0", func(st *State) { st.Members["gw4"] = Member{ID: "gw4", Address: "192.0.2.4:0", Role: RoleGateway} }, `member gw4: address "192.0.2.4:0" has no port in 1-65535`},
		{"port 70000", func(st *State) { st.Members["gw4"] = Member{ID: "gw4", Address: "192.0.2.4:70000", Role: RoleGateway} }, "has no port in 1-65535"},
		{"no host", func(st *State) { st.Members["gw4"] = Member{ID: "gw4", Address: ":7946", Role: RoleGateway} }, "is not host:port"},
		{"bad role", func(st *State) { st.Members["gw4"] = Member{ID: "gw4", Address: "192.0.2.4:7946", Role: "boss"} }, `role "boss"`},
		{"active stranger", func(st *State) { st.Active.Node = "gw9" }, "its active node gw9 is not one of its members (gw1, gw2)"},
	} {
		st, _ := sealedState(t, 1)
		c.change(st)
		err := CheckRestore(st, ours, raftAddr)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.want != "" && (!errors.Is(err, ErrSnapshotRefused) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: err = %v, want ErrSnapshotRefused saying %q", c.name, err, c.want)
		}
	}
}

// TestReadSnapshotRefusesDuplicates: a snapshot that lists a member or an
// SA twice is malformed, not silently merged into the last entry.
func TestReadSnapshotRefusesDuplicates(t *testing.T) {
	st := sampleState(t)
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, st); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	// The metadata block, with gw1 listed twice.
	var meta snapMeta
	rest := good[len(snapMagic)+1:]
	n, k := binary.Uvarint(rest)
	if err := json.Unmarshal(rest[k:k+int(n)], &meta); err != nil {
		t.Fatal(err)
	}
	meta.Members = append(meta.Members, meta.Members[0])
	mj, _ := json.Marshal(meta)
	dupMember := append([]byte(snapMagic+"\x01"), binary.AppendUvarint(nil, uint64(len(mj)))...)
	dupMember = append(append(dupMember, mj...), rest[k+int(n):]...)
	if _, err := ReadSnapshot(bytes.NewReader(dupMember)); !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), `member "gw1" listed twice`) {
		t.Errorf("member twice: err = %v", err)
	}
	// Two SAs with one ID: write "a" under both IDs.
	st.SAs["b"] = &SAEntry{ID: "a", Sealed: []byte{9}}
	buf.Reset()
	if err := WriteSnapshot(&buf, st); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSnapshot(bytes.NewReader(buf.Bytes())); !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), "SA a twice") {
		t.Errorf("SA twice: err = %v", err)
	}
}
