// Command haprobe stands in for the strongSwan ha plugin's peer in the issue
// 18 spike: it records the datagrams a charon's ha plugin sends (one line per
// datagram: receive time in Unix nanoseconds and the payload in hex) and
// replays a recording to another charon from the address and port that
// charon expects its peer on (the plugin connects its socket, so only
// datagrams from remote:4510 are accepted).
//
//	haprobe -listen 127.0.0.2:4510 -out ha.hex -for 60s
//	haprobe -from 127.0.0.2:4510 -to 127.0.0.1:4510 -in ha.hex [-skip CHILD_ADD]
//	haprobe -from 127.0.0.2:4510 -to 127.0.0.1:4510 -send 030c0022000004 (raw hex)
//
// Every mode is bounded in time and count.
package main

import (
	"bufio"
	"encoding/hex"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"time"

	"github.com/handoffvpn/handoff/ipsec/hasync"
)

func main() {
	listen := flag.String("listen", "", "record: address to listen on")
	out := flag.String("out", "", "record: file to append datagrams to")
	dur := flag.Duration("for", 60*time.Second, "record: stop after this long")
	maxN := flag.Int("max", 10000, "record/replay: stop after this many datagrams")
	from := flag.String("from", "", "replay: local address to send from")
	to := flag.String("to", "", "replay: charon's ha address")
	in := flag.String("in", "", "replay: recorded file")
	skip := flag.String("skip", "", "replay: comma-separated message types not to send")
	raw := flag.String("send", "", "send one hex datagram")
	gap := flag.Duration("gap", 20*time.Millisecond, "replay: pause between datagrams")
	flag.Parse()
	switch {
	case *listen != "":
		record(*listen, *out, *dur, *maxN)
	case *from != "" && *to != "":
		replay(*from, *to, *in, *raw, *skip, *gap, *maxN)
	default:
		flag.Usage()
		os.Exit(2)
	}
}

func record(addr, out string, dur time.Duration, maxN int) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		log.Fatal(err)
	}
	defer pc.Close()
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	deadline := time.Now().Add(dur)
	buf := make([]byte, 65536)
	for n := 0; n < maxN && time.Now().Before(deadline); {
		_ = pc.SetReadDeadline(deadline)
		k, src, err := pc.ReadFrom(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				break
			}
			log.Fatal(err)
		}
		n++
		fmt.Fprintf(f, "%d %s\n", time.Now().UnixNano(), hex.EncodeToString(buf[:k]))
		desc := "undecodable"
		if m, err := hasync.Decode(buf[:k]); err == nil {
			desc = m.String()
		} else {
			desc += ": " + err.Error()
		}
		log.Printf("from %s %d bytes: %s", src, k, desc)
	}
}

func replay(from, to, in, raw, skip string, gap time.Duration, maxN int) {
	laddr, err := net.ResolveUDPAddr("udp", from)
	if err != nil {
		log.Fatal(err)
	}
	raddr, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := net.DialUDP("udp", laddr, raddr)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	var lines []string
	if raw != "" {
		lines = []string{"0 " + raw}
	} else {
		f, err := os.Open(in)
		if err != nil {
			log.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		f.Close()
	}
	skipSet := map[string]bool{}
	for _, s := range strings.Split(skip, ",") {
		if s != "" {
			skipSet[s] = true
		}
	}
	sent := 0
	for _, line := range lines {
		if sent >= maxN {
			break
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			continue
		}
		b, err := hex.DecodeString(fields[1])
		if err != nil {
			log.Fatal(err)
		}
		m, err := hasync.Decode(b)
		if err != nil {
			log.Printf("not sending undecodable datagram: %v", err)
			continue
		}
		if skipSet[m.Type.String()] {
			continue
		}
		if _, err := conn.Write(b); err != nil {
			log.Fatal(err)
		}
		sent++
		log.Printf("sent %s", m)
		time.Sleep(gap)
	}
}
