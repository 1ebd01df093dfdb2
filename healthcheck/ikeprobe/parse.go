package ikeprobe

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrMalformed: the reply is not a valid IKEv2 IKE_SA_INIT response. The
// wrapping error names what was wrong.
var ErrMalformed = errors.New("malformed IKE response")

// maxPayloads bounds the payload chain walk.
const maxPayloads = 64

// Kind classifies a valid IKE_SA_INIT response.
type Kind uint8

const (
	// KindSAInit: a full IKE_SA_INIT response (SA, KE, Nonce). The
	// responder now holds a half-open IKE_SA.
	KindSAInit Kind = iota + 1
	// KindCookie: the responder asks for a COOKIE (it is under load or
	// has reached its cookie threshold); it kept no state.
	KindCookie
	// KindInvalidKE: INVALID_KE_PAYLOAD naming the group it wants; no
	// state kept.
	KindInvalidKE
	// KindNoProposal: NO_PROPOSAL_CHOSEN; no state kept.
	KindNoProposal
	// KindError: another error notify (Response.Notify says which).
	KindError
)

func (k Kind) String() string {
	switch k {
	case KindSAInit:
		return "IKE_SA_INIT response"
	case KindCookie:
		return "COOKIE"
	case KindInvalidKE:
		return "INVALID_KE_PAYLOAD"
	case KindNoProposal:
		return "NO_PROPOSAL_CHOSEN"
	case KindError:
		return "error notify"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Notify is one Notify payload.
type Notify struct {
	Type     uint16
	Protocol uint8
	SPI      []byte
	Data     []byte
}

// Proposal is the proposal a responder chose: transform type to IDs.
type Proposal struct {
	Num        uint8
	Transforms []Transform
}

// Transform is one transform of a proposal; KeyLen is 0 without a key
// length attribute.
type Transform struct {
	Type   uint8
	ID     uint16
	KeyLen uint16
}

// Response is a parsed, valid IKE_SA_INIT response.
type Response struct {
	SPIi, SPIr uint64
	Kind       Kind
	// Notify is the notify that decided Kind (error or COOKIE), nil for
	// KindSAInit.
	Notify *Notify
	// Group is the group INVALID_KE_PAYLOAD asks for, or the responder's
	// KE group in a full response.
	Group    Group
	Proposal *Proposal // full response only
	NonceLen int       // full response only
	Notifies []Notify
	Vendors  int // vendor ID payloads seen
}

// ParseResponse parses an IKEv2 message (without the non-ESP marker) and
// checks that it is a valid response to an IKE_SA_INIT request. It does
// not check the SPI against a request: see (*Response).Matches.
func ParseResponse(b []byte) (*Response, error) {
	r, err := parseResponse(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return r, nil
}

// Matches reports whether the response answers the request with this
// initiator SPI.
func (r *Response) Matches(spi uint64) bool { return r.SPIi == spi }

func parseResponse(b []byte) (*Response, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("truncated: %d bytes, an IKE header is %d", len(b), headerLen)
	}
	r := &Response{
		SPIi: binary.BigEndian.Uint64(b[0:]),
		SPIr: binary.BigEndian.Uint64(b[8:]),
	}
	next := b[16]
	version := b[17]
	exchange := b[18]
	flags := b[19]
	msgID := binary.BigEndian.Uint32(b[20:])
	length := binary.BigEndian.Uint32(b[24:])
	switch {
	case version>>4 != 2:
		return nil, fmt.Errorf("IKE major version %d, want 2", version>>4)
	case length != uint32(len(b)):
		return nil, fmt.Errorf("header length %d, datagram has %d bytes", length, len(b))
	case exchange != exchangeIKESAInit:
		return nil, fmt.Errorf("exchange type %d, want IKE_SA_INIT (34)", exchange)
	case flags&flagResponse == 0:
		return nil, fmt.Errorf("flags %#02x: not a response", flags)
	case flags&flagInitiator != 0:
		return nil, fmt.Errorf("flags %#02x: initiator flag set on a response to our request", flags)
	case msgID != 0:
		return nil, fmt.Errorf("message ID %d, IKE_SA_INIT uses 0", msgID)
	case r.SPIi == 0:
		return nil, errors.New("zero initiator SPI")
	}

	var hasSA, hasKE, hasNonce bool
	rest := b[headerLen:]
	for i := 0; next != payloadNone; i++ {
		if i == maxPayloads {
			return nil, fmt.Errorf("more than %d payloads", maxPayloads)
		}
		if len(rest) < 4 {
			return nil, fmt.Errorf("payload %d (type %d): truncated: %d bytes left, a payload header is 4", i, next, len(rest))
		}
		typ := next
		next = rest[0]
		critical := rest[1]&0x80 != 0
		plen := int(binary.BigEndian.Uint16(rest[2:]))
		if plen < 4 {
			return nil, fmt.Errorf("payload %d (type %d): length %d is shorter than its header", i, typ, plen)
		}
		if plen > len(rest) {
			return nil, fmt.Errorf("payload %d (type %d): length %d exceeds the %d bytes left", i, typ, plen, len(rest))
		}
		body := rest[4:plen]
		rest = rest[plen:]
		var err error
		switch typ {
		case payloadSA:
			if hasSA {
				return nil, fmt.Errorf("payload %d: second SA payload", i)
			}
			hasSA = true
			r.Proposal, err = parseSA(body)
		case payloadKE:
			if hasKE {
				return nil, fmt.Errorf("payload %d: second KE payload", i)
			}
			hasKE = true
			r.Group, err = parseKE(body)
		case payloadNonce:
			if hasNonce {
				return nil, fmt.Errorf("payload %d: second Nonce payload", i)
			}
			hasNonce = true
			if len(body) < 16 || len(body) > 256 {
				err = fmt.Errorf("nonce of %d bytes, RFC 7296 allows 16..256", len(body))
			}
			r.NonceLen = len(body)
		case payloadNotify:
			var n Notify
			n, err = parseNotify(body)
			r.Notifies = append(r.Notifies, n)
		case payloadVendor:
			r.Vendors++
		case payloadCertReq:
			if len(body) < 1 {
				err = errors.New("empty CERTREQ payload")
			}
		case payloadIDi, payloadIDr, payloadCert, payloadAuth, payloadDelete,
			payloadTSi, payloadTSr, payloadSK, payloadCP, payloadEAP, payloadSKF:
			err = errors.New("payload type not allowed in an IKE_SA_INIT response")
		default:
			if critical {
				err = errors.New("unknown payload type marked critical")
			}
		}
		if err != nil {
			return nil, fmt.Errorf("payload %d (type %d): %w", i, typ, err)
		}
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes after the last payload", len(rest))
	}

	// An error notify decides, then COOKIE, then the full response.
	for i := range r.Notifies {
		n := &r.Notifies[i]
		if n.Type >= notifyErrorMax {
			continue
		}
		r.Notify = n
		switch n.Type {
		case NotifyInvalidKEPayload:
			if len(n.Data) != 2 {
				return nil, fmt.Errorf("INVALID_KE_PAYLOAD with %d bytes of data, want 2", len(n.Data))
			}
			r.Kind = KindInvalidKE
			r.Group = Group(binary.BigEndian.Uint16(n.Data))
		case NotifyNoProposalChosen:
			r.Kind = KindNoProposal
		default:
			r.Kind = KindError
		}
		return r, nil
	}
	for i := range r.Notifies {
		n := &r.Notifies[i]
		if n.Type == NotifyCookie {
			if len(n.Data) < 1 || len(n.Data) > 64 {
				return nil, fmt.Errorf("COOKIE of %d bytes, RFC 7296 allows 1..64", len(n.Data))
			}
			r.Notify = n
			r.Kind = KindCookie
			return r, nil
		}
	}
	switch {
	case !hasSA || !hasKE || !hasNonce:
		return nil, fmt.Errorf("neither an error or COOKIE notify nor SA, KE and Nonce payloads (SA %t, KE %t, Nonce %t)", hasSA, hasKE, hasNonce)
	case r.SPIr == 0:
		return nil, errors.New("full IKE_SA_INIT response with a zero responder SPI")
	}
	r.Kind = KindSAInit
	return r, nil
}

func parseNotify(b []byte) (Notify, error) {
	if len(b) < 4 {
		return Notify{}, fmt.Errorf("notify body of %d bytes, want at least 4", len(b))
	}
	n := Notify{Protocol: b[0], Type: binary.BigEndian.Uint16(b[2:])}
	spiSize := int(b[1])
	if spiSize > len(b)-4 {
		return Notify{}, fmt.Errorf("notify %d: SPI size %d exceeds the %d bytes left", n.Type, spiSize, len(b)-4)
	}
	n.SPI = b[4 : 4+spiSize]
	n.Data = b[4+spiSize:]
	return n, nil
}

func parseKE(b []byte) (Group, error) {
	if len(b) < 4 {
		return 0, fmt.Errorf("KE body of %d bytes, want at least 4", len(b))
	}
	g := Group(binary.BigEndian.Uint16(b))
	data := len(b) - 4
	if want := g.keLen(); want != 0 && data != want {
		return 0, fmt.Errorf("KE data for %v of %d bytes, want %d", g, data, want)
	}
	if data == 0 {
		return 0, fmt.Errorf("empty KE data for %v", g)
	}
	return g, nil
}

// parseSA checks the SA payload of a response: exactly one proposal for
// IKE with consistent lengths and transform counts.
func parseSA(b []byte) (*Proposal, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("SA body of %d bytes, a proposal is at least 8", len(b))
	}
	more := b[0]
	plen := int(binary.BigEndian.Uint16(b[2:]))
	switch {
	case more != 0:
		return nil, errors.New("more than one proposal in a response")
	case plen < 8 || plen > len(b):
		return nil, fmt.Errorf("proposal length %d with %d bytes in the SA payload", plen, len(b))
	case plen != len(b):
		return nil, fmt.Errorf("%d bytes after the proposal", len(b)-plen)
	}
	p := &Proposal{Num: b[4]}
	proto, spiSize, count := b[5], int(b[6]), int(b[7])
	if proto != protoIKE {
		return nil, fmt.Errorf("proposal protocol %d, want IKE (1)", proto)
	}
	if spiSize != 0 && spiSize != 8 {
		return nil, fmt.Errorf("proposal SPI size %d, want 0 or 8", spiSize)
	}
	rest := b[8:plen]
	if spiSize > len(rest) {
		return nil, fmt.Errorf("proposal SPI of %d bytes exceeds the %d bytes left", spiSize, len(rest))
	}
	rest = rest[spiSize:]
	for i := range count {
		if len(rest) < 8 {
			return nil, fmt.Errorf("transform %d of %d: truncated: %d bytes left", i, count, len(rest))
		}
		tmore := rest[0]
		tlen := int(binary.BigEndian.Uint16(rest[2:]))
		if tlen < 8 || tlen > len(rest) {
			return nil, fmt.Errorf("transform %d: length %d with %d bytes left", i, tlen, len(rest))
		}
		last := i == count-1
		if (tmore == 0) != last || (tmore != 0 && tmore != 3) {
			return nil, fmt.Errorf("transform %d of %d: last-substructure byte %d", i, count, tmore)
		}
		t := Transform{Type: rest[4], ID: binary.BigEndian.Uint16(rest[6:])}
		attrs := rest[8:tlen]
		for len(attrs) > 0 {
			if len(attrs) < 4 {
				return nil, fmt.Errorf("transform %d: truncated attribute", i)
			}
			at := binary.BigEndian.Uint16(attrs)
			val := binary.BigEndian.Uint16(attrs[2:])
			if at&attrTV != 0 {
				if at&^attrTV == attrKeyLength {
					t.KeyLen = val
				}
				attrs = attrs[4:]
				continue
			}
			if int(val) > len(attrs)-4 {
				return nil, fmt.Errorf("transform %d: attribute length %d exceeds the %d bytes left", i, val, len(attrs)-4)
			}
			attrs = attrs[4+int(val):]
		}
		p.Transforms = append(p.Transforms, t)
		rest = rest[tlen:]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes after the proposal's %d transforms", len(rest), count)
	}
	return p, nil
}
