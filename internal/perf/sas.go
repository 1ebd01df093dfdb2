package perf

import (
	"crypto/rand"
	"fmt"
	"net/netip"
	"time"

	"github.com/handoffvpn/handoff/ipsec/sa"
)

// MaxSAs is the largest set SAs generates with every address distinct.
const MaxSAs = 1<<17 - 512

// VIP is the gateway's floating address the synthetic SAs terminate on.
var VIP = netip.MustParseAddr("203.0.113.100")

// ProtectedNet is the gateway side's traffic selector.
var ProtectedNet = netip.MustParsePrefix("198.51.100.0/24")

// SAs returns n road-warrior CHILD_SAs terminating on VIP, shaped the way
// strongSwan installs them (AES-GCM-128 with UDP encapsulation, a 32-packet
// replay window, time lifetimes, and the out, in and fwd policies of a
// tunnel-mode responder), with random
// keys. Every peer has its own address in 198.18.0.0/15 and its own /32
// traffic selector, so that every state and every policy is distinct in a
// kernel (memdp.Synthetic wraps its addresses after 65,536 SAs). Reqids and
// SPIs are offset by base, so that several sets can coexist.
func SAs(n int, base uint32) ([]*sa.ChildSA, error) {
	if n < 0 || n > MaxSAs {
		return nil, fmt.Errorf("generating %d SAs: at most %d have distinct addresses", n, MaxSAs)
	}
	keys := make([]byte, 40*n)
	if _, err := rand.Read(keys); err != nil {
		return nil, fmt.Errorf("generating SA keys: %w", err)
	}
	life := sa.Lifetime{SoftBytes: ^uint64(0), HardBytes: ^uint64(0), SoftPackets: ^uint64(0), HardPackets: ^uint64(0),
		SoftAddSeconds: 3240, HardAddSeconds: 3600}
	established := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	out := make([]*sa.ChildSA, n)
	for i := range out {
		off := uint32(256 + i)
		peer := netip.AddrFrom4([4]byte{198, 18 + byte(off>>16), byte(off >> 8), byte(off)})
		inner := netip.PrefixFrom(peer, 32)
		id := base + uint32(i) + 1
		state := func(src, dst netip.Addr, spi uint32, key []byte) sa.State {
			return sa.State{Src: src, Dst: dst, Proto: sa.ProtoESP, SPI: spi, Mode: sa.ModeTunnel, Reqid: id,
				Flags: 32, ReplayWindow: 32, AEAD: &sa.Algo{Name: "rfc4106(gcm(aes))", Key: key, ICVBits: 128},
				Encap: &sa.Encap{Type: sa.EncapESPInUDP, SrcPort: 4500, DstPort: 4500}, Lifetime: life}
		}
		in := state(peer, VIP, 0xc0000000|id, keys[40*i:40*i+20:40*i+20])
		outS := state(VIP, peer, 0x80000000|id, keys[40*i+20:40*i+40:40*i+40])
		out[i] = &sa.ChildSA{
			ID: sa.MakeID(in),
			IKE: sa.IKE{UniqueID: id, Name: "rw", LocalID: "vpn.example", RemoteID: fmt.Sprintf("client-%d@vpn.example", id),
				Local: netip.AddrPortFrom(VIP, 4500), Remote: netip.AddrPortFrom(peer, 4500), NATRemote: true,
				InitiatorSPI: uint64(id)<<32 | 0x1234, ResponderSPI: uint64(id)<<32 | 0x5678, EstablishedAt: established},
			Child: sa.Child{Name: "net", UniqueID: id, LocalTS: []string{ProtectedNet.String()}, RemoteTS: []string{inner.String()},
				InstalledAt: established, RekeyAt: established.Add(54 * time.Minute)},
			In: in, Out: outS,
			Policies: []sa.Policy{
				{Dir: sa.DirOut, Selector: sa.Selector{Src: ProtectedNet, Dst: inner}, Priority: 375423,
					Templates: []sa.Template{{Src: VIP, Dst: peer, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: id}}},
				{Dir: sa.DirIn, Selector: sa.Selector{Src: inner, Dst: ProtectedNet}, Priority: 375423,
					Templates: []sa.Template{{Src: peer, Dst: VIP, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: id}}},
				{Dir: sa.DirFwd, Selector: sa.Selector{Src: inner, Dst: ProtectedNet}, Priority: 375423,
					Templates: []sa.Template{{Src: peer, Dst: VIP, Proto: sa.ProtoESP, Mode: sa.ModeTunnel, Reqid: id}}},
			},
		}
	}
	return out, nil
}
