package ikeprobe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// syntheticSeeds are the hand-made part of the seed corpus: each kind of
// damage the parser must reject, next to valid replies. Replies captured
// from a real charon (lab_test.go) sit beside them in testdata.
func syntheticSeeds() map[string][]byte {
	const s = 0x0102030405060708
	nop := []pl{notifyPl(NotifyNoProposalChosen, nil)}
	return map[string][]byte{
		"valid-invalid-ke":      invalidKE(s, ECP256),
		"valid-no-proposal":     noProposal(s),
		"valid-cookie":          cookie(s),
		"valid-full":            fullReply(s),
		"truncated-header":      noProposal(s)[:20],
		"truncated-payload":     fullReply(s)[:100],
		"lying-payload-length":  msg(s, 0, flagResponse, []pl{{typ: payloadNotify, body: notifyBody(NotifyNoProposalChosen, nil), lie: 0xffff}}, nil),
		"lying-header-length":   msg(s, 0, flagResponse, nop, func(b []byte) { binary.BigEndian.PutUint32(b[24:], 0xffffffff) }),
		"zero-payload-length":   msg(s, 0, flagResponse, []pl{{typ: payloadNotify, body: notifyBody(NotifyNoProposalChosen, nil), lie: 0}, {typ: payloadVendor, lie: 0}}, func(b []byte) { b[30], b[31] = 0, 0 }),
		"wrong-version-1":       msg(s, 0, flagResponse, nop, func(b []byte) { b[17] = 0x10 }),
		"wrong-version-3":       msg(s, 0, flagResponse, nop, func(b []byte) { b[17] = 0x30 }),
		"not-a-response":        msg(s, 0, flagInitiator, nop, nil),
		"lying-transform-count": msg(s, 7, flagResponse, []pl{{typ: payloadSA, body: setByte(chosenSA(), 7, 200)}, {typ: payloadKE, body: keBody(ECP256, 64)}, {typ: payloadNonce, body: make([]byte, 32)}}, nil),
		"lying-notify-spi-size": msg(s, 0, flagResponse, []pl{{typ: payloadNotify, body: []byte{1, 255, 0, 14}}}, nil),
		"trailing-garbage":      append(noProposal(s), 0xde, 0xad),
	}
}

// TestSeedCorpus keeps testdata in step with syntheticSeeds (run with
// HANDOFF_CAPTURE_FUZZ_CORPUS=1 to rewrite the files) and checks that the
// corpus holds captured real replies that still parse.
func TestSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzParseResponse")
	for name, data := range syntheticSeeds() {
		path := filepath.Join(dir, "synthetic-"+name)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if os.Getenv("HANDOFF_CAPTURE_FUZZ_CORPUS") != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("seed %s missing or stale (rerun with HANDOFF_CAPTURE_FUZZ_CORPUS=1): %v", path, err)
		}
	}
	captured, _ := filepath.Glob(filepath.Join(dir, "charon-*"))
	if len(captured) < 4 {
		t.Fatalf("only %d captured charon replies in %s", len(captured), dir)
	}
	for _, p := range captured {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var data []byte
		line := strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[1])
		if _, err := fmt.Sscanf(line, "[]byte(%q)", &data); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if _, err := ParseResponse(data); err != nil {
			t.Errorf("captured reply %s no longer parses: %v", p, err)
		}
	}
}

func FuzzParseResponse(f *testing.F) {
	for _, b := range syntheticSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseResponse(data)
		if err != nil {
			if r != nil || !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v with response %v, or not ErrMalformed", err, r)
			}
			return
		}
		// What the parser accepted must hold up to the header's claims.
		if len(data) < headerLen || binary.BigEndian.Uint32(data[24:]) != uint32(len(data)) ||
			data[17]>>4 != 2 || data[18] != exchangeIKESAInit || data[19]&flagResponse == 0 || r.SPIi == 0 {
			t.Fatalf("accepted an invalid header: % x", data[:min(len(data), headerLen)])
		}
		switch r.Kind {
		case KindSAInit:
			if r.SPIr == 0 || r.Proposal == nil || r.NonceLen < 16 || r.Notify != nil {
				t.Fatalf("full response without its parts: %+v", r)
			}
		case KindInvalidKE, KindNoProposal, KindError:
			if r.Notify == nil || r.Notify.Type >= notifyErrorMax {
				t.Fatalf("%v without an error notify: %+v", r.Kind, r)
			}
		case KindCookie:
			if r.Notify == nil || r.Notify.Type != NotifyCookie || len(r.Notify.Data) == 0 || len(r.Notify.Data) > 64 {
				t.Fatalf("cookie response %+v", r)
			}
		default:
			t.Fatalf("unknown kind %v", r.Kind)
		}
		// Parsing is deterministic and does not keep or change the input.
		again, err := ParseResponse(append([]byte(nil), data...))
		if err != nil || again.Kind != r.Kind || again.Group != r.Group {
			t.Fatalf("second parse differs: %v %+v", err, again)
		}
	})
}
