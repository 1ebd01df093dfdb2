package traffic

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// maxTrackedSeqs bounds the memory of a capture: beyond it, packets are
// counted but their sequence numbers no longer checked for reuse.
const maxTrackedSeqs = 2_000_000

// IKE and NAT-T ports.
const (
	portIKE  = 500
	portNATT = 4500
)

// SPIStats is what a capture saw of one SA (one SPI towards one
// destination).
type SPIStats struct {
	SPI string `json:"spi"` // hex, as ip xfrm prints it
	Src string `json:"src"`
	Dst string `json:"dst"`
	// UDPEncap: the SA's packets were UDP-encapsulated (port 4500).
	UDPEncap bool   `json:"udp_encap"`
	Packets  int    `json:"packets"`
	FirstSeq uint32 `json:"first_seq"`
	LastSeq  uint32 `json:"last_seq"`
	MaxSeq   uint32 `json:"max_seq"`
	// Reused counts packets whose sequence number had been seen before for
	// this SPI with another ciphertext: an ESP sender never repeats one,
	// so any is a reuse (with AES-GCM, a nonce reuse).
	Reused int `json:"reused"`
	// Duplicates counts packets seen again byte for byte from the SPI on
	// (the same packet twice on the wire: a gateway that lost an address
	// forwarding what still reached it, a flooded frame), which reuses
	// nothing.
	Duplicates int `json:"duplicates,omitempty"`
	// Backwards counts packets with a lower sequence number than the
	// previous one of the SPI (reordering, or a second sender).
	Backwards int `json:"backwards"`
	// Senders is the number of distinct source MAC addresses: two when the
	// SA moved from one gateway to another.
	Senders   int       `json:"senders"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// CaptureReport is a capture's summary.
type CaptureReport struct {
	Interface string `json:"interface"`
	// ESP counts ESP packets (plain and UDP-encapsulated).
	ESP int `json:"esp"`
	// IKE counts IKE packets (UDP 500, and 4500 behind the non-ESP marker).
	IKE int `json:"ike"`
	// Reused is the sum of SPIStats.Reused: the number that must be 0.
	Reused int `json:"reused"`
	// Duplicates is the sum of SPIStats.Duplicates (harmless copies).
	Duplicates int        `json:"duplicates"`
	SPIs       []SPIStats `json:"spis"`
	// Truncated: more sequence numbers than the capture tracks; later ones
	// were not checked for reuse.
	Truncated bool `json:"truncated,omitempty"`
}

type spiKey struct {
	dst netip.Addr
	spi uint32
}

type spiState struct {
	stats SPIStats
	// seen maps each sequence number to a hash of the packet from its
	// SPI on (as far as the capture reads it).
	seen    map[uint32]uint64
	senders map[[6]byte]struct{}
}

// Capture reads every frame on one interface (an AF_PACKET socket) and
// tracks ESP sequence numbers per SPI.
type Capture struct {
	ifname string
	f      *os.File
	done   chan struct{}

	mu        sync.Mutex // guards the following fields
	spis      map[spiKey]*spiState
	esp, ike  int
	tracked   int
	truncated bool
	readErr   error
	closed    bool
}

// OpenCapture opens a capture on interface ifname of the calling thread's
// network namespace: call it inside topo.Node.Do. Close stops it.
func OpenCapture(ifname string) (*Capture, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("opening capture: finding %s: %w", ifname, err)
	}
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return nil, fmt.Errorf("opening capture on %s: %w", ifname, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding capture to %s: %w", ifname, err)
	}
	// Large bursts (a handoff) must not overflow the socket while the
	// reader is descheduled.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	c := &Capture{
		ifname: ifname,
		f:      os.NewFile(uintptr(fd), "packet:"+ifname),
		done:   make(chan struct{}),
		spis:   make(map[spiKey]*spiState),
	}
	go c.loop()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) loop() {
	defer close(c.done)
	rc, err := c.f.SyscallConn()
	if err != nil {
		c.setErr(fmt.Errorf("capture on %s: %w", c.ifname, err))
		return
	}
	buf := make([]byte, 256) // headers are enough; the rest is truncated
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			// Close makes the read fail ("use of closed file"); only an
			// error while still open is one.
			if !c.isClosed() {
				c.setErr(fmt.Errorf("capture on %s: %w", c.ifname, err))
			}
			return
		}
		if rerr != nil {
			c.setErr(fmt.Errorf("capture on %s: %w", c.ifname, rerr))
			return
		}
		if n > len(buf) {
			n = len(buf)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Protocol != htons(unix.ETH_P_IP) {
			continue
		}
		c.frame(buf[:n], time.Now())
	}
}

func (c *Capture) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *Capture) setErr(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readErr == nil {
		c.readErr = err
	}
}

// esp is one parsed ESP header.
type esp struct {
	src, dst netip.Addr
	spi, seq uint32
	encap    bool
	// body is the packet from the SPI on, as far as it was read: what a
	// forwarded copy shares with the original (the IP header changes).
	body []byte
}

// parseFrame classifies an Ethernet frame: ESP (with its header), IKE, or
// neither.
func parseFrame(frame []byte) (p esp, isESP, isIKE bool) {
	if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != unix.ETH_P_IP {
		return p, false, false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl {
		return p, false, false
	}
	if binary.BigEndian.Uint16(ip[6:])&0x1fff != 0 {
		return p, false, false // not the first fragment
	}
	p.src = netip.AddrFrom4([4]byte(ip[12:16]))
	p.dst = netip.AddrFrom4([4]byte(ip[16:20]))
	l4 := ip[ihl:]
	switch ip[9] {
	case unix.IPPROTO_ESP:
		if len(l4) < 8 {
			return p, false, false
		}
		p.spi = binary.BigEndian.Uint32(l4[0:])
		p.seq = binary.BigEndian.Uint32(l4[4:])
		p.body = l4
		return p, true, false
	case unix.IPPROTO_UDP:
		if len(l4) < 8 {
			return p, false, false
		}
		sport, dport := binary.BigEndian.Uint16(l4[0:]), binary.BigEndian.Uint16(l4[2:])
		payload := l4[8:]
		if sport == portIKE || dport == portIKE {
			return p, false, true
		}
		if sport != portNATT && dport != portNATT {
			return p, false, false
		}
		if len(payload) < 8 {
			return p, false, false // NAT-T keepalive (one 0xff byte) or runt
		}
		if binary.BigEndian.Uint32(payload) == 0 {
			return p, false, true // non-ESP marker: IKE
		}
		p.spi = binary.BigEndian.Uint32(payload[0:])
		p.seq = binary.BigEndian.Uint32(payload[4:])
		p.encap = true
		p.body = payload
		return p, true, false
	}
	return p, false, false
}

func (c *Capture) frame(frame []byte, now time.Time) {
	p, isESP, isIKE := parseFrame(frame)
	c.mu.Lock()
	defer c.mu.Unlock()
	if isIKE {
		c.ike++
		return
	}
	if !isESP {
		return
	}
	c.esp++
	k := spiKey{dst: p.dst, spi: p.spi}
	st := c.spis[k]
	if st == nil {
		st = &spiState{
			stats: SPIStats{
				SPI: fmt.Sprintf("%08x", p.spi), Src: p.src.String(), Dst: p.dst.String(),
				UDPEncap: p.encap, FirstSeq: p.seq, FirstSeen: now,
			},
			seen:    make(map[uint32]uint64),
			senders: make(map[[6]byte]struct{}),
		}
		c.spis[k] = st
	} else if p.seq < st.stats.LastSeq {
		st.stats.Backwards++
	}
	st.stats.Packets++
	st.stats.LastSeq = p.seq
	st.stats.LastSeen = now
	st.stats.MaxSeq = max(st.stats.MaxSeq, p.seq)
	st.senders[[6]byte(frame[6:12])] = struct{}{}
	h := fnv.New64a()
	h.Write(p.body)
	sum := h.Sum64()
	if prev, dup := st.seen[p.seq]; dup {
		if prev == sum {
			st.stats.Duplicates++
		} else {
			st.stats.Reused++
		}
		return
	}
	if c.tracked >= maxTrackedSeqs {
		c.truncated = true
		return
	}
	st.seen[p.seq] = sum
	c.tracked++
}

// Report returns what the capture has seen so far, SAs in the order they
// first appeared.
func (c *Capture) Report() CaptureReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := CaptureReport{Interface: c.ifname, ESP: c.esp, IKE: c.ike, Truncated: c.truncated}
	for _, st := range c.spis {
		s := st.stats
		s.Senders = len(st.senders)
		r.Reused += s.Reused
		r.Duplicates += s.Duplicates
		r.SPIs = append(r.SPIs, s)
	}
	sort.Slice(r.SPIs, func(i, j int) bool { return r.SPIs[i].FirstSeen.Before(r.SPIs[j].FirstSeen) })
	return r
}

// Close stops the capture and waits for its reader. Safe to call twice.
func (c *Capture) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	err := c.f.Close()
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return errors.Join(err, c.readErr)
}
