package raftstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/handoffvpn/handoff/internal/allocguard"
)

// fuzzSealer seals with a fixed key, so that the blobs in
// testdata/fuzz/FuzzSealerOpen stay valid seeds.
func fuzzSealer(t testing.TB) *Sealer {
	t.Helper()
	s, err := NewSealer(bytes.Repeat([]byte{0x17}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// FuzzSealerOpen: whatever blob and SA ID a peer or a snapshot carries,
// Open returns the plaintext or an error, never a panic or an allocation
// beyond the blob; and what opens is bound to its ID and to every byte.
func FuzzSealerOpen(f *testing.F) {
	s := fuzzSealer(f)
	blob, err := s.Seal("sa-1", []byte("an SA's encoding"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("sa-1", blob)
	f.Add("sa-1", blob[:sealHeader])
	f.Add("", []byte{})
	f.Fuzz(func(t *testing.T, id string, blob []byte) {
		var (
			pt  []byte
			err error
		)
		allocguard.Check(t, "Open", len(blob)+len(id), func() { pt, err = s.Open(id, blob) })
		if err != nil {
			if len(blob) >= sealHeader+s.aead.Overhead() && blob[0] == sealVersion &&
				binary.BigEndian.Uint32(blob[1:5]) != s.keyID && !errors.Is(err, ErrSealKey) {
				t.Fatalf("a blob with another key id failed without ErrSealKey: %v", err)
			}
			return
		}
		if len(pt) != len(blob)-sealHeader-s.aead.Overhead() {
			t.Fatalf("opened %d bytes from a blob of %d", len(pt), len(blob))
		}
		if _, err := s.Open(id+"x", blob); err == nil {
			t.Fatalf("a blob sealed for %q opened under another ID", id)
		}
		for i := range blob {
			flipped := bytes.Clone(blob)
			flipped[i] ^= 0x01
			if _, err := s.Open(id, flipped); err == nil {
				t.Fatalf("a blob with byte %d flipped opened", i)
			}
		}
	})
}

// FuzzReadRPCRequest: whatever a peer sends on the cluster RPC, the
// request decodes or is an error (never a panic, never memory beyond what
// it sent), and what decodes survives a round trip unchanged.
func FuzzReadRPCRequest(f *testing.F) {
	for _, r := range []RPCRequest{
		{Op: "join", ID: "gw2", Address: "192.0.2.2:7946", Role: RoleGateway, Priority: 90},
		{Op: "leave"},
		{Op: "operator.promote", ID: "gw3"},
		{Op: "health", Health: &HealthCmd{Observer: "gw2", Subject: "gw1", Healthy: true, Detail: "ike ok"}},
	} {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte(`{"op":"join","id":"gw2"}{"op":"leave"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var (
			req *RPCRequest
			err error
		)
		allocguard.Check(t, "readRPCRequest", len(data), func() { req, err = readRPCRequest(bytes.NewReader(data)) })
		if err != nil {
			return
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", req, err)
		}
		again, err := readRPCRequest(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("re-decoding %s: %v", b, err)
		}
		if !reflect.DeepEqual(req, again) {
			t.Fatalf("round trip changed the request:\n %+v\n %+v", req, again)
		}
	})
}
