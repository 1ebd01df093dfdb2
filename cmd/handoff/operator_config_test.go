package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/operator/api"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/azure"
	"github.com/handoffvpn/handoff/providers/emulator"
	"github.com/handoffvpn/handoff/providers/memory"
)

// TestConfigBlocksAndFlagsOverThem: the api, webhook and notify blocks are
// what the agent starts from, and a flag given on the command line wins
// over its key (here a good token file over one others may read).
func TestConfigBlocksAndFlagsOverThem(t *testing.T) {
	p := newPreflightFixture(t)
	cert, key := p.path("gw1.pem"), p.path("gw1-key.pem")
	script := filepath.Join(t.TempDir(), "notify.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	exposed := filepath.Join(t.TempDir(), "api.token")
	if err := os.WriteFile(exposed, []byte(strings.Repeat("x", 32)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(exposed, 0o644); err != nil {
		t.Fatal(err)
	}
	blocks := func(tokenFile string) string {
		return `api {
  addr       = "127.0.0.1:0"
  token_file = "` + tokenFile + `"
  tls_cert   = "` + cert + `"
  tls_key    = "` + key + `"
}
webhook {
  url         = "https://hooks.example/handoff"
  secret_file = "` + p.path("webhook.secret") + `"
}
notify {
  active  = ["` + script + `", "up"]
  timeout = "5s"
}
provider {
  type = "linux"
  resource {
    kind = "vip"
    id   = "198.18.0.100/24"
  }
  linux {
    interface = "eth0"
  }
}
dataplane {
  type = "strongswan"
}`
	}
	cfgPath := p.config(t, cert, key, blocks(p.path("api.token")))
	f, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Resolve(f)
	if err != nil {
		t.Fatal(err)
	}
	fs := newFlagSet()
	af := addAgentFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	af.op.noteGiven(fs)
	ready, err := preflight(cfg, af, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	op := ready.op
	if op.api.Addr != "127.0.0.1:0" || len(op.api.Tokens) != 1 || op.api.TLS == nil || op.webhook == nil || op.webhook.URL != "https://hooks.example/handoff" || len(op.webhook.Secret) < 16 {
		t.Errorf("the agent would start with api %+v, webhook %+v", op.api, op.webhook)
	}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"validate", "-config", cfgPath}, &out, &errOut); err != nil {
		t.Fatalf("validate: %v\n%s%s", err, out.String(), errOut.String())
	}
	if errOut.Len() != 0 {
		t.Errorf("validate warned about a gateway that moves and carries: %s", errOut.String())
	}

	// A token file others can read, in the file: refused; with a good
	// one on the command line: the flag wins.
	bad := p.config(t, cert, key, blocks(exposed))
	if err := run(context.Background(), []string{"validate", "-config", bad}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "api.token_file: ") {
		t.Errorf("validate of an exposed api.token_file: %v", err)
	}
	if err := run(context.Background(), []string{"validate", "-config", bad, "-api-token-file", p.path("api.token")}, &out, &errOut); err != nil {
		t.Errorf("-api-token-file did not override api.token_file: %v", err)
	}
	// -api-addr "" turns the API off, whatever the file says.
	fs = newFlagSet()
	af = addAgentFlags(fs)
	if err := fs.Parse([]string{"-api-addr", ""}); err != nil {
		t.Fatal(err)
	}
	af.op.noteGiven(fs)
	if ready, err = preflight(cfg, af, func(string) string { return "" }); err != nil || ready.op.api.Addr != "" {
		t.Errorf("-api-addr \"\": api %q, %v", ready.op.api.Addr, err)
	}
}

// TestValidateWarnsAboutAGatewayThatDoesNothing: valid, but said on stderr.
func TestValidateWarnsAboutAGatewayThatDoesNothing(t *testing.T) {
	p := newPreflightFixture(t)
	cfgPath := p.config(t, p.path("gw1.pem"), p.path("gw1-key.pem"), "")
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"validate", "-config", cfgPath}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "configuration valid") || strings.Contains(out.String(), "warning") {
		t.Errorf("stdout: %s", out.String())
	}
	for _, w := range []string{"warning: ", "provider.resource: none", "dataplane.type: \"memory\""} {
		if !strings.Contains(errOut.String(), w) {
			t.Errorf("stderr lacks %q: %s", w, errOut.String())
		}
	}
}

func TestKeygenAdviceFitsItsUse(t *testing.T) {
	dir := t.TempDir()
	for purpose, want := range map[string]string{"cluster-key": "cluster_key_file", "api-token": "api.token_file", "webhook-secret": "webhook.secret_file"} {
		var out bytes.Buffer
		if err := run(context.Background(), []string{"keygen", "-for", purpose, "-out", filepath.Join(dir, purpose)}, &out, &out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), want) || purpose != "cluster-key" && strings.Contains(out.String(), "cluster_key_file") {
			t.Errorf("keygen -for %s said %q", purpose, out.String())
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"keygen", "-for", "ssh"}, &out, &out); err == nil {
		t.Error("keygen -for ssh accepted")
	}
}

// TestCloudCheckReportsThePermissionCheck runs -check-cloud's report on the
// azure provider against the emulator: the permission check passes, then a
// denied action fails it naming the action; a provider without a check
// says so. The start-up check stops the agent on the denial only.
func TestCloudCheckReportsThePermissionCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	em, err := emulator.New(emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer em.Close()
	fx, err := azure.EmulatorFixture(ctx, em, []string{"gw1", "gw2"})
	if err != nil {
		t.Fatal(err)
	}
	defer fx.Close()
	p, err := fx.NewProvider("gw1")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := cloudCheck(ctx, "azure", p, fx.Resources, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "permission check passed") || strings.Count(out.String(), ": readable") != len(fx.Resources) {
		t.Errorf("report:\n%s", out.String())
	}
	cfg := &config.Config{ProviderType: "azure"}
	log := slog.New(slog.DiscardHandler)
	if err := startupPermissionCheck(ctx, cfg, p, fx.Resources, log); err != nil {
		t.Errorf("start-up check with every right: %v", err)
	}

	const denied = "Microsoft.Network/routeTables/routes/write"
	em.Gate().Inject(emulator.Fault{Kind: emulator.PermissionDenied, Cloud: "azure", Op: denied})
	out.Reset()
	if err := cloudCheck(ctx, "azure", p, fx.Resources, &out); err == nil || !strings.Contains(out.String(), "permission check FAILED") || !strings.Contains(out.String(), denied) {
		t.Errorf("report with %s denied: %v\n%s", denied, err, out.String())
	}
	if err := startupPermissionCheck(ctx, cfg, p, fx.Resources, log); err == nil || !strings.Contains(err.Error(), denied) {
		t.Errorf("start-up check with %s denied: %v", denied, err)
	}

	out.Reset()
	mem := memory.New(memory.NewCloud(0), "gw1")
	rs := []providers.Resource{{Kind: "vip", ID: "x"}}
	if err := cloudCheck(ctx, "memory", mem, rs, &out); err != nil || !strings.Contains(out.String(), "has no dry permission check") {
		t.Errorf("report without a check: %v\n%s", err, out.String())
	}
	if err := startupPermissionCheck(ctx, &config.Config{ProviderType: "memory"}, mem, rs, log); err != nil {
		t.Errorf("start-up check without a check: %v", err)
	}
}

func newFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// TestAPIDefaultAddressIsTheAPIsOwn: config's default api.addr (config
// cannot import the API package) is the one the API and the CLI use.
func TestAPIDefaultAddressIsTheAPIsOwn(t *testing.T) {
	if got := config.Defaults().API.Addr; got != api.DefaultAddr {
		t.Errorf("config's default api.addr %q, the API's %q", got, api.DefaultAddr)
	}
}
