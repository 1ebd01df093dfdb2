package ikeprobe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// walk splits a message into its payloads, failing the test on any
// inconsistency; it checks our own requests.
func walk(t *testing.T, b []byte) (first uint8, types []uint8, bodies [][]byte) {
	t.Helper()
	if len(b) < headerLen || int(binary.BigEndian.Uint32(b[24:])) != len(b) {
		t.Fatalf("request length field %d, %d bytes", binary.BigEndian.Uint32(b[24:]), len(b))
	}
	next := b[16]
	rest := b[headerLen:]
	for next != 0 {
		if len(rest) < 4 {
			t.Fatal("truncated payload chain")
		}
		l := int(binary.BigEndian.Uint16(rest[2:]))
		if l < 4 || l > len(rest) {
			t.Fatalf("payload length %d with %d left", l, len(rest))
		}
		types = append(types, next)
		bodies = append(bodies, rest[4:l])
		next = rest[0]
		rest = rest[l:]
	}
	if len(rest) != 0 {
		t.Fatalf("%d trailing bytes", len(rest))
	}
	return b[16], types, bodies
}

// proposalGroups returns the DH groups of each proposal of an SA payload.
func proposalGroups(t *testing.T, sa []byte) [][]Group {
	t.Helper()
	var out [][]Group
	for len(sa) > 0 {
		more, plen := sa[0], int(binary.BigEndian.Uint16(sa[2:]))
		if plen > len(sa) || sa[5] != protoIKE || sa[6] != 0 {
			t.Fatalf("bad proposal header % x", sa[:8])
		}
		count := int(sa[7])
		ts := sa[8:plen]
		var groups []Group
		for i := range count {
			tl := int(binary.BigEndian.Uint16(ts[2:]))
			if (ts[0] == 0) != (i == count-1) {
				t.Fatalf("transform %d last marker %d", i, ts[0])
			}
			if ts[4] == transformDH {
				groups = append(groups, Group(binary.BigEndian.Uint16(ts[6:])))
			}
			ts = ts[tl:]
		}
		if len(ts) != 0 {
			t.Fatal("proposal has bytes after its transforms")
		}
		out = append(out, groups)
		sa = sa[plen:]
		if more == 0 && len(sa) != 0 {
			t.Fatal("bytes after the last proposal")
		}
	}
	return out
}

func TestRequestWellFormed(t *testing.T) {
	local := netip.MustParseAddrPort("203.0.113.2:40000")
	remote := netip.MustParseAddrPort("203.0.113.1:500")
	groups := []Group{ECP256, ECP384, MODP2048}
	for _, g := range []Group{Curve25519, ECP256, ECP384, ECP521} {
		r, err := NewRequest(groups, g, local, remote)
		if err != nil {
			t.Fatal(err)
		}
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint64(b) != r.SPI || r.SPI == 0 || binary.BigEndian.Uint64(b[8:]) != 0 {
			t.Fatal("bad SPIs")
		}
		if b[17] != 0x20 || b[18] != 34 || b[19] != flagInitiator || binary.BigEndian.Uint32(b[20:]) != 0 {
			t.Fatalf("header % x", b[:28])
		}
		_, types, bodies := walk(t, b)
		if !slices.Equal(types, []uint8{payloadSA, payloadKE, payloadNonce, payloadNotify, payloadNotify}) {
			t.Fatalf("payloads %v", types)
		}
		for _, pg := range proposalGroups(t, bodies[0]) {
			if !slices.Equal(pg, groups) {
				t.Fatalf("proposal groups %v", pg)
			}
		}
		if Group(binary.BigEndian.Uint16(bodies[1])) != g || len(bodies[1])-4 != g.keLen() {
			t.Fatalf("KE for %v: % x", g, bodies[1][:4])
		}
		if len(bodies[2]) < 16 {
			t.Fatalf("nonce of %d bytes", len(bodies[2]))
		}
		for i, ap := range map[int]netip.AddrPort{3: local, 4: remote} {
			n, err := parseNotify(bodies[i])
			if err != nil {
				t.Fatal(err)
			}
			want := uint16(NotifyNATDetectionSourceIP)
			if i == 4 {
				want = NotifyNATDetectionDestinationIP
			}
			if n.Type != want || !bytes.Equal(n.Data, natHash(r.SPI, ap)) || len(n.Data) != 20 {
				t.Fatalf("notify %d: %+v", i, n)
			}
		}
	}
	// Two requests never share an SPI, nonce or key.
	a, _ := NewRequest(groups, ECP256, local, remote)
	b, _ := NewRequest(groups, ECP256, local, remote)
	if a.SPI == b.SPI || bytes.Equal(a.Nonce, b.Nonce) || bytes.Equal(a.KEData, b.KEData) {
		t.Fatal("requests repeat random values")
	}
	if _, err := NewRequest(groups, MODP2048, local, remote); err == nil {
		t.Fatal("MODP key exchange accepted")
	}
}

// responder stands in for charon's IKE responder: it answers every
// request on a loopback UDP socket with reply(request).
type responder struct {
	conn  *net.UDPConn
	natt  bool
	reply func(req []byte, n int) []byte // n counts requests from 1; nil reply: stay silent

	mu   sync.Mutex
	reqs [][]byte
	wg   sync.WaitGroup
}

func newResponder(t *testing.T, natt bool, reply func(req []byte, n int) []byte) *responder {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &responder{conn: c, natt: natt, reply: reply}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(func() {
		c.Close()
		r.wg.Wait()
	})
	return r
}

func (r *responder) serve() {
	defer r.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := r.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		req := slices.Clone(buf[:n])
		if r.natt {
			if !bytes.HasPrefix(req, nonESPMarker) {
				continue
			}
			req = req[4:]
		}
		r.mu.Lock()
		r.reqs = append(r.reqs, req)
		count := len(r.reqs)
		r.mu.Unlock()
		out := r.reply(req, count)
		if out == nil {
			continue
		}
		_, _ = r.conn.WriteToUDP(out, from)
	}
}

func (r *responder) addr() netip.AddrPort {
	return r.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (r *responder) requests() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

func reqSPI(req []byte) uint64 { return binary.BigEndian.Uint64(req) }

func probeCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestProbeHealthyReplies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply func(spi uint64) []byte
		kind  Kind
	}{
		{"invalid ke", func(s uint64) []byte { return invalidKE(s, ECP256) }, KindInvalidKE},
		{"no proposal", noProposal, KindNoProposal},
		{"cookie", cookie, KindCookie},
		{"full", fullReply, KindSAInit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newResponder(t, false, func(req []byte, _ int) []byte { return tc.reply(reqSPI(req)) })
			p, err := New(Config{Target: r.addr()})
			if err != nil {
				t.Fatal(err)
			}
			res, err := p.Probe(probeCtx(t, 2*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			if res.Response.Kind != tc.kind || res.RTT <= 0 || !bytes.Equal(res.Raw, tc.reply(reqSPI(r.requests()[0]))) {
				t.Fatalf("result %+v", res.Response)
			}
		})
	}
}

func TestProbeStatelessRequestShape(t *testing.T) {
	r := newResponder(t, false, func(req []byte, _ int) []byte { return noProposal(reqSPI(req)) })
	p, err := New(Config{Target: r.addr()})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Run(probeCtx(t, 2*time.Second)); err != nil {
		t.Fatal(err)
	}
	_, _, bodies := walk(t, r.requests()[0])
	ke := Group(binary.BigEndian.Uint16(bodies[1]))
	for _, pg := range proposalGroups(t, bodies[0]) {
		if slices.Contains(pg, ke) {
			t.Fatalf("stateless probe proposes its KE group %v in %v", ke, pg)
		}
	}
	if ke != Curve25519 {
		t.Fatalf("default KE group %v", ke)
	}
}

func TestProbeFailures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		natt  bool // responder expects and sends the marker
		reply func(req []byte, n int) []byte
		want  error
		text  string
	}{
		{"wrong spi", false, func(req []byte, _ int) []byte { return invalidKE(reqSPI(req)+1, ECP256) }, ErrWrongSPI, "we sent"},
		{"lying length", false, func(req []byte, _ int) []byte {
			return msg(reqSPI(req), 0, flagResponse, []pl{{typ: payloadNotify, body: notifyBody(NotifyNoProposalChosen, nil), lie: 99}}, nil)
		}, ErrMalformed, "exceeds"},
		{"echoed request", false, func(req []byte, _ int) []byte { return req }, ErrMalformed, "not a response"},
		{"invalid syntax", false, func(req []byte, _ int) []byte {
			return msg(reqSPI(req), 0, flagResponse, []pl{notifyPl(NotifyInvalidSyntax, nil)}, nil)
		}, ErrRejected, "notify type 7"},
		{"silent", false, func([]byte, int) []byte { return nil }, ErrNoReply, "deadline"},
		{"natt without marker", true, func(req []byte, _ int) []byte { return noProposal(reqSPI(req)) }, ErrMalformed, "non-ESP marker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newResponder(t, tc.natt, tc.reply)
			p, err := New(Config{Target: r.addr(), NATT: tc.natt})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			err = p.Run(probeCtx(t, 300*time.Millisecond))
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("got %v, want %v mentioning %q", err, tc.want, tc.text)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("probe overran its context")
			}
		})
	}
}

func TestProbeNATT(t *testing.T) {
	r := newResponder(t, true, func(req []byte, _ int) []byte {
		return append(slices.Clone(nonESPMarker), invalidKE(reqSPI(req), ECP256)...)
	})
	p, err := New(Config{Target: r.addr(), NATT: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(p.Name(), "/natt") {
		t.Fatalf("name %q", p.Name())
	}
	res, err := p.Probe(probeCtx(t, 2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if res.Response.Kind != KindInvalidKE || bytes.HasPrefix(res.Raw, nonESPMarker) {
		t.Fatalf("result %+v", res.Response)
	}
}

func TestProbeUnreachable(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().(*net.UDPAddr).AddrPort()
	c.Close()
	p, err := New(Config{Target: addr})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Run(probeCtx(t, 2*time.Second)); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("got %v, want ErrUnreachable", err)
	}
}

func TestProbeRetransmits(t *testing.T) {
	r := newResponder(t, false, func(req []byte, n int) []byte {
		if n == 1 {
			return nil // the first datagram is "lost"
		}
		return invalidKE(reqSPI(req), ECP256)
	})
	p, err := New(Config{Target: r.addr(), Retransmit: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Run(probeCtx(t, 2*time.Second)); err != nil {
		t.Fatal(err)
	}
	reqs := r.requests()
	if len(reqs) < 2 || !bytes.Equal(reqs[0], reqs[1]) {
		t.Fatalf("retransmission is not the same datagram (%d requests)", len(reqs))
	}
}

func TestProbeWithoutDeadlineIsBounded(t *testing.T) {
	r := newResponder(t, false, func([]byte, int) []byte { return nil })
	p, err := New(Config{Target: r.addr()})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Run(context.Background()); !errors.Is(err, ErrNoReply) {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d < DefaultTimeout/2 || d > 10*DefaultTimeout {
		t.Fatalf("took %v with DefaultTimeout %v", d, DefaultTimeout)
	}
}

func TestNewConfig(t *testing.T) {
	target := netip.MustParseAddrPort("203.0.113.1:500")
	if _, err := New(Config{Target: target, KEGroup: ECP256}); err == nil {
		t.Error("stateless mode accepted a proposed KE group")
	}
	if _, err := New(Config{Target: target, KEGroup: MODP2048, Groups: []Group{ECP256}}); err == nil {
		t.Error("MODP KE group accepted")
	}
	if _, err := New(Config{}); err == nil {
		t.Error("no target accepted")
	}
	p, err := New(Config{Target: target, Mode: Full, Groups: []Group{ECP384, ECP256}})
	if err != nil {
		t.Fatal(err)
	}
	if p.cfg.KEGroup != ECP256 || !slices.Equal(p.cfg.Groups, []Group{ECP256, ECP384}) {
		t.Fatalf("full mode: KE %v groups %v", p.cfg.KEGroup, p.cfg.Groups)
	}
	p, err = New(Config{Target: netip.MustParseAddrPort("203.0.113.1:4500")})
	if err != nil || !p.cfg.NATT {
		t.Fatalf("port 4500 without NAT-T: %v", err)
	}
}
