package hasync_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/strongswan/govici/vici"

	"github.com/handoffvpn/handoff/ipsec/hasync"
	"github.com/handoffvpn/handoff/lab/hostlab"
)

// saView is what the gateway's charon lists: its IKE_SAs by SPIs and the
// inbound SPIs of their CHILD_SAs.
type saView struct {
	ikes     []string // "spii_spir" in hex
	children []uint32
}

func listSAs(ctx context.Context, t *testing.T, gw *hostlab.Charon) saView {
	t.Helper()
	s, err := gw.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var v saView
	for m, err := range s.CallStreaming(ctx, "list-sas", "list-sa", nil) {
		if err != nil {
			t.Fatalf("list-sas: %v", err)
		}
		for _, name := range m.Keys() {
			ike, ok := m.Get(name).(*vici.Message)
			if !ok {
				continue
			}
			v.ikes = append(v.ikes, fmt.Sprint(ike.Get("initiator-spi"), "_", ike.Get("responder-spi")))
			children, _ := ike.Get("child-sas").(*vici.Message)
			if children == nil {
				continue
			}
			for _, k := range children.Keys() {
				ch, _ := children.Get(k).(*vici.Message)
				if ch == nil {
					continue
				}
				spi, err := strconv.ParseUint(fmt.Sprint(ch.Get("spi-in")), 16, 32)
				if err != nil {
					t.Fatalf("child %s: spi-in %v: %v", k, ch.Get("spi-in"), err)
				}
				v.children = append(v.children, uint32(spi))
			}
		}
	}
	slices.Sort(v.ikes)
	slices.Sort(v.children)
	return v
}

func lineageView(l *hasync.Lineage) saView {
	ikes, children := l.Live()
	var v saView
	for _, id := range ikes {
		v.ikes = append(v.ikes, hex.EncodeToString(id.SPIi[:])+"_"+hex.EncodeToString(id.SPIr[:]))
	}
	slices.Sort(v.ikes)
	return saView{ikes: v.ikes, children: children}
}

// A real charon's ha plugin talks to Handoff's end of the channel, and the
// lineage built from what it sends matches what the charon itself lists:
// after the tunnel comes up, after the peer rekeys the CHILD_SA, and after
// it rekeys the IKE_SA (when the lineage must keep the retired IKE_SA for
// the child created under it).
func TestPrivilegedLineageFollowsARealCharon(t *testing.T) {
	lab := hostlab.New(t)
	site := lab.NewSite()
	site.Gateway.IP("link", "set", "lo", "up")
	var conn *hasync.Conn
	if err := site.Gateway.Do(func() error {
		var err error
		conn, err = hasync.Listen(netip.MustParseAddrPort("127.0.0.2:4510"), netip.MustParseAddrPort("127.0.0.1:4510"), 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var (
		mu      sync.Mutex
		lineage = hasync.NewLineage()
		applied int
		refused []error
	)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rctx, stop := context.WithCancel(ctx)
	received := make(chan error, 1)
	go func() {
		received <- conn.Receive(rctx, func(m *hasync.Message) {
			mu.Lock()
			defer mu.Unlock()
			if _, err := lineage.Apply(m); err != nil {
				refused = append(refused, fmt.Errorf("%s: %w", m.Type, err))
			}
			applied++
		}, func(b []byte, err error) {
			mu.Lock()
			refused = append(refused, fmt.Errorf("undecodable datagram of %d bytes: %w", len(b), err))
			mu.Unlock()
		})
	}()
	defer func() {
		stop()
		<-received
	}()

	gw := lab.StartCharon(site.Gateway, "gw", hostlab.CharonConfig{Swanctl: hostlab.GatewaySwanctl(), Settings: hostlab.HASettings})
	cl := lab.StartCharon(site.Client, "client", hostlab.CharonConfig{Swanctl: hostlab.ClientSwanctl("30s")})
	if err := cl.Initiate(ctx, "client"); err != nil {
		t.Fatalf("initiating: %v\n%s\n%s", err, cl.LogTail(30), gw.LogTail(30))
	}

	// agree waits (bounded) until the lineage lists what the gateway lists,
	// with wantIKEs IKE_SAs and wantChildren CHILD_SAs.
	agree := func(step string, wantIKEs, wantChildren int) saView {
		t.Helper()
		var have, want saView
		for deadline := time.Now().Add(30 * time.Second); ; {
			want = listSAs(ctx, t, gw)
			mu.Lock()
			have = lineageView(lineage)
			mu.Unlock()
			if len(want.ikes) == wantIKEs && len(want.children) == wantChildren &&
				slices.Equal(have.ikes, want.ikes) && slices.Equal(have.children, want.children) {
				return have
			}
			if time.Now().After(deadline) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("%s: the lineage lists %v %08x, charon %v %08x (%d datagrams applied, refused: %v)\n%s",
					step, have.ikes, have.children, want.ikes, want.children, applied, refused, gw.LogTail(30))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	first := agree("tunnel up", 1, 1)

	if out, err := cl.Swanctl(ctx, "--rekey", "--child", "client"); err != nil {
		t.Fatalf("rekeying the CHILD_SA: %v\n%s", err, out)
	}
	second := agree("after the CHILD_SA rekey", 1, 1)
	if slices.Equal(second.children, first.children) || !slices.Equal(second.ikes, first.ikes) {
		t.Fatalf("CHILD_SA rekey: children %08x → %08x, IKE_SAs %v → %v", first.children, second.children, first.ikes, second.ikes)
	}

	if out, err := cl.Swanctl(ctx, "--rekey", "--ike", "client"); err != nil {
		t.Fatalf("rekeying the IKE_SA: %v\n%s", err, out)
	}
	third := agree("after the IKE_SA rekey", 1, 1)
	if slices.Equal(third.ikes, second.ikes) || !slices.Equal(third.children, second.children) {
		t.Fatalf("IKE_SA rekey: IKE_SAs %v → %v, children %08x → %08x", second.ikes, third.ikes, second.children, third.children)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) > 0 {
		t.Fatalf("the lineage refused what charon sent: %v", refused)
	}
	// The child was created under the retired IKE_SA: its IKE_ADD is
	// replayed first, then the child, then the successor.
	var adds int
	for _, d := range lineage.Replay() {
		m, err := hasync.Decode(d)
		if err != nil {
			t.Fatal(err)
		}
		if m.Type == hasync.IKEAdd {
			adds++
		}
	}
	if adds != 2 {
		t.Fatalf("replay holds %d IKE_ADDs, want 2 (the retired IKE_SA the live child was created under, and its successor)", adds)
	}
}
