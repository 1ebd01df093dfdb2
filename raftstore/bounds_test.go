package raftstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/internal/allocguard"
)

// gigabyteSnapshots are 16-byte snapshots whose length prefixes claim far
// more than they hold, as in issue 17 (four such bodies took a leader from
// 43 MiB to 4.1 GiB).
func gigabyteSnapshots(t testing.TB) map[string][]byte {
	t.Helper()
	head := []byte(snapMagic + "\x01")
	meta := binary.AppendUvarint(bytes.Clone(head), maxSnapMeta) // the most it may hold, in 4 bytes
	meta = append(meta, `{}   `...)
	replay := append(bytes.Clone(head), "\x02{}\x00"...) // empty metadata, no SA
	replay = binary.AppendUvarint(replay, maxSnapReplay-1)
	out := map[string][]byte{"metadata of 64 MiB": meta, "replay states of 2 GiB": replay}
	for name, b := range out {
		if len(b) != 16 {
			t.Fatalf("%s: %d bytes, want 16", name, len(b))
		}
	}
	return out
}

// TestSnapshotPrefixesClaimingGigabytesAllocateNothing: a snapshot whose
// prefixes claim gigabytes is refused, naming the block, with the process's
// memory essentially unchanged, both as an operator's restore reads it and
// as it arrives over Raft (FSM.Restore).
func TestSnapshotPrefixesClaimingGigabytesAllocateNothing(t *testing.T) {
	const budget = 2 << 20 // the 64 KiB read buffer and the errors, with room to spare
	for name, in := range gigabyteSnapshots(t) {
		var err error
		got := allocguard.Allocated(func() {
			for range 4 {
				_, err = ReadSnapshot(bytes.NewReader(in))
			}
		})
		if !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), "reading ") {
			t.Errorf("%s: err = %v, want ErrSnapshot naming the block it could not read", name, err)
		}
		if got > budget {
			t.Errorf("%s: four reads of 16 bytes allocated %d bytes (at most %d)", name, got, budget)
		}

		fsm := NewFSM(slog.New(slog.DiscardHandler))
		before := fsm.Changed()
		got = allocguard.Allocated(func() { err = fsm.Restore(io.NopCloser(bytes.NewReader(in))) })
		if !errors.Is(err, ErrSnapshot) {
			t.Errorf("%s over Raft: err = %v, want ErrSnapshot", name, err)
		}
		if got > budget {
			t.Errorf("%s over Raft: allocated %d bytes (at most %d)", name, got, budget)
		}
		select {
		case <-before:
			t.Errorf("%s over Raft: a refused snapshot changed the state", name)
		default:
		}
	}
}
