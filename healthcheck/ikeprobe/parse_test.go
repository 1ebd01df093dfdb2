package ikeprobe

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

const spi = 0x0102030405060708

func TestParseValid(t *testing.T) {
	for _, tc := range []struct {
		name  string
		b     []byte
		kind  Kind
		group Group
	}{
		{"invalid ke", invalidKE(spi, ECP256), KindInvalidKE, ECP256},
		{"no proposal", noProposal(spi), KindNoProposal, 0},
		{"cookie", cookie(spi), KindCookie, 0},
		{"full", fullReply(spi), KindSAInit, ECP256},
		{"invalid syntax", msg(spi, 0, flagResponse, []pl{notifyPl(NotifyInvalidSyntax, nil)}, nil), KindError, 0},
		{"unknown non-critical payload", msg(spi, 0, flagResponse, []pl{{typ: 200, body: []byte{1, 2}}, notifyPl(NotifyNoProposalChosen, nil)}, nil), KindNoProposal, 0},
		{"minor version ignored", msg(spi, 0, flagResponse, []pl{notifyPl(NotifyNoProposalChosen, nil)}, func(b []byte) { b[17] = 0x21 }), KindNoProposal, 0},
		{"version flag", msg(spi, 0, flagResponse|flagVersion, []pl{notifyPl(NotifyNoProposalChosen, nil)}, nil), KindNoProposal, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseResponse(tc.b)
			if err != nil {
				t.Fatal(err)
			}
			if r.Kind != tc.kind || r.Group != tc.group || !r.Matches(spi) || r.Matches(spi+1) {
				t.Fatalf("got %+v", r)
			}
		})
	}
	r, err := ParseResponse(fullReply(spi))
	if err != nil {
		t.Fatal(err)
	}
	if r.SPIr != 0x1122334455667788 || r.NonceLen != 32 || len(r.Notifies) != 3 || r.Proposal == nil ||
		len(r.Proposal.Transforms) != 3 || r.Proposal.Transforms[0] != (Transform{transformENCR, encrAESGCM16, 128}) {
		t.Fatalf("full reply parsed as %+v (proposal %+v)", r, r.Proposal)
	}
}

func TestParseRejects(t *testing.T) {
	nop := []pl{notifyPl(NotifyNoProposalChosen, nil)}
	twoProposals := append(appendProposal(nil, 1, []transform{{transformENCR, encrAESGCM16, 128}}, false),
		appendProposal(nil, 2, []transform{{transformENCR, encrAESGCM16, 128}}, true)...)
	full := func(mut func(p []pl) []pl) []byte {
		p := []pl{{typ: payloadSA, body: chosenSA()}, {typ: payloadKE, body: keBody(ECP256, 64)}, {typ: payloadNonce, body: make([]byte, 32)}}
		return msg(spi, 7, flagResponse, mut(p), nil)
	}
	many := make([]pl, maxPayloads+1)
	for i := range many {
		many[i] = pl{typ: payloadVendor, body: []byte{1}}
	}
	for _, tc := range []struct {
		name, want string
		b          []byte
	}{
		{"empty", "truncated", nil},
		{"short header", "truncated", noProposal(spi)[:27]},
		{"truncated payload", "header length", noProposal(spi)[:30]},
		{"major version 1", "major version 1", msg(spi, 0, flagResponse, nop, func(b []byte) { b[17] = 0x10 })},
		{"major version 3", "major version 3", msg(spi, 0, flagResponse, nop, func(b []byte) { b[17] = 0x30 })},
		{"length too long", "header length", msg(spi, 0, flagResponse, nop, func(b []byte) { binary.BigEndian.PutUint32(b[24:], uint32(len(b)+1)) })},
		{"length too short", "header length", msg(spi, 0, flagResponse, nop, func(b []byte) { binary.BigEndian.PutUint32(b[24:], 28) })},
		{"exchange", "exchange type 35", msg(spi, 0, flagResponse, nop, func(b []byte) { b[18] = 35 })},
		{"request", "not a response", msg(spi, 0, flagInitiator, nop, nil)},
		{"initiator flag", "initiator flag", msg(spi, 0, flagResponse|flagInitiator, nop, nil)},
		{"message id", "message ID 1", msg(spi, 0, flagResponse, nop, func(b []byte) { b[23] = 1 })},
		{"zero spi", "zero initiator SPI", msg(0, 0, flagResponse, nop, nil)},
		{"payload length lies long", "exceeds", msg(spi, 0, flagResponse, []pl{{typ: payloadNotify, body: notifyBody(NotifyNoProposalChosen, nil), lie: 400}}, nil)},
		{"payload length lies short", "shorter than its header", msg(spi, 0, flagResponse, []pl{{typ: payloadNotify, body: notifyBody(NotifyNoProposalChosen, nil), lie: 3}}, nil)},
		{"payload length leaves trailing bytes", "after the last payload", msg(spi, 0, flagResponse, []pl{{typ: payloadNotify, body: notifyBody(NotifyNoProposalChosen, []byte{1, 2}), lie: 8}}, nil)},
		{"chain promises more", "truncated", msg(spi, 0, flagResponse, nop, func(b []byte) { b[28] = payloadVendor })},
		{"no payloads", "neither", msg(spi, 0, flagResponse, nil, nil)},
		{"status notify only", "neither", msg(spi, 0, flagResponse, []pl{notifyPl(NotifyNATDetectionSourceIP, make([]byte, 20))}, nil)},
		{"notify too short", "notify body", msg(spi, 0, flagResponse, []pl{{typ: payloadNotify, body: []byte{0, 0, 0}}}, nil)},
		{"notify spi size lies", "SPI size 9", msg(spi, 0, flagResponse, []pl{{typ: payloadNotify, body: []byte{1, 9, 0, 14, 1, 2}}}, nil)},
		{"invalid ke bad data", "want 2", msg(spi, 0, flagResponse, []pl{notifyPl(NotifyInvalidKEPayload, []byte{0, 19, 0})}, nil)},
		{"cookie too long", "COOKIE of 65", msg(spi, 0, flagResponse, []pl{notifyPl(NotifyCookie, make([]byte, 65))}, nil)},
		{"cookie empty", "COOKIE of 0", msg(spi, 0, flagResponse, []pl{notifyPl(NotifyCookie, nil)}, nil)},
		{"unknown critical", "critical", msg(spi, 0, flagResponse, []pl{{typ: 201, critical: true}, notifyPl(NotifyNoProposalChosen, nil)}, nil)},
		{"encrypted payload", "not allowed", msg(spi, 0, flagResponse, []pl{{typ: payloadSK, body: make([]byte, 16)}}, nil)},
		{"auth payload", "not allowed", msg(spi, 0, flagResponse, []pl{{typ: payloadAuth, body: make([]byte, 16)}}, nil)},
		{"too many payloads", "more than 64", msg(spi, 0, flagResponse, many, nil)},
		{"full zero responder spi", "zero responder SPI", msg(spi, 0, flagResponse, []pl{{typ: payloadSA, body: chosenSA()}, {typ: payloadKE, body: keBody(ECP256, 64)}, {typ: payloadNonce, body: make([]byte, 32)}}, nil)},
		{"full without nonce", "Nonce false", full(func(p []pl) []pl { return p[:2] })},
		{"two SA payloads", "second SA", full(func(p []pl) []pl { return append(p, p[0]) })},
		{"two KE payloads", "second KE", full(func(p []pl) []pl { return append(p, p[1]) })},
		{"two nonces", "second Nonce", full(func(p []pl) []pl { return append(p, p[2]) })},
		{"short nonce", "nonce of 15", full(func(p []pl) []pl { p[2].body = make([]byte, 15); return p })},
		{"long nonce", "nonce of 257", full(func(p []pl) []pl { p[2].body = make([]byte, 257); return p })},
		{"ke length wrong", "want 64", full(func(p []pl) []pl { p[1].body = keBody(ECP256, 65); return p })},
		{"ke empty", "empty KE", full(func(p []pl) []pl { p[1].body = keBody(99, 0); return p })},
		{"ke short", "KE body", full(func(p []pl) []pl { p[1].body = []byte{0, 19}; return p })},
		{"two proposals", "more than one proposal", full(func(p []pl) []pl { p[0].body = twoProposals; return p })},
		{"proposal esp", "protocol 3", full(func(p []pl) []pl { p[0].body = setByte(chosenSA(), 5, 3); return p })},
		{"proposal spi size", "SPI size 4", full(func(p []pl) []pl { p[0].body = setByte(chosenSA(), 6, 4); return p })},
		{"transform count lies", "transform 2 of 4: last-substructure", full(func(p []pl) []pl { p[0].body = setByte(chosenSA(), 7, 4); return p })},
		{"transform count short", "after the proposal's 2 transforms", full(func(p []pl) []pl { p[0].body = setByte(setByte(chosenSA(), 7, 2), 8+12, 0); return p })},
		{"transform length lies", "length 255", full(func(p []pl) []pl { p[0].body = setByte(chosenSA(), 8+3, 255); return p })},
		{"proposal length lies", "proposal length", full(func(p []pl) []pl { p[0].body = setByte(chosenSA(), 3, 255); return p })},
		{"sa too short", "SA body", full(func(p []pl) []pl { p[0].body = []byte{0, 0, 0, 4}; return p })},
		{"last transform marker", "last-substructure", full(func(p []pl) []pl { p[0].body = setByte(chosenSA(), 8+12+8, 3); return p })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseResponse(tc.b)
			if err == nil {
				t.Fatalf("accepted: %+v", r)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func setByte(b []byte, i int, v byte) []byte {
	b[i] = v
	return b
}
