package ikeprobe

import (
	"encoding/binary"
)

// pl is one payload of a test message.
type pl struct {
	typ      uint8
	critical bool
	body     []byte
	// lie replaces the payload's length field when non-zero.
	lie uint16
}

// msg builds an IKEv2 message for tests; fix may alter the header after
// the length is set.
func msg(spiI, spiR uint64, flags uint8, payloads []pl, fix func(b []byte)) []byte {
	b := make([]byte, headerLen)
	binary.BigEndian.PutUint64(b[0:], spiI)
	binary.BigEndian.PutUint64(b[8:], spiR)
	if len(payloads) > 0 {
		b[16] = payloads[0].typ
	}
	b[17] = version20
	b[18] = exchangeIKESAInit
	b[19] = flags
	for i, p := range payloads {
		next := uint8(0)
		if i+1 < len(payloads) {
			next = payloads[i+1].typ
		}
		c := uint8(0)
		if p.critical {
			c = 0x80
		}
		l := uint16(4 + len(p.body))
		if p.lie != 0 {
			l = p.lie
		}
		b = append(b, next, c)
		b = binary.BigEndian.AppendUint16(b, l)
		b = append(b, p.body...)
	}
	binary.BigEndian.PutUint32(b[24:], uint32(len(b)))
	if fix != nil {
		fix(b)
	}
	return b
}

func notifyPl(typ uint16, data []byte) pl { return pl{typ: payloadNotify, body: notifyBody(typ, data)} }

func invalidKE(spi uint64, g Group) []byte {
	return msg(spi, 0, flagResponse, []pl{notifyPl(NotifyInvalidKEPayload, binary.BigEndian.AppendUint16(nil, uint16(g)))}, nil)
}

func noProposal(spi uint64) []byte {
	return msg(spi, 0, flagResponse, []pl{notifyPl(NotifyNoProposalChosen, nil)}, nil)
}

func cookie(spi uint64) []byte {
	return msg(spi, 0, flagResponse, []pl{notifyPl(NotifyCookie, []byte("0123456789abcdef0123"))}, nil)
}

// chosenSA is a response SA payload: AES-GCM-16/128, PRF-HMAC-SHA256,
// ecp256.
func chosenSA() []byte {
	return appendProposal(nil, 1, []transform{
		{transformENCR, encrAESGCM16, 128}, {transformPRF, prfHMACSHA256, 0}, {transformDH, uint16(ECP256), 0},
	}, true)
}

func keBody(g Group, n int) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(g))
	b = append(b, 0, 0)
	return append(b, make([]byte, n)...)
}

func fullReply(spi uint64) []byte {
	return msg(spi, 0x1122334455667788, flagResponse, []pl{
		{typ: payloadSA, body: chosenSA()},
		{typ: payloadKE, body: keBody(ECP256, 64)},
		{typ: payloadNonce, body: make([]byte, 32)},
		notifyPl(NotifyNATDetectionSourceIP, make([]byte, 20)),
		notifyPl(NotifyNATDetectionDestinationIP, make([]byte, 20)),
		{typ: payloadCertReq, body: []byte{4}},
		notifyPl(16404, nil), // MULTIPLE_AUTH_SUPPORTED, a status notify
	}, nil)
}
