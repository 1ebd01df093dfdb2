package linux

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
)

var testMAC = net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x20, 0x30}

func TestLinuxGratuitousARPFrames(t *testing.T) {
	vip := netip.MustParseAddr("198.18.0.100")
	frames, err := gratuitousARP(testMAC, vip)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 2 {
		t.Fatalf("got %d frames, want a request and a reply", len(frames))
	}
	for i, f := range frames {
		if len(f) != minFrame {
			t.Errorf("frame %d is %d bytes, want %d", i, len(f), minFrame)
		}
		if !bytes.Equal(f[0:6], broadcastMAC) || !bytes.Equal(f[6:12], testMAC) || binary.BigEndian.Uint16(f[12:]) != etherTypeARP {
			t.Errorf("frame %d: bad Ethernet header % x", i, f[:14])
		}
		arp := f[14:]
		if op := binary.BigEndian.Uint16(arp[6:]); op != uint16(i+1) {
			t.Errorf("frame %d: ARP op %d, want %d", i, op, i+1)
		}
		if !bytes.Equal(arp[8:14], testMAC) || !bytes.Equal(arp[14:18], vip.AsSlice()) || !bytes.Equal(arp[24:28], vip.AsSlice()) {
			t.Errorf("frame %d: sender/target not the VIP at our MAC: % x", i, arp[:28])
		}
	}
	if _, err := gratuitousARP(testMAC, netip.MustParseAddr("2001:db8::1")); err == nil {
		t.Error("gratuitous ARP for an IPv6 address was built")
	}
}

func TestLinuxUnsolicitedNAFrame(t *testing.T) {
	vip := netip.MustParseAddr("2001:db8::100")
	f, err := unsolicitedNA(testMAC, vip)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f[0:6], allNodesMAC) || binary.BigEndian.Uint16(f[12:]) != etherTypeIPv6 {
		t.Fatalf("bad Ethernet header % x", f[:14])
	}
	ip6 := f[14:54]
	if ip6[0]>>4 != 6 || ip6[6] != 58 || ip6[7] != 255 {
		t.Fatalf("IPv6 header: version %d, next header %d, hop limit %d", ip6[0]>>4, ip6[6], ip6[7])
	}
	icmp := f[54 : 54+int(binary.BigEndian.Uint16(ip6[4:]))]
	if icmp[0] != 136 || binary.BigEndian.Uint32(icmp[4:])&0x20000000 == 0 {
		t.Fatalf("not a Neighbor Advertisement with Override: type %d flags %08x", icmp[0], binary.BigEndian.Uint32(icmp[4:]))
	}
	if !bytes.Equal(icmp[8:24], vip.AsSlice()) || icmp[24] != 2 || !bytes.Equal(icmp[26:32], testMAC) {
		t.Fatalf("target or link-layer option wrong: % x", icmp)
	}
	// A correct checksum makes the sum over pseudo-header and message,
	// checksum included, come out as zero.
	var src, dst [16]byte
	copy(src[:], ip6[8:24])
	copy(dst[:], ip6[24:40])
	if c := icmpv6Checksum(src, dst, icmp); c != 0 {
		t.Fatalf("ICMPv6 checksum does not verify (residue %04x)", c)
	}
}

func TestLinuxOwnerProtocolMessages(t *testing.T) {
	vip := netip.MustParseAddr("198.18.0.100")
	for _, m := range []message{
		{kind: msgQuery, vip: vip},
		{kind: msgNone, vip: vip},
		{kind: msgHolder, vip: vip, node: "gw-1", term: 7},
		{kind: msgYield, vip: netip.MustParseAddr("2001:db8::100"), node: "b", term: 18446744073709551615},
		{kind: msgYielded, vip: vip, node: "b.2", term: 9},
	} {
		got, err := parseMessage(m.encode())
		if err != nil || got != m {
			t.Errorf("round trip of %+v: %+v, %v", m, got, err)
		}
	}
	for _, bad := range []string{
		"", "HANDOFF/1", "HANDOFF/2 QUERY 198.18.0.100", "HANDOFF/1 QUERY nope",
		"HANDOFF/1 HOLDER 198.18.0.100 a", "HANDOFF/1 HOLDER 198.18.0.100 a -1",
		"HANDOFF/1 HOLDER 198.18.0.100 a/b 1", "HANDOFF/1 STEAL 198.18.0.100 a 1",
		"HANDOFF/1 QUERY 198.18.0.100 extra", strings.Repeat("x", 300),
	} {
		if m, err := parseMessage([]byte(bad)); err == nil {
			t.Errorf("parseMessage(%q) = %+v, want an error", bad, m)
		}
	}
}

func FuzzLinuxOwnerMessage(f *testing.F) {
	f.Add([]byte("HANDOFF/1 HOLDER 198.18.0.100 a 3"))
	f.Add([]byte("HANDOFF/1 QUERY 2001:db8::1"))
	f.Add([]byte("HANDOFF/1 YIELD 198.18.0.1 n 0"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseMessage(b)
		if err != nil {
			return
		}
		again, err := parseMessage(m.encode())
		if err != nil || again != m {
			t.Fatalf("%q parsed as %+v, which re-encodes to %q (%+v, %v)", b, m, m.encode(), again, err)
		}
	})
}

func TestLinuxSettingsValidate(t *testing.T) {
	cases := []struct {
		s   Settings
		key string
	}{
		{Settings{}, "interface"},
		{Settings{Interface: "this-name-is-too-long"}, "interface"},
		{Settings{Interface: "eth0", AnnounceCount: -1}, "announce_count"},
		{Settings{Interface: "eth0", AnnounceInterval: "often"}, "announce_interval"},
		{Settings{Interface: "eth0", ProbeTimeout: "0s"}, "probe_timeout"},
		{Settings{Interface: "eth0", OwnerPort: 70000}, "owner_port"},
		{Settings{Interface: "eth0", Peers: map[string]string{"a": "zz"}}, "peers"},
		{Settings{Interface: "eth0", Peers: map[string]string{"a": "02:00:00:00:00:01", "b": "02:00:00:00:00:01"}}, "peers"},
		{Settings{Interface: "eth0", Interfaces: []string{"eth1", "eth0"}}, "interfaces"},
		{Settings{Interface: "eth0", Interfaces: []string{"bad/name"}}, "interfaces"},
	}
	for _, c := range cases {
		if err := c.s.Validate(); err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("linux Validate(%+v) = %v, want an error naming %s", c.s, err, c.key)
		}
	}
	if err := (Settings{Interface: "eth0"}).Validate(); err != nil {
		t.Errorf("linux Validate with only an interface: %v", err)
	}
	if _, err := settingsFrom(map[string]any{"interface": "eth0", "anounce_count": 3}); err == nil || !strings.Contains(err.Error(), "anounce_count") {
		t.Errorf("linux settings with an unknown key: err = %v", err)
	}
}

func TestLinuxStateFileRoundTrip(t *testing.T) {
	s := stateFile{path: t.TempDir() + "/sub/vips-eth0.json"}
	recs, err := s.load()
	if err != nil || len(recs) != 0 {
		t.Fatalf("loading a missing state file: %v %v", recs, err)
	}
	want := map[string]record{"198.18.0.100": {Node: "a", Term: 4, Held: true}, "2001:db8::100": {Node: "b", Term: 9}}
	if err := s.save(want); err != nil {
		t.Fatal(err)
	}
	got, err := s.load()
	if err != nil || len(got) != 2 || got["198.18.0.100"] != want["198.18.0.100"] || got["2001:db8::100"] != want["2001:db8::100"] {
		t.Fatalf("state round trip: %v %v", got, err)
	}
}
