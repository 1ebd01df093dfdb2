package sa

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/allocguard"
)

// seedChildSA is a fully populated CHILD_SA: every optional part set, so the
// fuzzer starts from encodings that reach every branch of the decoder.
func seedChildSA() *ChildSA {
	in := State{
		Src: netip.MustParseAddr("203.0.113.2"), Dst: netip.MustParseAddr("203.0.113.100"),
		Proto: ProtoESP, SPI: 0xc1a2b3c4, Mode: ModeTunnel, Reqid: 7, Flags: 32 | 128,
		ExtraFlags: 2, ReplayWindow: 128, ESN: true,
		AEAD:  &Algo{Name: "rfc4106(gcm(aes))", Key: bytes.Repeat([]byte{0xab}, 20), ICVBits: 128},
		Encap: &Encap{Type: EncapESPInUDP, SrcPort: 4500, DstPort: 4500, OrigAddr: netip.MustParseAddr("198.51.100.7")},
		Mark:  &Mark{Value: 42, Mask: 0xffffffff}, IfID: 9,
		Lifetime: Lifetime{SoftBytes: ^uint64(0), HardBytes: ^uint64(0), SoftPackets: ^uint64(0),
			HardPackets: ^uint64(0), SoftAddSeconds: 3000, HardAddSeconds: 3600},
		Selector: Selector{Src: netip.MustParsePrefix("198.51.100.10/32"), Dst: netip.MustParsePrefix("198.18.0.0/15"), Proto: 17, SrcPort: 53, DstPort: 1053},
	}
	out := in
	out.Src, out.Dst = in.Dst, in.Src
	out.SPI = 0xd5e6f708
	out.AEAD = nil
	out.Crypt = &Algo{Name: "cbc(aes)", Key: bytes.Repeat([]byte{0x11}, 16)}
	out.Auth = &Algo{Name: "hmac(sha256)", Key: bytes.Repeat([]byte{0x22}, 32), TruncBits: 128}
	out.Encap = nil
	out.Selector = Selector{}
	c := &ChildSA{
		IKE: IKE{UniqueID: 3, Name: "gw", LocalID: "gw.example", RemoteID: "CN=client, O=Example",
			Local: netip.MustParseAddrPort("203.0.113.100:4500"), Remote: netip.MustParseAddrPort("203.0.113.2:4500"),
			InitiatorSPI: 0x0102030405060708, ResponderSPI: 0x1112131415161718, NATRemote: true,
			EstablishedAt: time.Unix(1_700_000_000, 0).UTC()},
		Child: Child{Name: "net", UniqueID: 11, LocalTS: []string{"198.18.0.0/15"}, RemoteTS: []string{"198.51.100.10/32", "2001:db8::/64"},
			InstalledAt: time.Unix(1_700_000_100, 5).UTC(), RekeyAt: time.Unix(1_700_003_000, 0).UTC()},
		In: in, Out: out,
		Policies: []Policy{
			{Dir: DirOut, Selector: Selector{Src: netip.MustParsePrefix("198.18.0.0/15"), Dst: netip.MustParsePrefix("198.51.100.10/32")},
				Priority: 375423, Mark: &Mark{Value: 1, Mask: 3}, IfID: 9,
				Templates: []Template{{Src: out.Src, Dst: out.Dst, Proto: ProtoESP, Mode: ModeTunnel, Reqid: 7}}},
			{Dir: DirFwd, Action: 1, Selector: Selector{Src: netip.MustParsePrefix("2001:db8::/64"), Dst: netip.MustParsePrefix("::/0")}},
		},
	}
	c.ID = MakeID(c.In)
	return c
}

func FuzzUnmarshal(f *testing.F) {
	f.Add(Marshal(seedChildSA()))
	f.Add(Marshal(&ChildSA{}))
	f.Add([]byte{})
	f.Add([]byte{codecVersion})
	f.Add([]byte{codecVersion + 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Unmarshal(b)
		if err != nil {
			if !errors.Is(err, ErrCodec) {
				t.Fatalf("decoding error does not wrap ErrCodec: %v", err)
			}
			return
		}
		// Whatever decodes must survive a round trip unchanged: the
		// replicated copy of an SA is exactly the exported one.
		enc := Marshal(c)
		c2, err := Unmarshal(enc)
		if err != nil {
			t.Fatalf("re-decoding own encoding: %v", err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip changed the SA:\n got %#v\nwant %#v", c2.String(), c.String())
		}
		if enc2 := Marshal(c2); !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable: %x vs %x", enc, enc2)
		}
		// Formatting must never panic either (it runs on log paths).
		_ = c.String()
	})
}

func FuzzUnmarshalReplay(f *testing.F) {
	f.Add(MarshalReplay(&Replay{ID: "203.0.113.100/c1a2b3c4", OSeq: 1 << 33, Seq: 0x25e, Bitmap: []uint32{0xffffffff, 1, 0, 7}, ReadAt: time.Unix(1_700_000_000, 1).UTC()}))
	f.Add(MarshalReplay(&Replay{}))
	f.Add([]byte{codecVersion, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		rp, err := UnmarshalReplay(b)
		if err != nil {
			if !errors.Is(err, ErrCodec) {
				t.Fatalf("decoding error does not wrap ErrCodec: %v", err)
			}
			return
		}
		enc := MarshalReplay(rp)
		rp2, err := UnmarshalReplay(enc)
		if err != nil {
			t.Fatalf("re-decoding own encoding: %v", err)
		}
		if !reflect.DeepEqual(rp, rp2) {
			t.Fatalf("round trip changed the replay record: %+v vs %+v", rp, rp2)
		}
	})
}

// TestSeedRoundTrip checks the seed itself survives unchanged, field by
// field, so the fuzz target starts from a faithful encoding.
func TestSeedRoundTrip(t *testing.T) {
	want := seedChildSA()
	if err := want.Validate(); err != nil {
		t.Fatalf("seed is not a valid SA: %v", err)
	}
	got, err := Unmarshal(Marshal(want))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip changed the seed SA")
	}
}

// TestListLengthsBoundedByInput: a list length the input cannot hold is
// refused before anything is allocated for it (each entry takes at least
// a byte).
func TestListLengthsBoundedByInput(t *testing.T) {
	claim := binary.AppendUvarint([]byte{codecVersion, 0, 0, 0}, maxBitmap) // empty ID, counters 0, then the bitmap
	var err error
	got := allocguard.Allocated(func() { _, err = UnmarshalReplay(claim) })
	if !errors.Is(err, ErrCodec) || !strings.Contains(err.Error(), "entries in 0 bytes") {
		t.Errorf("a bitmap of %d words in %d bytes: err = %v", maxBitmap, len(claim), err)
	}
	if got >= 4*maxBitmap {
		t.Errorf("a bitmap claim of %d words in %d bytes allocated %d bytes", maxBitmap, len(claim), got)
	}
}
