// Package ikeprobe checks that an IKEv2 responder (charon) answers, the way
// a VPN client would find out: it sends a well-formed IKE_SA_INIT request
// (RFC 7296) to UDP 500, or behind the non-ESP marker to UDP 4500 (RFC
// 3948), and accepts any valid IKEv2 response that carries its SPI.
//
// By default the probe is stateless on the responder: it proposes real
// algorithms and groups but sends its key exchange in a group it did not
// propose, so the responder answers INVALID_KE_PAYLOAD (or
// NO_PROPOSAL_CHOSEN) and destroys the IKE_SA at once. A probe that
// completed IKE_SA_INIT would leave a half-open IKE_SA on the gateway for
// half_open_timeout (30 s in strongSwan) each time; a few of those from one
// address reach charon's cookie and block thresholds and make the gateway
// drop real clients' requests (see docs/healthcheck.md).
//
// ParseResponse is strict: it bounds every length against the datagram and
// names what was wrong; it is fuzzed (FuzzParseResponse).
package ikeprobe

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// IKEv2 constants (RFC 7296 section 3, IANA "IKEv2 Parameters").
const (
	headerLen = 28

	exchangeIKESAInit = 34

	flagInitiator = 0x08
	flagVersion   = 0x10
	flagResponse  = 0x20

	version20 = 0x20

	payloadNone    = 0
	payloadSA      = 33
	payloadKE      = 34
	payloadIDi     = 35
	payloadIDr     = 36
	payloadCert    = 37
	payloadCertReq = 38
	payloadAuth    = 39
	payloadNonce   = 40
	payloadNotify  = 41
	payloadDelete  = 42
	payloadVendor  = 43
	payloadTSi     = 44
	payloadTSr     = 45
	payloadSK      = 46
	payloadCP      = 47
	payloadEAP     = 48
	payloadSKF     = 53

	protoIKE = 1

	transformENCR  = 1
	transformPRF   = 2
	transformINTEG = 3
	transformDH    = 4

	encrAESCBC   = 12
	encrAESGCM16 = 20

	prfHMACSHA256 = 5
	prfHMACSHA384 = 6

	integHMACSHA256128 = 12
	integHMACSHA384192 = 13

	attrKeyLength = 14
	attrTV        = 0x8000
)

// Notify message types the probe knows (IANA "IKEv2 Notify Message Types").
const (
	NotifyUnsupportedCriticalPayload = 1
	NotifyInvalidMajorVersion        = 5
	NotifyInvalidSyntax              = 7
	NotifyNoProposalChosen           = 14
	NotifyInvalidKEPayload           = 17
	NotifyNATDetectionSourceIP       = 16388
	NotifyNATDetectionDestinationIP  = 16389
	NotifyCookie                     = 16390
)

// notifyErrorMax: notify types below it are errors (RFC 7296 3.10.1).
const notifyErrorMax = 16384

// Group is an IKEv2 Diffie-Hellman group number.
type Group uint16

// Groups the probe can propose; it computes key exchanges for the ECP ones
// and X25519 (crypto/ecdh).
const (
	MODP2048   Group = 14
	MODP3072   Group = 15
	ECP256     Group = 19
	ECP384     Group = 20
	ECP521     Group = 21
	Curve25519 Group = 31
)

func (g Group) String() string {
	switch g {
	case MODP2048:
		return "modp2048"
	case MODP3072:
		return "modp3072"
	case ECP256:
		return "ecp256"
	case ECP384:
		return "ecp384"
	case ECP521:
		return "ecp521"
	case Curve25519:
		return "curve25519"
	}
	return fmt.Sprintf("group(%d)", uint16(g))
}

// keLen is the length of a group's key exchange data (RFC 7296, RFC 5903:
// x || y for ECP, RFC 8031 for X25519), or 0 when the probe does not know it.
func (g Group) keLen() int {
	switch g {
	case MODP2048:
		return 256
	case MODP3072:
		return 384
	case ECP256:
		return 64
	case ECP384:
		return 96
	case ECP521:
		return 132
	case Curve25519:
		return 32
	}
	return 0
}

func (g Group) curve() ecdh.Curve {
	switch g {
	case ECP256:
		return ecdh.P256()
	case ECP384:
		return ecdh.P384()
	case ECP521:
		return ecdh.P521()
	case Curve25519:
		return ecdh.X25519()
	}
	return nil
}

// keyExchange returns a fresh public value for g in IKEv2's encoding.
func keyExchange(g Group) ([]byte, error) {
	c := g.curve()
	if c == nil {
		return nil, fmt.Errorf("computing a key exchange for %v: only ECP and curve25519 groups are supported", g)
	}
	k, err := c.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating a %v key: %w", g, err)
	}
	pub := k.PublicKey().Bytes()
	if g != Curve25519 {
		// crypto/ecdh gives the uncompressed SEC 1 point 0x04||x||y;
		// IKEv2 carries x||y (RFC 5903 section 7).
		pub = pub[1:]
	}
	return pub, nil
}

// Request is one IKE_SA_INIT request.
type Request struct {
	SPI     uint64
	Groups  []Group // DH groups in every proposal of the SA payload
	KEGroup Group
	KEData  []byte
	Nonce   []byte
	// Local and Remote are the addresses the NAT detection hashes cover.
	Local, Remote netip.AddrPort
}

// NewRequest returns a request with a random non-zero SPI, a 32-byte
// nonce and a fresh key exchange in keGroup.
func NewRequest(groups []Group, keGroup Group, local, remote netip.AddrPort) (*Request, error) {
	r := &Request{Groups: groups, KEGroup: keGroup, Local: local, Remote: remote, Nonce: make([]byte, 32)}
	var spi [8]byte
	for r.SPI == 0 {
		if _, err := rand.Read(spi[:]); err != nil {
			return nil, fmt.Errorf("reading a random SPI: %w", err)
		}
		r.SPI = binary.BigEndian.Uint64(spi[:])
	}
	if _, err := rand.Read(r.Nonce); err != nil {
		return nil, fmt.Errorf("reading a random nonce: %w", err)
	}
	ke, err := keyExchange(keGroup)
	if err != nil {
		return nil, err
	}
	r.KEData = ke
	return r, nil
}

// natHash is SHA-1(SPIi | SPIr | IP | port) (RFC 7296 2.23); SPIr is zero
// in an IKE_SA_INIT request.
func natHash(spi uint64, ap netip.AddrPort) []byte {
	h := sha1.New()
	var b [18]byte
	binary.BigEndian.PutUint64(b[0:], spi)
	binary.BigEndian.PutUint64(b[8:], 0)
	h.Write(b[:16])
	h.Write(ap.Addr().Unmap().AsSlice())
	binary.BigEndian.PutUint16(b[16:], ap.Port())
	h.Write(b[16:18])
	return h.Sum(nil)
}

// Marshal encodes the request: header, SA, KE, Nonce and the two NAT
// detection notifies.
func (r *Request) Marshal() ([]byte, error) {
	if r.SPI == 0 {
		return nil, errors.New("encoding IKE_SA_INIT: zero SPI")
	}
	if len(r.Nonce) < 16 || len(r.Nonce) > 256 {
		return nil, fmt.Errorf("encoding IKE_SA_INIT: nonce of %d bytes, want 16..256", len(r.Nonce))
	}
	if len(r.Groups) == 0 {
		return nil, errors.New("encoding IKE_SA_INIT: no DH groups to propose")
	}
	type payload struct {
		typ  uint8
		body []byte
	}
	ke := binary.BigEndian.AppendUint16(nil, uint16(r.KEGroup))
	ke = append(ke, 0, 0)
	ke = append(ke, r.KEData...)
	payloads := []payload{
		{payloadSA, r.saBody()},
		{payloadKE, ke},
		{payloadNonce, r.Nonce},
		{payloadNotify, notifyBody(NotifyNATDetectionSourceIP, natHash(r.SPI, r.Local))},
		{payloadNotify, notifyBody(NotifyNATDetectionDestinationIP, natHash(r.SPI, r.Remote))},
	}
	b := make([]byte, headerLen, 512)
	binary.BigEndian.PutUint64(b[0:], r.SPI)
	// b[8:16] responder SPI: zero.
	b[16] = payloads[0].typ
	b[17] = version20
	b[18] = exchangeIKESAInit
	b[19] = flagInitiator
	// b[20:24] message ID 0; b[24:28] length, set below.
	for i, p := range payloads {
		next := uint8(payloadNone)
		if i+1 < len(payloads) {
			next = payloads[i+1].typ
		}
		b = append(b, next, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(4+len(p.body)))
		b = append(b, p.body...)
	}
	binary.BigEndian.PutUint32(b[24:], uint32(len(b)))
	return b, nil
}

func notifyBody(typ uint16, data []byte) []byte {
	b := []byte{0, 0} // protocol ID 0 and no SPI: about the IKE_SA being set up
	b = binary.BigEndian.AppendUint16(b, typ)
	return append(b, data...)
}

type transform struct {
	typ    uint8
	id     uint16
	keyLen uint16 // 0: no key length attribute
}

// saBody is two proposals: AES-GCM-16 (256/128) with PRF HMAC-SHA2-256/384,
// and AES-CBC (256/128) with HMAC-SHA2-256-128/384-192 and the same PRFs,
// each with every group in r.Groups.
func (r *Request) saBody() []byte {
	common := []transform{{transformPRF, prfHMACSHA256, 0}, {transformPRF, prfHMACSHA384, 0}}
	for _, g := range r.Groups {
		common = append(common, transform{transformDH, uint16(g), 0})
	}
	gcm := append([]transform{{transformENCR, encrAESGCM16, 256}, {transformENCR, encrAESGCM16, 128}}, common...)
	cbc := append([]transform{
		{transformENCR, encrAESCBC, 256}, {transformENCR, encrAESCBC, 128},
		{transformINTEG, integHMACSHA256128, 0}, {transformINTEG, integHMACSHA384192, 0},
	}, common...)
	var b []byte
	b = appendProposal(b, 1, gcm, false)
	b = appendProposal(b, 2, cbc, true)
	return b
}

func appendProposal(b []byte, num uint8, ts []transform, last bool) []byte {
	var body []byte
	for i, t := range ts {
		more := uint8(3)
		if i == len(ts)-1 {
			more = 0
		}
		tl := 8
		if t.keyLen != 0 {
			tl += 4
		}
		body = append(body, more, 0)
		body = binary.BigEndian.AppendUint16(body, uint16(tl))
		body = append(body, t.typ, 0)
		body = binary.BigEndian.AppendUint16(body, t.id)
		if t.keyLen != 0 {
			body = binary.BigEndian.AppendUint16(body, attrTV|attrKeyLength)
			body = binary.BigEndian.AppendUint16(body, t.keyLen)
		}
	}
	more := uint8(2)
	if last {
		more = 0
	}
	b = append(b, more, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(body)))
	b = append(b, num, protoIKE, 0, uint8(len(ts)))
	return append(b, body...)
}

// nonESPMarker precedes IKE messages on UDP 4500 (RFC 3948 section 2.2).
var nonESPMarker = []byte{0, 0, 0, 0}
