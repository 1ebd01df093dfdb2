// Package traffic is the lab's data-plane instruments: a bounded UDP probe
// stream with sequence numbers, echoed by a host on the protected side, that
// reports the largest gap the client saw, lost and reordered probes; and a
// capture of ESP sequence numbers per SPI on the wire (plain ESP and
// UDP-encapsulated) that detects a sequence number sent twice for one SA.
//
// Both are plain sockets: open them inside a namespace (topo.Node.Do) and
// they stay there. Nothing here knows about UML.
package traffic

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// probeMagic marks the lab's probes so stray datagrams are ignored.
const probeMagic = 0x48414e444f464650 // "HANDOFFP"

// headerLen is magic, run id, sequence number, send time (ns).
const headerLen = 32

// Echoer answers every datagram on its socket with the same bytes.
type Echoer struct {
	conn *net.UDPConn
	done chan struct{}

	mu     sync.Mutex // guards the following fields
	echoed int
	err    error
	closed bool
}

// NewEchoer starts echoing on conn (a socket bound on the protected host).
// Close stops it and closes conn.
func NewEchoer(conn *net.UDPConn) *Echoer {
	e := &Echoer{conn: conn, done: make(chan struct{})}
	go e.loop()
	return e
}

func (e *Echoer) loop() {
	defer close(e.done)
	buf := make([]byte, 2048)
	for {
		n, from, err := e.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				e.mu.Lock()
				e.err = err
				e.mu.Unlock()
			}
			return
		}
		if _, err := e.conn.WriteToUDPAddrPort(buf[:n], from); err == nil {
			e.mu.Lock()
			e.echoed++
			e.mu.Unlock()
		}
	}
}

// Echoed is how many datagrams were sent back.
func (e *Echoer) Echoed() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.echoed
}

// Close stops the echoer and waits for it. Safe to call twice.
func (e *Echoer) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	err := e.conn.Close()
	<-e.done
	e.mu.Lock()
	defer e.mu.Unlock()
	return errors.Join(err, e.err)
}

// ProbeConfig bounds a probe stream.
type ProbeConfig struct {
	// Interval between probes, 1–10 ms in the lab. Probes are scheduled on
	// a fixed grid: a late wake-up sends what is due at once.
	Interval time.Duration
	// Count is the most probes the stream sends.
	Count int
	// Size is the datagram size in bytes (at least 32).
	Size int
	// Drain is how long the stream waits for echoes after the last probe.
	// Default 500 ms.
	Drain time.Duration
}

// ProbeReport is what the client saw.
type ProbeReport struct {
	Sent       int `json:"sent"`
	Received   int `json:"received"`
	Lost       int `json:"lost"`
	Reordered  int `json:"reordered"`
	Duplicates int `json:"duplicates"`
	SendErrors int `json:"send_errors"`
	// LargestGap is the longest time between two consecutive echoes (by
	// arrival), including a silence at the end while probes were lost.
	LargestGap time.Duration `json:"largest_gap_ns"`
	// GapStart is when the largest gap began (the echo before it).
	GapStart time.Time `json:"gap_start"`
	// GapLost is how many probes were lost inside the largest gap.
	GapLost int           `json:"gap_lost"`
	RTTAvg  time.Duration `json:"rtt_avg_ns"`
	RTTMax  time.Duration `json:"rtt_max_ns"`
	// Elapsed is from the first probe to the last.
	Elapsed time.Duration `json:"elapsed_ns"`
	// LostRuns are the runs of consecutive lost probes, by send time (the
	// first maxLostRuns): a loss the largest gap does not explain shows
	// here.
	LostRuns []LostRun `json:"lost_runs,omitempty"`
}

// LostRun is a run of consecutive probes that got no echo.
type LostRun struct {
	// From is when the first of them was sent.
	From time.Time `json:"from"`
	N    int       `json:"n"`
}

const maxLostRuns = 16

// GapMS is LargestGap in milliseconds, for result JSON.
func (r ProbeReport) GapMS() float64 { return float64(r.LargestGap.Microseconds()) / 1000 }

// Prober sends a probe stream on a connected socket and collects echoes.
type Prober struct {
	conn  *net.UDPConn
	cfg   ProbeConfig
	runID uint64

	stop     chan struct{}
	stopOnce sync.Once
	sendDone chan struct{}
	recvDone chan struct{}

	mu        sync.Mutex // guards the following fields
	sent      int
	sendErrs  int
	sentAt    []time.Time // by sequence number
	arrivals  []arrival
	firstSent time.Time
	lastSent  time.Time
	lastEcho  time.Time
}

type arrival struct {
	seq uint64
	at  time.Time
	rtt time.Duration
}

// StartProbe starts a stream on conn, a UDP socket connected to an Echoer
// (opened in the client's namespace from its protected address). It stops
// after cfg.Count probes, on Stop, or when ctx ends. The Prober owns conn.
func StartProbe(ctx context.Context, conn *net.UDPConn, cfg ProbeConfig) (*Prober, error) {
	if cfg.Interval <= 0 || cfg.Count <= 0 {
		return nil, fmt.Errorf("starting probe: interval %v and count %d must be positive", cfg.Interval, cfg.Count)
	}
	if cfg.Size < headerLen {
		cfg.Size = headerLen
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 500 * time.Millisecond
	}
	p := &Prober{
		conn:     conn,
		cfg:      cfg,
		runID:    uint64(time.Now().UnixNano()),
		stop:     make(chan struct{}),
		sendDone: make(chan struct{}),
		recvDone: make(chan struct{}),
		sentAt:   make([]time.Time, 0, cfg.Count),
		arrivals: make([]arrival, 0, cfg.Count),
	}
	go p.recv()
	go p.send(ctx)
	return p, nil
}

func (p *Prober) send(ctx context.Context) {
	defer close(p.sendDone)
	buf := make([]byte, p.cfg.Size)
	binary.BigEndian.PutUint64(buf[0:], probeMagic)
	binary.BigEndian.PutUint64(buf[8:], p.runID)
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for seq := 0; seq < p.cfg.Count; seq++ {
		due := start.Add(time.Duration(seq) * p.cfg.Interval)
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-p.stop:
				return
			case <-ctx.Done():
				return
			}
		} else {
			select {
			case <-p.stop:
				return
			case <-ctx.Done():
				return
			default:
			}
		}
		now := time.Now()
		binary.BigEndian.PutUint64(buf[16:], uint64(seq))
		binary.BigEndian.PutUint64(buf[24:], uint64(now.UnixNano()))
		_, err := p.conn.Write(buf)
		p.mu.Lock()
		if seq == 0 {
			p.firstSent = now
		}
		p.lastSent = now
		p.sent++
		p.sentAt = append(p.sentAt, now)
		if err != nil {
			// An SA being (re)negotiated makes the kernel refuse the
			// send; the probe counts as sent and lost.
			p.sendErrs++
		}
		p.mu.Unlock()
	}
}

func (p *Prober) recv() {
	defer close(p.recvDone)
	buf := make([]byte, 2048)
	for {
		n, err := p.conn.Read(buf)
		now := time.Now()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP errors surface on a connected socket as read errors
			// (ECONNREFUSED); keep listening.
			continue
		}
		if n < headerLen || binary.BigEndian.Uint64(buf[0:]) != probeMagic || binary.BigEndian.Uint64(buf[8:]) != p.runID {
			continue
		}
		seq := binary.BigEndian.Uint64(buf[16:])
		sent := time.Unix(0, int64(binary.BigEndian.Uint64(buf[24:])))
		p.mu.Lock()
		p.arrivals = append(p.arrivals, arrival{seq: seq, at: now, rtt: now.Sub(sent)})
		p.lastEcho = now
		p.mu.Unlock()
	}
}

// Stop ends the stream early. Safe to call twice.
func (p *Prober) Stop() { p.stopOnce.Do(func() { close(p.stop) }) }

// Done is closed when the stream has sent its last probe.
func (p *Prober) Done() <-chan struct{} { return p.sendDone }

// Progress returns the probes sent and echoes received so far, and when
// the last echo arrived.
func (p *Prober) Progress() (sent, received int, lastEcho time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent, len(p.arrivals), p.lastEcho
}

// Wait waits until the stream has sent its last probe (or was stopped),
// drains echoes for cfg.Drain, closes the socket and reports.
func (p *Prober) Wait(ctx context.Context) (ProbeReport, error) {
	select {
	case <-p.sendDone:
	case <-ctx.Done():
		p.Stop()
		<-p.sendDone
	}
	drain := time.NewTimer(p.cfg.Drain)
	select {
	case <-drain.C:
	case <-ctx.Done():
		drain.Stop()
	}
	err := p.conn.Close()
	<-p.recvDone
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return ProbeReport{}, fmt.Errorf("closing probe socket: %w", err)
	}
	return analyze(p.sentAt, p.arrivals, p.sendErrs), nil
}

// analyze computes the report from the send times (index = sequence
// number) and the echoes in arrival order.
func analyze(sentAt []time.Time, arrivals []arrival, sendErrs int) ProbeReport {
	r := ProbeReport{Sent: len(sentAt), SendErrors: sendErrs}
	if len(sentAt) > 0 {
		r.Elapsed = sentAt[len(sentAt)-1].Sub(sentAt[0])
	}
	seen := make(map[uint64]bool, len(arrivals))
	var highest uint64
	var rttSum time.Duration
	var prev *arrival
	var gapFrom, gapTo uint64
	for i := range arrivals {
		a := &arrivals[i]
		if a.seq >= uint64(len(sentAt)) {
			continue // not ours to count
		}
		if seen[a.seq] {
			r.Duplicates++
			continue
		}
		seen[a.seq] = true
		if r.Received > 0 && a.seq < highest {
			r.Reordered++
		}
		if a.seq > highest {
			highest = a.seq
		}
		r.Received++
		rttSum += a.rtt
		if a.rtt > r.RTTMax {
			r.RTTMax = a.rtt
		}
		if prev != nil {
			if gap := a.at.Sub(prev.at); gap > r.LargestGap {
				r.LargestGap = gap
				r.GapStart = prev.at
				gapFrom, gapTo = prev.seq, a.seq
			}
		}
		prev = a
	}
	r.Lost = r.Sent - r.Received
	for seq := 0; seq < len(sentAt) && len(r.LostRuns) <= maxLostRuns; seq++ {
		if seen[uint64(seq)] {
			continue
		}
		if n := len(r.LostRuns); n > 0 && !seen[uint64(seq-1)] && seq > 0 {
			r.LostRuns[n-1].N++
			continue
		}
		r.LostRuns = append(r.LostRuns, LostRun{From: sentAt[seq], N: 1})
	}
	r.LostRuns = r.LostRuns[:min(len(r.LostRuns), maxLostRuns)]
	if r.LargestGap > 0 {
		r.GapLost = lostBetween(seen, gapFrom, gapTo)
	}
	if r.Received > 0 {
		r.RTTAvg = rttSum / time.Duration(r.Received)
	}
	// A silence at the end counts when the probes sent in it were lost:
	// measured up to the last lost probe's send time plus the average RTT.
	if prev != nil && highest+1 < uint64(len(sentAt)) {
		end := sentAt[len(sentAt)-1].Add(r.RTTAvg)
		if gap := end.Sub(prev.at); gap > r.LargestGap {
			r.LargestGap = gap
			r.GapStart = prev.at
			r.GapLost = len(sentAt) - 1 - int(highest)
		}
	}
	if prev == nil && len(sentAt) > 0 {
		r.LargestGap = r.Elapsed
		r.GapLost = len(sentAt)
	}
	return r
}

// lostBetween counts the sequence numbers strictly between a and b (in
// either order) that have not arrived (yet).
func lostBetween(seen map[uint64]bool, a, b uint64) int {
	if a > b {
		a, b = b, a
	}
	n := 0
	for s := a + 1; s < b; s++ {
		if !seen[s] {
			n++
		}
	}
	return n
}
