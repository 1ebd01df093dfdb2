package raftstore

import (
	"bytes"
	"testing"

	"github.com/handoffvpn/handoff/internal/allocguard"
)

// FuzzDecodeCommand: no input may panic the decoder or make it allocate
// far more than the input holds, and whatever decodes must apply to a
// state without panicking and re-encode to a decodable entry.
func FuzzDecodeCommand(f *testing.F) {
	for _, p := range sampleCommands() {
		data, _ := Encode(p)
		f.Add(data)
	}
	f.Add([]byte{0x80 | 0x22, 1})
	f.Add([]byte{byte(CmdSABatch), 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		var (
			c   Command
			err error
		)
		allocguard.Check(t, "Decode", len(data), func() { c, err = Decode(data) })
		if err != nil || c.Payload == nil {
			return
		}
		st := sampleState(t)
		before := st.Clone()
		if err := st.apply(100, 3, c); err != nil {
			// A refused command must leave the state as it was.
			var a, b bytes.Buffer
			_ = WriteSnapshot(&a, before)
			before.LastIndex = st.LastIndex
			_ = WriteSnapshot(&b, st)
			if !bytes.Equal(a.Bytes(), b.Bytes()) {
				t.Fatalf("refused command %s changed the state: %v", c.Type, err)
			}
		}
		again, err := Encode(c.Payload)
		if err != nil {
			t.Fatalf("re-encoding %T: %v", c.Payload, err)
		}
		if _, err := Decode(again); err != nil {
			t.Fatalf("re-encoded %T does not decode: %v", c.Payload, err)
		}
	})
}

// FuzzReadSnapshot: a corrupt snapshot is an error, never a panic, and
// never an allocation its bytes do not justify (testdata/fuzz holds the
// 16-byte snapshots of issue 17 whose prefixes claim gigabytes).
func FuzzReadSnapshot(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteSnapshot(&buf, sampleState(f))
	f.Add(buf.Bytes())
	f.Add([]byte(snapMagic + "\x01\x02{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var (
			st  *State
			err error
		)
		allocguard.Check(t, "ReadSnapshot", len(data), func() { st, err = ReadSnapshot(bytes.NewReader(data)) })
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteSnapshot(&out, st); err != nil {
			t.Fatalf("rewriting a snapshot that read: %v", err)
		}
	})
}
