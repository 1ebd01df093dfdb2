package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// requireRoot skips with one SKIP line when the lab cannot run here.
func requireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("SKIP: -short runs no lab")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: the UML lab needs root (network namespaces, user-mode-linux); CI runs it as root")
	}
	if err := (&Runner{}).Available(); err != nil {
		t.Fatalf("%v: run `make lab-deps`", err)
	}
}

// buildScenarios builds the scenario programs into a directory of the
// test. The build has no deadline of its own: a busy machine once took
// longer than the three minutes it had (and the test failed with "signal:
// killed"); `go test -timeout` bounds the whole run instead.
func buildScenarios(t testing.TB, pkgs ...string) map[string]string {
	t.Helper()
	bins, err := Build(t.Context(), t.TempDir(), pkgs...)
	if err != nil {
		t.Fatal(err)
	}
	return bins
}

// testRunner keeps each guest's files under a test temporary directory,
// or under $LAB_SCRATCH (kept after the test, for reading agent logs).
func testRunner(t testing.TB) *Runner {
	root := os.Getenv("LAB_SCRATCH")
	if root == "" {
		root = t.TempDir()
	}
	return &Runner{ScratchRoot: root, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
}

// testWriter routes the runner's log to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runScenario runs sc and checks that it left nothing on the host.
func runScenario(t *testing.T, sc Scenario) *Result {
	t.Helper()
	res, problems, err := runGuest(t, sc)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	return res
}

// runGuest runs sc and says what it left wrong on the host, or what the
// guest failed to note (its namespaces); err is a run that did not
// complete.
func runGuest(t *testing.T, sc Scenario) (*Result, []string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sc.Timeout+time.Minute)
	defer cancel()
	res, err := testRunner(t).Run(ctx, sc)
	if err != nil {
		return nil, nil, err
	}
	t.Logf("%s: %s", sc.Name, res.Output)
	var problems []string
	if err := CheckHostClean(res); err != nil {
		problems = append(problems, fmt.Sprintf("after %s: %v", sc.Name, err))
	}
	if ns, err := res.GuestNamespaces(); err != nil || len(ns) < 4 {
		problems = append(problems, fmt.Sprintf("scenario noted namespaces %v (%v), want net, client, gateways and inside", ns, err))
	}
	return res, problems, nil
}

type smokeResult struct {
	BootMS      int64   `json:"boot_ms"`
	TunnelUpMS  int64   `json:"tunnel_up_ms"`
	ProbesSent  int     `json:"probes_sent"`
	ProbesLost  int     `json:"probes_lost"`
	Kernel      string  `json:"kernel"`
	Encap       bool    `json:"udp_encap"`
	ESPPackets  int     `json:"esp_packets"`
	ESPSeqReuse int     `json:"esp_seq_reused"`
	XFRMStates  int     `json:"client_xfrm_states"`
	ESPAlgo     string  `json:"esp_algo"`
	LargestGap  float64 `json:"largest_gap_ms"`
}

func TestPrivilegedLabSmoke(t *testing.T) {
	requireRoot(t)
	bin := buildScenarios(t, SmokePackage)[SmokePackage]
	for _, tc := range []struct {
		name  string
		args  []string
		encap bool
	}{
		{"psk-udp-encap", nil, true},
		{"cert-plain-esp", []string{"-auth", "cert", "-encap=false"}, false},
		{"road-warrior", []string{"-mode", "rw"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := runScenario(t, Smoke(bin, tc.args...))
			var r smokeResult
			if err := res.Decode(&r); err != nil {
				t.Fatal(err)
			}
			if r.ProbesSent < 1000 || r.ProbesLost != 0 {
				t.Errorf("probes sent %d lost %d, want >= 1000 and 0", r.ProbesSent, r.ProbesLost)
			}
			if !strings.HasPrefix(r.Kernel, "6.1.") {
				t.Errorf("kernel %q, want the UML guest's 6.1", r.Kernel)
			}
			if r.XFRMStates < 2 || !strings.Contains(r.ESPAlgo, "gcm(aes)") {
				t.Errorf("client kernel SAs: %d with %q, want 2 with AES-GCM", r.XFRMStates, r.ESPAlgo)
			}
			if r.ESPPackets < 2*r.ProbesSent || r.ESPSeqReuse != 0 {
				t.Errorf("wire: %d ESP packets, %d sequence numbers reused; want >= %d and 0", r.ESPPackets, r.ESPSeqReuse, 2*r.ProbesSent)
			}
			if r.Encap != tc.encap {
				t.Errorf("udp_encap %v, want %v", r.Encap, tc.encap)
			}
			if r.BootMS <= 0 || r.TunnelUpMS <= 0 {
				t.Errorf("boot_ms %d tunnel_up_ms %d: both must be measured", r.BootMS, r.TunnelUpMS)
			}
		})
	}
}

type baselineResult struct {
	GapMS        float64 `json:"gap_ms"`
	ProbesSent   int     `json:"probes_sent"`
	ProbesLost   int     `json:"probes_lost"`
	VIPMovedMS   float64 `json:"vip_moved_ms"`
	IKEDownMS    float64 `json:"ike_down_ms"`
	TunnelReupMS float64 `json:"tunnel_reup_ms"`
	GapStartMS   float64 `json:"gap_start_ms"`
	DPDDelayMS   int64   `json:"dpd_delay_ms"`
	ESPSeqReused int     `json:"esp_seq_reused"`
	SPIsSeen     int     `json:"spis_seen"`
}

func TestPrivilegedLabBaseline(t *testing.T) {
	requireRoot(t)
	bin := buildScenarios(t, BaselinePackage)[BaselinePackage]
	res := runScenario(t, Baseline(bin))
	var r baselineResult
	if err := res.Decode(&r); err != nil {
		t.Fatal(err)
	}
	// Without SA transfer the client must notice through DPD: the outage
	// spans at least the DPD delay, and the VIP moves long before the
	// tunnel comes back. (How long each step takes is for the benchmark.)
	if r.ProbesLost == 0 || r.GapMS < float64(r.DPDDelayMS) {
		t.Errorf("gap %.1f ms with %d lost: a DPD-driven failover cannot be shorter than dpd_delay %d ms", r.GapMS, r.ProbesLost, r.DPDDelayMS)
	}
	if !(r.VIPMovedMS > 0 && r.VIPMovedMS < r.IKEDownMS && r.IKEDownMS <= r.TunnelReupMS) {
		t.Errorf("order of events after the kill: VIP %.1f ms, IKE down %.1f ms, tunnel up %.1f ms; want 0 < VIP < down <= up",
			r.VIPMovedMS, r.IKEDownMS, r.TunnelReupMS)
	}
	if r.GapStartMS < -50 || r.GapStartMS > 50 {
		t.Errorf("the largest gap began %.1f ms from the kill, want it to be the failover", r.GapStartMS)
	}
	if r.SPIsSeen < 4 || r.ESPSeqReused != 0 {
		t.Errorf("wire: %d SPIs (want the old and new pair), %d sequence numbers reused", r.SPIsSeen, r.ESPSeqReused)
	}
}

// BenchmarkPrivilegedLabBaseline reports the conventional failover's
// client-observed gap: the figure Handoff's failover is compared with.
func BenchmarkPrivilegedLabBaseline(b *testing.B) {
	requireRoot(b)
	bin := buildScenarios(b, BaselinePackage)[BaselinePackage]
	var gap, lost, vip float64
	for b.Loop() {
		res, err := testRunner(b).Run(context.Background(), Baseline(bin))
		if err != nil {
			b.Fatal(err)
		}
		var r baselineResult
		if err := res.Decode(&r); err != nil {
			b.Fatal(err)
		}
		gap += r.GapMS
		lost += float64(r.ProbesLost)
		vip += r.VIPMovedMS
	}
	n := float64(b.N)
	b.ReportMetric(gap/n, "gap-ms/op")
	b.ReportMetric(lost/n, "lost/op")
	b.ReportMetric(vip/n, "vip-ms/op")
}

// BenchmarkPrivilegedLabSmoke reports boot and tunnel set-up times.
func BenchmarkPrivilegedLabSmoke(b *testing.B) {
	requireRoot(b)
	bin := buildScenarios(b, SmokePackage)[SmokePackage]
	var boot, up float64
	for b.Loop() {
		res, err := testRunner(b).Run(context.Background(), Smoke(bin, "-probes", "200"))
		if err != nil {
			b.Fatal(err)
		}
		var r smokeResult
		if err := res.Decode(&r); err != nil {
			b.Fatal(err)
		}
		boot += float64(r.BootMS)
		up += float64(r.TunnelUpMS)
	}
	n := float64(b.N)
	b.ReportMetric(boot/n, "boot-ms/op")
	b.ReportMetric(up/n, "tunnel-up-ms/op")
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/x/smoke":  "/tmp/x/smoke",
		"-interval=2ms": "-interval=2ms",
		"":              "''",
		"a b":           "'a b'",
		"it's":          `'it'\''s'`,
		"$(reboot)":     "'$(reboot)'",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestNormalizeRejectsBadScenarios(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "prog")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	notExec := filepath.Join(dir, "data")
	if err := os.WriteFile(notExec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sc, err := normalize(Scenario{Program: prog})
	if err != nil {
		t.Fatal(err)
	}
	if sc.Name != "prog" || sc.Timeout != 2*time.Minute || sc.MemMiB != 256 {
		t.Errorf("defaults: %+v", sc)
	}
	for _, bad := range []Scenario{
		{Program: notExec},
		{Program: filepath.Join(dir, "missing")},
		{Program: prog, Name: "a b"},
		{Program: prog, Modules: []string{"esp4,xfrm"}},
	} {
		if _, err := normalize(bad); err == nil {
			t.Errorf("normalize(%+v) accepted", bad)
		}
	}
}

// TestCollectReadsGuestVerdicts feeds collect the files a guest leaves
// behind in the situations the runner must tell apart.
func TestCollectReadsGuestVerdicts(t *testing.T) {
	r := &Runner{}
	for _, tc := range []struct {
		name   string
		exit   string // "" for no exit file
		result string
		want   error
	}{
		{"ok", "0\n", `{"a":1}`, nil},
		{"no exit file", "", "", ErrGuestDied},
		{"scenario failed", "1\n", "", ErrScenarioFailed},
		{"guest timeout", "124\n", "", ErrScenarioFailed},
		{"no result", "0\n", "", ErrScenarioFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.exit != "" {
				if err := os.WriteFile(filepath.Join(dir, "exit"), []byte(tc.exit), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tc.result != "" {
				if err := os.WriteFile(filepath.Join(dir, "result.json"), []byte(tc.result), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			res := &Result{Name: tc.name, Dir: dir, Exit: -1}
			err := r.collect(res, nil)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("collect: %v, want %v", err, tc.want)
			}
			if tc.want == nil {
				var v struct{ A int }
				if err := res.Decode(&v); err != nil || v.A != 1 {
					t.Errorf("decode: %+v %v", v, err)
				}
			}
		})
	}
}

func TestCheckHostCleanFindsLeftovers(t *testing.T) {
	dir := t.TempDir()
	res := &Result{Dir: dir, Umid: "hlabtestumid"}
	if err := CheckHostClean(res); err != nil {
		t.Fatalf("clean run reported: %v", err)
	}
	// A process whose command line carries the umid, as a UML guest
	// process would.
	cmd := exec.Command("sh", "-c", "sleep 30", "umid="+res.Umid)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	err := CheckHostClean(res)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if !errors.Is(err, ErrLeftover) || !strings.Contains(err.Error(), fmt.Sprint(cmd.Process.Pid)) {
		t.Errorf("leftover process %d not reported: %v", cmd.Process.Pid, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "uml", res.Umid), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := CheckHostClean(res); !errors.Is(err, ErrLeftover) {
		t.Errorf("leftover UML directory not reported: %v", err)
	}
}

func TestTail(t *testing.T) {
	got := tail([]byte("a\r\nb\r\nc\r\nd\r\n"), 2)
	if got != "c\nd" {
		t.Errorf("tail = %q", got)
	}
}
