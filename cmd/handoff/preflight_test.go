package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/internal/pki"
)

// preflightFixture is a node gw1's material: its own certificate, gw2's,
// and a gw1 certificate from another CA, all with private keys 0600.
type preflightFixture struct {
	dir string
}

func newPreflightFixture(t *testing.T) preflightFixture {
	t.Helper()
	dir := t.TempDir()
	other := filepath.Join(dir, "other")
	for _, args := range [][]string{
		{"tls", "ca", "-out", dir},
		{"tls", "cert", "-ca", dir, "-node", "gw1", "-out", dir},
		{"tls", "cert", "-ca", dir, "-node", "gw2", "-out", dir},
		{"tls", "ca", "-out", other},
		{"tls", "cert", "-ca", other, "-node", "gw1", "-out", other},
		{"keygen", "-out", filepath.Join(dir, "cluster.key")},
		{"keygen", "-for", "api-token", "-out", filepath.Join(dir, "api.token")},
		{"keygen", "-for", "webhook-secret", "-out", filepath.Join(dir, "webhook.secret")},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), args, &out, &out); err != nil {
			t.Fatalf("handoff %v: %v\n%s", args, err, out.String())
		}
	}
	return preflightFixture{dir: dir}
}

func (p preflightFixture) path(name string) string { return filepath.Join(p.dir, name) }

// config writes gw1's configuration with the tls block and extra lines,
// in a 0600 file, and returns its path.
func (p preflightFixture) config(t *testing.T, cert, key, extra string) string {
	t.Helper()
	src := `node_id          = "gw1"
bind_addr        = "127.0.0.1:0"
advertise_addr   = "127.0.0.1:7946"
data_dir         = "` + p.path("data") + `"
cluster_key_file = "` + p.path("cluster.key") + `"
` + extra + `
tls {
  ca   = "` + p.path("ca.pem") + `"
  cert = "` + cert + `"
  key  = "` + key + `"
}
`
	path := filepath.Join(t.TempDir(), "gw1.hcl")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestValidateAndAgentRefuseTheSameMistakes: each mistake of issue 17's
// findings 5 and 6 (and the secret files of 7) is refused by `handoff
// validate` and by `handoff agent` alike, naming the key or flag, and the
// agent stops before Raft opens (no data directory).
func TestValidateAndAgentRefuseTheSameMistakes(t *testing.T) {
	p := newPreflightFixture(t)
	cert, key := p.path("gw1.pem"), p.path("gw1-key.pem")
	exposed := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(p.path(name))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o644); err != nil { // past the umask
			t.Fatal(err)
		}
		return path
	}
	inlineKey, err := os.ReadFile(p.path("cluster.key"))
	if err != nil {
		t.Fatal(err)
	}
	// retired: a configuration whose tls.deny_serials lists the node's own
	// certificate (an operator retired it and did not renew it).
	retired := func() string {
		t.Helper()
		path := p.config(t, cert, key, "")
		pemBytes, err := os.ReadFile(cert)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(pemBytes)
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		src = bytes.Replace(src, []byte("tls {\n"), []byte("tls {\n  deny_serials = [\""+pki.FormatSerial(c.SerialNumber)+"\"]\n"), 1)
		if err := os.WriteFile(path, src, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, c := range []struct {
		name  string
		cfg   string
		flags []string
		want  []string
	}{
		{"own certificate retired", retired(), nil,
			[]string{"tls.cert: ", "retired in tls.deny_serials"}},
		{"missing tls.cert", p.config(t, p.path("nowhere.pem"), key, ""), nil,
			[]string{"tls.cert: ", "no such file"}},
		{"certificate of another node", p.config(t, p.path("gw2.pem"), p.path("gw2-key.pem"), ""), nil,
			[]string{"tls.cert: ", `issued to node "gw2", but node_id is "gw1"`}},
		{"certificate from another CA", p.config(t, p.path("other/gw1.pem"), p.path("other/gw1-key.pem"), ""), nil,
			[]string{"tls.cert: ", "not signed by the cluster CA"}},
		{"certificate and key that do not match", p.config(t, cert, p.path("gw2-key.pem"), ""), nil,
			[]string{"tls.cert, tls.key: ", "not a certificate and its key"}},
		{"bind_addr port 99999", p.config(t, cert, key, ""), []string{"-bind", "127.0.0.1:99999"},
			[]string{"bind_addr: ", `port "99999"`}},
		{"advertise_addr port -1", p.config(t, cert, key, ""), []string{"-advertise", "127.0.0.1:-1"},
			[]string{"advertise_addr: ", `port "-1"`}},
		{"join port 70000", p.config(t, cert, key, `join = ["127.0.0.1:70000"]`), nil,
			[]string{"join[0]: ", `port "70000"`}},
		{"gcp endpoint over http", p.config(t, cert, key, "provider {\n  type = \"gcp\"\n  gcp {\n    endpoint = \"http://compute.example\"\n  }\n}"), nil,
			[]string{"provider.gcp: ", "endpoint", "not an https:// URL"}},
		{"aws endpoint over http", p.config(t, cert, key, "provider {\n  type = \"aws\"\n  aws {\n    endpoint = \"http://ec2.example\"\n  }\n}"), nil,
			[]string{"provider.aws: ", "endpoint", "not an https URL"}},
		{"tls.key readable by others", p.config(t, cert, exposed("gw1-key.pem"), ""), nil,
			[]string{"tls.key: ", "readable by others", "chmod 600"}},
		{"API token file readable by others", p.config(t, cert, key, ""), []string{"-api-token-file", exposed("api.token")},
			[]string{"-api-token-file: ", "readable by others"}},
		{"webhook secret file readable by others", p.config(t, cert, key, ""), []string{"-webhook-url", "https://hooks.example/x", "-webhook-secret-file", exposed("webhook.secret")},
			[]string{"-webhook-secret-file: ", "readable by others"}},
		{"API TLS key readable by others", p.config(t, cert, key, ""), []string{"-api-tls-cert", cert, "-api-tls-key", exposed("gw1-key.pem")},
			[]string{"-api-tls-key: ", "readable by others"}},
		{"API address port 70000", p.config(t, cert, key, ""), []string{"-api-addr", "127.0.0.1:70000"},
			[]string{"-api-addr: ", `port "70000"`}},
		// The same secrets named in the configuration's blocks.
		{"api.token_file readable by others", p.config(t, cert, key, "api {\n  token_file = \""+exposed("api.token")+"\"\n}"), nil,
			[]string{"api.token_file: ", "readable by others"}},
		{"api.tls_key readable by others", p.config(t, cert, key, "api {\n  tls_cert = \""+cert+"\"\n  tls_key = \""+exposed("gw1-key.pem")+"\"\n}"), nil,
			[]string{"api.tls_key: ", "readable by others"}},
		{"webhook.secret_file readable by others", p.config(t, cert, key, "webhook {\n  url = \"https://hooks.example/x\"\n  secret_file = \""+exposed("webhook.secret")+"\"\n}"), nil,
			[]string{"webhook.secret_file: ", "readable by others"}},
		{"webhook without a secret", p.config(t, cert, key, "webhook {\n  url = \"https://hooks.example/x\"\n}"), nil,
			[]string{"webhook.url: ", "needs a signing secret"}},
		{"api.addr port 70000", p.config(t, cert, key, "api {\n  addr = \"127.0.0.1:70000\"\n}"), nil,
			[]string{"gw1.hcl:7: api.addr: ", `port "70000"`}},
		{"notify program missing", p.config(t, cert, key, "notify {\n  active = [\""+p.path("nowhere.sh")+"\"]\n}"), nil,
			[]string{"notify.active: ", "no such file"}},
		// Issue 19: resources a provider does not move, refused naming the
		// key and the line.
		{"aws kind bogus", p.config(t, cert, key, provider("aws", "bogus", "x", "")), nil,
			[]string{"gw1.hcl:9: provider.resource[0].kind: ", `"bogus"`}},
		{"aws route not-a-route", p.config(t, cert, key, provider("aws", "route", "not-a-route", "")), nil,
			[]string{"gw1.hcl:10: provider.resource[0].id: ", `"rtb-<id>|<destination CIDR>"`}},
		{"aws eip without eip_private_ips", p.config(t, cert, key, provider("aws", "eip", "eipalloc-0a1b2c3d4e5f60718", "  aws {\n    region = \"eu-west-1\"\n  }\n")), nil,
			[]string{"gw1.hcl:10: provider.resource[0].id: ", "provider.aws.eip_private_ips"}},
		{"gcp kind teleporter", p.config(t, cert, key, provider("gcp", "teleporter", "x", "")), nil,
			[]string{"gw1.hcl:9: provider.resource[0].kind: ", `"teleporter"`}},
		{"linux vip not-an-ip", p.config(t, cert, key, provider("linux", "vip", "not-an-ip", "  linux {\n    interface = \"eth0\"\n  }\n")), nil,
			[]string{"gw1.hcl:10: provider.resource[0].id: ", `VIP "not-an-ip"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"-config", c.cfg}, c.flags...)
			for _, verb := range []string{"validate", "agent"} {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var out bytes.Buffer
				err := run(ctx, append([]string{verb}, args...), &out, &out)
				cancel()
				if err == nil {
					t.Fatalf("handoff %s accepted it:\n%s", verb, out.String())
				}
				for _, w := range c.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("handoff %s: %v\nwant it to say %q", verb, err, w)
					}
				}
			}
			if _, err := os.Stat(p.path("data")); !os.IsNotExist(err) {
				t.Errorf("the agent got as far as its data directory: %v", err)
			}
		})
	}

	// The inline cluster key in a config file others can read.
	src := strings.Replace(readFile(t, p.config(t, cert, key, "")), `cluster_key_file = "`+p.path("cluster.key")+`"`,
		`cluster_key = "`+strings.TrimSpace(string(inlineKey))+`"`, 1)
	world := filepath.Join(t.TempDir(), "world.hcl")
	if err := os.WriteFile(world, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"validate", "-config", world}, &out, &out); err != nil {
		t.Fatalf("validate of the inline key in a 0600 file: %v", err)
	}
	if err := os.Chmod(world, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"validate", "agent"} {
		// Bounded: an agent that accepted it would run until its context ends.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := run(ctx, []string{verb, "-config", world}, &out, &out)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "cluster_key: ") {
			t.Errorf("handoff %s with the inline key in a world-readable file: %v", verb, err)
		}
	}

	// And what is right passes validate, with every flag the agent takes.
	out.Reset()
	good := []string{"validate", "-config", p.config(t, cert, key, ""), "-api-token-file", p.path("api.token"),
		"-webhook-url", "https://hooks.example/x", "-webhook-secret-file", p.path("webhook.secret"),
		"-api-tls-cert", cert, "-api-tls-key", key, "-api-addr", "127.0.0.1:0", "-cpuprofile", ""}
	if err := run(context.Background(), good, &out, &out); err != nil || !strings.Contains(out.String(), "configuration valid: node gw1") {
		t.Errorf("validate of a good configuration: %v\n%s", err, out.String())
	}
}

// provider is a provider block (from line 6 of a fixture config: its
// resource's kind is on line 9, its id on line 10) with one resource.
func provider(typ, kind, id, settings string) string {
	return "provider {\n  type = \"" + typ + "\"\n  resource {\n    kind = \"" + kind + "\"\n    id   = \"" + id + "\"\n  }\n" + settings + "}"
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
