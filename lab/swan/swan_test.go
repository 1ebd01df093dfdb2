package swan

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/lab/topo"
)

func testProfile() Profile {
	return Profile{
		Auth: AuthPSK, PSK: "not-a-real-secret", Encap: true, DPDDelay: 2 * time.Second,
		ClientAddr: "203.0.113.2", GatewayAddr: "203.0.113.100",
		ClientTS: "198.51.100.10/32", ProtectedTS: "198.18.0.0/15", ClientNet: "198.51.100.0/24",
	}
}

func mustContain(t *testing.T, text string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(text, l) {
			t.Errorf("missing %q in:\n%s", l, text)
		}
	}
}

func TestClientAndGatewayConfig(t *testing.T) {
	p := testProfile()
	sw, creds := p.ClientConfig()
	if creds != nil {
		t.Error("PSK profile produced certificate files")
	}
	out, err := sw.Render()
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, string(out),
		"local_addrs = 203.0.113.2", "remote_addrs = 203.0.113.100",
		"proposals = aes128gcm16-prfsha256-ecp256", "encap = yes", "mobike = no",
		"keyingtries = 0", "dpd_delay = 2s", "auth = psk", "id = client.lab.test",
		"local_ts = 198.51.100.10/32", "remote_ts = 198.18.0.0/15", "esp_proposals = aes128gcm16",
		"dpd_action = restart", "close_action = restart",
		"id-1 = client.lab.test", "id-2 = gateway.lab.test", `secret = "not-a-real-secret"`)

	sw, _ = p.GatewayConfig()
	out, err = sw.Render()
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, string(out), "local_addrs = 203.0.113.100", "remote_addrs = %any",
		"local_ts = 198.18.0.0/15", "remote_ts = 198.51.100.0/24", "id = gateway.lab.test")
	if strings.Contains(string(out), "dpd_delay") {
		t.Error("gateway got a DPD delay")
	}

	p.RoadWarrior = true
	sw, _ = p.ClientConfig()
	out, _ = sw.Render()
	mustContain(t, string(out), "vips = 0.0.0.0", "local_ts = dynamic")
	sw, _ = p.GatewayConfig()
	out, _ = sw.Render()
	mustContain(t, string(out), "pools = rw", "remote_ts = dynamic", "addrs = 198.51.100.10/32")
}

func TestRenderRejects(t *testing.T) {
	child := []Child{{Name: "c"}}
	for name, sw := range map[string]Swanctl{
		"no child":         {Conns: []Conn{{Name: "a"}}},
		"sub-second DPD":   {Conns: []Conn{{Name: "a", DPDDelay: 1500 * time.Millisecond, Children: child}}},
		"multi-line PSK":   {Conns: []Conn{{Name: "a", Children: child}}, Secrets: []Secret{{IDs: []string{"x"}, Secret: "a\nb"}}},
		"sub-second rekey": {Conns: []Conn{{Name: "a", Children: []Child{{Name: "c", RekeyTime: time.Millisecond}}}}},
	} {
		if _, err := sw.Render(); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
}

func TestDaemonConfig(t *testing.T) {
	d := Daemon{Name: "gw1", Socket: "/run/lab/gw1/charon.vici", LogFile: "/tmp/x/charon.log",
		Retransmit: Retransmit{Timeout: 500 * time.Millisecond, Tries: 1, Base: 1.8}}
	out, err := d.Render()
	if err != nil {
		t.Fatal(err)
	}
	mustContain(t, string(out), "load_modular = no", "kernel-netlink socket-default vici",
		"socket = unix:///run/lab/gw1/charon.vici", "path = /tmp/x/charon.log",
		"retransmit_timeout = 0.5", "retransmit_tries = 1", "retransmit_base = 1.8", "install_routes = no")
	if strings.Contains(string(out), "kernel-libipsec") {
		t.Error("kernel-libipsec loaded without Libipsec")
	}
	d.Libipsec, d.Retransmit = true, Retransmit{}
	out, _ = d.Render()
	if !strings.Contains(string(out), "kernel-libipsec kernel-netlink") {
		t.Errorf("libipsec must load before kernel-netlink:\n%s", out)
	}
	if strings.Contains(string(out), "retransmit_timeout") {
		t.Error("retransmit settings without a schedule")
	}
}

func TestRetransmitGiveUp(t *testing.T) {
	for _, tc := range []struct {
		r    Retransmit
		want time.Duration
	}{
		{Retransmit{Timeout: 500 * time.Millisecond, Tries: 1, Base: 1.8}, 1400 * time.Millisecond},
		{Retransmit{Timeout: time.Second, Tries: 2, Base: 1}, 3 * time.Second},
		// strongSwan's defaults: 4 s, 5 tries, base 1.8 ≈ 165 s.
		{Retransmit{Timeout: 4 * time.Second, Tries: 5, Base: 1.8}, 165061 * time.Millisecond},
	} {
		if got := tc.r.GiveUp().Round(time.Millisecond); got != tc.want {
			t.Errorf("%+v: GiveUp = %v, want %v", tc.r, got, tc.want)
		}
	}
}

func TestCertsChainToCA(t *testing.T) {
	var p Profile
	if err := p.NewCerts(); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(p.CA.PEM) {
		t.Fatal("CA PEM unreadable")
	}
	for _, id := range []*Identity{p.Client, p.Gateway} {
		block, _ := pem.Decode(id.CertPEM)
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: id.ID, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s: %v", id.ID, err)
		}
		kb, _ := pem.Decode(id.KeyPEM)
		if _, err := x509.ParseECPrivateKey(kb.Bytes); err != nil {
			t.Errorf("%s key: %v", id.ID, err)
		}
	}
	sw, creds := p.ClientConfig()
	out, _ := sw.Render()
	mustContain(t, string(out), "auth = pubkey", "certs = client.lab.test.pem", "cacerts = ca.pem")
	dir := t.TempDir()
	if err := creds.write(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "ecdsa", "client.lab.test.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("private key file: %v %v", fi, err)
	}
}

// TestPrivilegedCharonLifecycle runs a real charon (kernel-netlink, no SA
// needed) in a namespace on the host: start, load, VICI, crash, restart
// over the stale socket, stop.
func TestPrivilegedCharonLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: -short runs no lab")
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIP: running charon in a network namespace needs root; CI runs this as root")
	}
	if _, err := os.Stat(DefaultCharon); err != nil {
		t.Fatalf("%s missing: run `make lab-deps`", DefaultCharon)
	}
	if err := topo.SweepStale("ts"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tp, err := topo.Build(ctx, topo.Spec{Prefix: topo.HostPrefix("ts"), Gateways: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	dir := t.TempDir()
	opts := Options{Daemon: Daemon{Name: "gw1"}, Dir: filepath.Join(dir, "gw1"), RunDir: filepath.Join(dir, "run")}
	c, err := Start(ctx, tp.Gateways[0], opts)
	if err != nil {
		t.Fatal(err)
	}
	p := testProfile()
	sw, _ := p.GatewayConfig()
	if err := c.Load(ctx, sw, nil); err != nil {
		t.Fatal(err)
	}
	s, err := c.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var conns []string
	for m, err := range s.CallStreaming(ctx, "list-conns", "list-conn", nil) {
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, m.Keys()...)
	}
	s.Close()
	if len(conns) != 1 || conns[0] != ConnName {
		t.Errorf("loaded connections %v, want [%s]", conns, ConnName)
	}
	if sas, err := c.ChildSAs(ctx); err != nil || len(sas) != 0 {
		t.Errorf("child SAs before any peer: %v %v", sas, err)
	}

	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Kill returned before charon exited")
	}
	if _, err := os.Stat(c.Socket()); err != nil {
		t.Fatalf("a killed charon leaves its socket (that is what Start must cope with): %v", err)
	}
	c2, err := Start(ctx, tp.Gateways[0], opts)
	if err != nil {
		t.Fatalf("restart over a stale socket: %v", err)
	}
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c2.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	log, err := os.ReadFile(filepath.Join(opts.Dir, "charon.log"))
	if err != nil || !strings.Contains(string(log), "kernel-netlink") {
		t.Errorf("charon's file log: %v", err)
	}
}
