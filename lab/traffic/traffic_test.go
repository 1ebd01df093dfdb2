package traffic

import (
	"context"
	"encoding/binary"
	"net"
	"reflect"
	"testing"
	"time"
)

func TestAnalyze(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	// Ten probes every 10 ms. 3, 4 and 5 are lost (an outage), 7 arrives
	// after 8, 2 arrives twice.
	sent := make([]time.Time, 10)
	for i := range sent {
		sent[i] = ms(10 * i)
	}
	arr := []arrival{
		{seq: 0, at: ms(1), rtt: time.Millisecond},
		{seq: 1, at: ms(11), rtt: time.Millisecond},
		{seq: 2, at: ms(21), rtt: time.Millisecond},
		{seq: 2, at: ms(22), rtt: 2 * time.Millisecond},
		{seq: 6, at: ms(61), rtt: time.Millisecond},
		{seq: 8, at: ms(81), rtt: time.Millisecond},
		{seq: 7, at: ms(82), rtt: 12 * time.Millisecond},
		{seq: 9, at: ms(91), rtt: time.Millisecond},
	}
	r := analyze(sent, arr, 1)
	want := ProbeReport{Sent: 10, Received: 7, Lost: 3, Reordered: 1, Duplicates: 1, SendErrors: 1,
		LargestGap: 40 * time.Millisecond, GapStart: ms(21), GapLost: 3,
		RTTAvg: 18 * time.Millisecond / 7, RTTMax: 12 * time.Millisecond, Elapsed: 90 * time.Millisecond,
		LostRuns: []LostRun{{From: ms(30), N: 3}}}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("analyze:\n got %+v\nwant %+v", r, want)
	}
}

func TestAnalyzeTrailingSilence(t *testing.T) {
	t0 := time.Unix(1000, 0)
	sent := []time.Time{t0, t0.Add(10 * time.Millisecond), t0.Add(20 * time.Millisecond), t0.Add(300 * time.Millisecond)}
	arr := []arrival{{seq: 0, at: t0.Add(time.Millisecond), rtt: time.Millisecond}}
	r := analyze(sent, arr, 0)
	// From the last echo to the last lost probe's send time plus the RTT.
	if r.Lost != 3 || r.LargestGap != 300*time.Millisecond || r.GapLost != 3 ||
		!reflect.DeepEqual(r.LostRuns, []LostRun{{From: sent[1], N: 3}}) {
		t.Errorf("trailing silence: %+v", r)
	}
	r = analyze(sent, nil, 0)
	if r.Lost != 4 || r.LargestGap != 300*time.Millisecond {
		t.Errorf("nothing echoed: %+v", r)
	}
}

// TestProbeThroughEcho runs a real stream over loopback.
func TestProbeThroughEcho(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	echo := NewEchoer(srv)
	defer echo.Close()
	conn, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	// A stray datagram from someone else must not count.
	stray, err := net.DialUDP("udp4", nil, conn.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer stray.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := StartProbe(ctx, conn, ProbeConfig{Interval: time.Millisecond, Count: 300, Drain: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stray.Write(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	r, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 300 || r.Received != 300 || r.Lost != 0 || r.Duplicates != 0 {
		t.Errorf("loopback stream: %+v", r)
	}
	if echo.Echoed() < 300 {
		t.Errorf("echoer echoed %d", echo.Echoed())
	}
	if err := echo.Close(); err != nil {
		t.Errorf("echo close: %v", err)
	}
	if err := echo.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestProbeStop(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	echo := NewEchoer(srv)
	defer echo.Close()
	conn, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := StartProbe(ctx, conn, ProbeConfig{Interval: time.Millisecond, Count: 1_000_000, Drain: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	p.Stop()
	p.Stop()
	r, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent == 0 || r.Sent > 10_000 || r.Lost != 0 {
		t.Errorf("stopped stream: %+v", r)
	}
	if _, err := StartProbe(ctx, conn, ProbeConfig{}); err == nil {
		t.Error("StartProbe accepted a zero config")
	}
}

// frame builds an Ethernet/IPv4 frame from src MAC byte, protocol and
// layer-4 bytes.
func frame(mac byte, proto uint8, l4 []byte) []byte {
	f := make([]byte, 14+20, 14+20+len(l4))
	f[11] = mac
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	ip[8] = 64
	ip[9] = proto
	copy(ip[12:], []byte{203, 0, 113, 100})
	copy(ip[16:], []byte{203, 0, 113, 2})
	return append(f, l4...)
}

func espHdr(spi, seq uint32) []byte {
	b := make([]byte, 8, 24)
	binary.BigEndian.PutUint32(b, spi)
	binary.BigEndian.PutUint32(b[4:], seq)
	return append(b, make([]byte, 16)...)
}

func udp(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b, sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

func TestParseFrame(t *testing.T) {
	fragment := frame(1, 50, espHdr(1, 1))
	binary.BigEndian.PutUint16(fragment[14+6:], 100) // offset ≠ 0
	for _, tc := range []struct {
		name     string
		f        []byte
		esp, ike bool
		spi, seq uint32
		encap    bool
	}{
		{"esp", frame(1, 50, espHdr(0xc0ffee01, 7)), true, false, 0xc0ffee01, 7, false},
		{"udp-encap esp", frame(1, 17, udp(4500, 4500, espHdr(0xc0ffee02, 9))), true, false, 0xc0ffee02, 9, true},
		{"ike 500", frame(1, 17, udp(500, 500, make([]byte, 40))), false, true, 0, 0, false},
		{"ike behind non-esp marker", frame(1, 17, udp(4500, 4500, make([]byte, 40))), false, true, 0, 0, false},
		{"nat-t keepalive", frame(1, 17, udp(4500, 4500, []byte{0xff})), false, false, 0, 0, false},
		{"other udp", frame(1, 17, udp(9000, 9000, espHdr(1, 1))), false, false, 0, 0, false},
		{"fragment", fragment, false, false, 0, 0, false},
		{"runt", []byte{1, 2, 3}, false, false, 0, 0, false},
	} {
		p, isESP, isIKE := parseFrame(tc.f)
		if isESP != tc.esp || isIKE != tc.ike {
			t.Errorf("%s: esp %v ike %v", tc.name, isESP, isIKE)
			continue
		}
		if tc.esp && (p.spi != tc.spi || p.seq != tc.seq || p.encap != tc.encap || p.dst.String() != "203.0.113.2") {
			t.Errorf("%s: parsed %+v", tc.name, p)
		}
	}
}

// TestCaptureDetectsReuse feeds frames straight into the capture's
// accounting: two senders (an SA moved between gateways) and one
// sequence number sent twice.
func TestCaptureDetectsReuse(t *testing.T) {
	c := &Capture{ifname: "test", spis: make(map[spiKey]*spiState)}
	now := time.Unix(1000, 0)
	for seq := uint32(1); seq <= 5; seq++ {
		c.frame(frame(1, 50, espHdr(0xaa, seq)), now)
	}
	// The second gateway jumped ahead: fine.
	c.frame(frame(2, 50, espHdr(0xaa, 100_001)), now)
	// ...but then sends a number the first one had used (another
	// ciphertext).
	reuse := espHdr(0xaa, 3)
	reuse[8] = 0x22
	c.frame(frame(2, 50, reuse), now)
	// The same packet forwarded by another host (same bytes from the SPI
	// on): a duplicate, not a reuse.
	c.frame(frame(3, 50, espHdr(0xaa, 4)), now)
	c.frame(frame(1, 17, udp(500, 500, make([]byte, 40))), now)
	c.frame(frame(1, 50, espHdr(0xbb, 1)), now.Add(time.Second))
	r := c.Report()
	if r.ESP != 9 || r.IKE != 1 || r.Reused != 1 || len(r.SPIs) != 2 {
		t.Fatalf("report: %+v", r)
	}
	a := r.SPIs[0]
	if a.SPI != "000000aa" || a.Packets != 8 || a.Reused != 1 || a.Duplicates != 1 || a.Backwards != 1 || a.Senders != 3 || a.MaxSeq != 100_001 || a.FirstSeq != 1 || a.LastSeq != 4 {
		t.Errorf("SPI aa: %+v", a)
	}
	if b := r.SPIs[1]; b.SPI != "000000bb" || b.Reused != 0 || b.Senders != 1 {
		t.Errorf("SPI bb: %+v", b)
	}
}
