package ikeprobe_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/healthcheck/ikeprobe"
	"github.com/handoffvpn/handoff/healthcheck/local"
	"github.com/handoffvpn/handoff/lab/hostlab"
)

// captureEnv, when set, makes the real-charon test write the replies it
// received into the fuzz seed corpus.
const captureEnv = "HANDOFF_CAPTURE_FUZZ_CORPUS"

func labCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func probe(t *testing.T, ns *hostlab.Netns, port uint16, mode ikeprobe.Mode) *ikeprobe.Probe {
	t.Helper()
	p, err := ikeprobe.New(ikeprobe.Config{
		Target: netip.AddrPortFrom(hostlab.GatewayOuter, port),
		Mode:   mode,
		Dial:   ns.DialContext,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func once(t *testing.T, p *ikeprobe.Probe) (*ikeprobe.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	return p.Probe(ctx)
}

// TestPrivilegedProbeRealCharon probes a real charon (libipsec) on 500 and
// 4500 in both modes and checks what it answers.
func TestPrivilegedProbeRealCharon(t *testing.T) {
	lab := hostlab.New(t)
	site := lab.NewSite()
	gw := lab.StartCharon(site.Gateway, "gw", hostlab.CharonConfig{Swanctl: hostlab.GatewaySwanctl()})

	for _, tc := range []struct {
		port uint16
		mode ikeprobe.Mode
		kind ikeprobe.Kind
	}{
		{500, ikeprobe.Stateless, ikeprobe.KindInvalidKE},
		{4500, ikeprobe.Stateless, ikeprobe.KindInvalidKE},
		{500, ikeprobe.Full, ikeprobe.KindSAInit},
		{4500, ikeprobe.Full, ikeprobe.KindSAInit},
	} {
		name := fmt.Sprintf("%d-%v", tc.port, tc.mode)
		res, err := once(t, probe(t, site.Client, tc.port, tc.mode))
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, gw.LogTail(20))
		}
		r := res.Response
		if r.Kind != tc.kind {
			t.Fatalf("%s: got %v, want %v", name, r.Kind, tc.kind)
		}
		switch tc.kind {
		case ikeprobe.KindInvalidKE:
			// The gateway proposes only ecp256 and asks for it.
			if r.Group != ikeprobe.ECP256 {
				t.Errorf("%s: INVALID_KE_PAYLOAD asks for %v", name, r.Group)
			}
		case ikeprobe.KindSAInit:
			if r.Group != ikeprobe.ECP256 || r.SPIr == 0 || r.Proposal == nil {
				t.Errorf("%s: full response %+v", name, r)
			}
		}
		t.Logf("%s: %v in %v (%d bytes)", name, r.Kind, res.RTT, len(res.Raw))
		if os.Getenv(captureEnv) != "" {
			writeSeed(t, "charon-5.9-"+name, res.Raw)
		}
	}
}

// TestPrivilegedProbeLeavesNoHalfOpen probes a real charon many times on
// both ports with the default (stateless) probe, from the address a real
// client then connects from. The half-open counter (VICI stats) must stay
// at zero and the client must get its tunnel. A few Full probes are then
// shown to leave half-open IKE_SAs until charon demands COOKIEs from that
// address (charon.cookie_threshold_ip, 3 by default in 5.9): the hazard
// the stateless default avoids.
func TestPrivilegedProbeLeavesNoHalfOpen(t *testing.T) {
	lab := hostlab.New(t)
	site := lab.NewSite()
	gw := lab.StartCharon(site.Gateway, "gw", hostlab.CharonConfig{Swanctl: hostlab.GatewaySwanctl()})
	client := lab.StartCharon(site.Client, "client", hostlab.CharonConfig{Swanctl: hostlab.ClientSwanctl("30s")})
	ctx := labCtx(t)

	stateless := []*ikeprobe.Probe{probe(t, site.Client, 500, ikeprobe.Stateless), probe(t, site.Client, 4500, ikeprobe.Stateless)}
	const rounds = 40
	maxHalfOpen := 0
	for i := range rounds {
		for _, p := range stateless {
			res, err := once(t, p)
			if err != nil {
				t.Fatalf("stateless probe %d on %s: %v", i, p.Name(), err)
			}
			if res.Response.Kind != ikeprobe.KindInvalidKE {
				t.Fatalf("stateless probe %d on %s: %v, want INVALID_KE_PAYLOAD", i, p.Name(), res.Response.Kind)
			}
			st, err := local.ReadStats(ctx, gw.Socket())
			if err != nil {
				t.Fatal(err)
			}
			maxHalfOpen = max(maxHalfOpen, st.HalfOpen)
			// Real probing sends one probe per port per interval; let
			// charon finish destroying the answered IKE_SA before the
			// next one, as it always has by then. Back to back on a
			// loaded machine, its lagging destroys otherwise cross
			// cookie_threshold_ip and it answers COOKIE (still a healthy
			// answer, but not what this test is about).
			if _, err := settledStats(ctx, gw); err != nil {
				t.Fatal(err)
			}
		}
	}
	// charon sends its answer before it destroys the IKE_SA, so a stats
	// call right after a reply may still count that one SA: at most one is
	// ever seen, and none remains once charon has caught up.
	st, err := settledStats(ctx, gw)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after %d stateless probes: ikesas total %d, half-open %d (max seen right after a reply %d)", 2*rounds, st.IKESAs, st.HalfOpen, maxHalfOpen)
	if st.HalfOpen != 0 || st.IKESAs != 0 || maxHalfOpen > 1 {
		t.Fatalf("stateless probing left IKE_SAs on the gateway: %+v, max half-open %d", st, maxHalfOpen)
	}
	if err := client.Initiate(ctx, "client"); err != nil {
		t.Fatalf("a real client could not connect after the probes: %v\n%s", err, gw.LogTail(20))
	}
	if st, _ = local.ReadStats(ctx, gw.Socket()); st.IKESAs != 1 || st.HalfOpen != 0 {
		t.Fatalf("after the client connected: %+v", st)
	}

	// Full probes: each accepted one leaves a half-open IKE_SA (for
	// half_open_timeout, 30 s), until charon answers this address only
	// with COOKIE.
	full := probe(t, site.Client, 500, ikeprobe.Full)
	var kinds []ikeprobe.Kind
	for i := range 5 {
		res, err := once(t, full)
		if err != nil {
			t.Fatalf("full probe %d: %v", i+1, err)
		}
		kinds = append(kinds, res.Response.Kind)
	}
	st, err = local.ReadStats(ctx, gw.Socket())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("5 full probes answered %v; ikesas total %d, half-open %d", kinds, st.IKESAs, st.HalfOpen)
	if st.HalfOpen < 3 || kinds[0] != ikeprobe.KindSAInit || kinds[4] != ikeprobe.KindCookie {
		t.Fatalf("full probes: answers %v, half-open %d; expected half-open SAs and then COOKIEs", kinds, st.HalfOpen)
	}
	// Every IKE_SA_INIT from this address now pays a COOKIE round trip,
	// the stateless probe's too (still a live answer).
	res, err := once(t, stateless[0])
	if err != nil || res.Response.Kind != ikeprobe.KindCookie {
		t.Fatalf("stateless probe with the half-open table filled: %v %v", res, err)
	}
	if os.Getenv(captureEnv) != "" {
		writeSeed(t, "charon-5.9-500-cookie", res.Raw)
	}
}

// settledStats reads charon's stats until no IKE_SA is half-open, for at
// most a second.
func settledStats(ctx context.Context, gw *hostlab.Charon) (local.Stats, error) {
	deadline := time.Now().Add(time.Second)
	for {
		st, err := local.ReadStats(ctx, gw.Socket())
		if err != nil || st.HalfOpen == 0 || time.Now().After(deadline) {
			return st, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func writeSeed(t *testing.T, name string, data []byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", "FuzzParseResponse")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}
