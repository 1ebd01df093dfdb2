package linux

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Ethernet frames that tell a segment an address moved. They are built by
// hand (a few dozen bytes each) and sent on an AF_PACKET socket, which
// keeps the provider free of ARP/NDP libraries for two fixed packets.

const (
	etherTypeARP  = 0x0806
	etherTypeIPv6 = 0x86dd
	minFrame      = 60 // Ethernet minimum without FCS
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// allNodesMAC is the Ethernet multicast address of ff02::1.
var allNodesMAC = net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x01}

func ethernet(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, 0, max(minFrame, 14+len(payload)))
	f = append(f, dst...)
	f = append(f, src...)
	f = binary.BigEndian.AppendUint16(f, etherType)
	f = append(f, payload...)
	for len(f) < minFrame {
		f = append(f, 0)
	}
	return f
}

// gratuitousARP returns the two announcements of ip at mac: an ARP request
// and an ARP reply, both with sender and target IP set to ip and sent to
// broadcast. Neighbors update an existing entry on either; some older
// stacks only honour the reply.
func gratuitousARP(mac net.HardwareAddr, ip netip.Addr) ([][]byte, error) {
	if len(mac) != 6 || !ip.Is4() {
		return nil, fmt.Errorf("gratuitous ARP for %s at %s: need an IPv4 address and a 6-byte MAC", ip, mac)
	}
	a := ip.As4()
	build := func(op uint16, tha net.HardwareAddr) []byte {
		p := make([]byte, 0, 28)
		p = binary.BigEndian.AppendUint16(p, 1)      // hardware: Ethernet
		p = binary.BigEndian.AppendUint16(p, 0x0800) // protocol: IPv4
		p = append(p, 6, 4)
		p = binary.BigEndian.AppendUint16(p, op)
		p = append(p, mac...)
		p = append(p, a[:]...)
		p = append(p, tha...)
		p = append(p, a[:]...)
		return ethernet(broadcastMAC, mac, etherTypeARP, p)
	}
	return [][]byte{build(1, make(net.HardwareAddr, 6)), build(2, broadcastMAC)}, nil
}

// unsolicitedNA returns an ICMPv6 Neighbor Advertisement (RFC 4861 7.2.6)
// for ip at mac to all nodes, with the Override flag set so neighbors
// replace the link-layer address they cached.
func unsolicitedNA(mac net.HardwareAddr, ip netip.Addr) ([]byte, error) {
	if len(mac) != 6 || !ip.Is6() || ip.Is4In6() {
		return nil, fmt.Errorf("neighbor advertisement for %s at %s: need an IPv6 address and a 6-byte MAC", ip, mac)
	}
	src, dst := ip.As16(), netip.MustParseAddr("ff02::1").As16()
	icmp := make([]byte, 32)
	icmp[0] = 136                                    // Neighbor Advertisement
	binary.BigEndian.PutUint32(icmp[4:], 0x20000000) // Override
	copy(icmp[8:24], src[:])
	icmp[24], icmp[25] = 2, 1 // option: target link-layer address, 8 bytes
	copy(icmp[26:32], mac)
	binary.BigEndian.PutUint16(icmp[2:], icmpv6Checksum(src, dst, icmp))

	ip6 := make([]byte, 40, 40+len(icmp))
	ip6[0] = 0x60
	binary.BigEndian.PutUint16(ip6[4:], uint16(len(icmp)))
	ip6[6], ip6[7] = 58, 255 // next header ICMPv6, hop limit 255 (required)
	copy(ip6[8:24], src[:])
	copy(ip6[24:40], dst[:])
	return ethernet(allNodesMAC, mac, etherTypeIPv6, append(ip6, icmp...)), nil
}

// icmpv6Checksum is the Internet checksum over the IPv6 pseudo-header and
// the message (with its checksum field zero).
func icmpv6Checksum(src, dst [16]byte, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	var l [8]byte
	binary.BigEndian.PutUint32(l[:4], uint32(len(msg)))
	l[7] = 58
	add(l[:])
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// announcements returns the frames that announce ip at mac.
func announcements(mac net.HardwareAddr, ip netip.Addr) ([][]byte, error) {
	if ip.Is4() {
		return gratuitousARP(mac, ip)
	}
	na, err := unsolicitedNA(mac, ip)
	if err != nil {
		return nil, err
	}
	return [][]byte{na}, nil
}
