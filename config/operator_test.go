package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// load writes src to a private file named name and loads it as the agent
// does.
func load(t *testing.T, name, src string) (File, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(path)
}

const base = `node_id = "gw1"
advertise_addr = "192.0.2.11:7946"
cluster_key = "` + "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f" + `"
`

func TestOperatorBlocksInHCLAndYAML(t *testing.T) {
	hclSrc := base + `
api {
  addr       = "10.0.1.10:7950"
  token_file = "/etc/handoff/api.token"
  tls_cert   = "/etc/handoff/tls/node.pem"
  tls_key    = "/etc/handoff/tls/node-key.pem"
}
webhook {
  url         = "https://hooks.example/handoff"
  secret_file = "/etc/handoff/webhook.secret"
}
notify {
  active  = ["/usr/local/bin/vip-up", "eth0"]
  standby = ["/usr/local/bin/vip-down"]
  timeout = "5s"
}
`
	yamlSrc := strings.ReplaceAll(base, " = ", ": ") + `
api:
  addr: 10.0.1.10:7950
  token_file: /etc/handoff/api.token
  tls_cert: /etc/handoff/tls/node.pem
  tls_key: /etc/handoff/tls/node-key.pem
webhook:
  url: https://hooks.example/handoff
  secret_file: /etc/handoff/webhook.secret
notify:
  active: [/usr/local/bin/vip-up, eth0]
  standby: [/usr/local/bin/vip-down]
  timeout: 5s
`
	var got []*Config
	for name, src := range map[string]string{"gw1.hcl": hclSrc, "gw1.yaml": yamlSrc} {
		f, err := load(t, name, src)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c, err := Resolve(f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got = append(got, c)
	}
	for _, c := range got {
		if c.API != got[0].API || c.Webhook != got[0].Webhook || c.Notify.Timeout != 5*time.Second {
			t.Errorf("HCL and YAML differ: %+v %+v", c.API, c.Webhook)
		}
		if c.API.Addr != "10.0.1.10:7950" || c.API.TokenFile == "" || c.API.TLSKey == "" || c.Webhook.URL == "" || c.Webhook.SecretFile == "" {
			t.Errorf("api %+v webhook %+v", c.API, c.Webhook)
		}
		if !slices.Equal(c.Notify.Commands["active"], []string{"/usr/local/bin/vip-up", "eth0"}) || len(c.Notify.Commands) != 2 {
			t.Errorf("notify commands %v", c.Notify.Commands)
		}
	}
	// Defaults: the API on loopback, no webhook, no commands.
	f, err := Parse("x.hcl", []byte(base), "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Resolve(f)
	if err != nil {
		t.Fatal(err)
	}
	if c.API.Addr != "127.0.0.1:7950" || c.Webhook.URL != "" || len(c.Notify.Commands) != 0 || c.Notify.Timeout != 30*time.Second {
		t.Errorf("defaults: api %+v webhook %+v notify %+v", c.API, c.Webhook, c.Notify)
	}
}

func TestOperatorBlocksRefusedNamingKeyAndLine(t *testing.T) {
	for _, c := range []struct {
		name, src string
		want      []string
	}{
		{"api port", base + "api {\n  addr = \"10.0.1.10:70000\"\n}\n", []string{"gw1.hcl:5: api.addr: ", `port "70000"`}},
		{"api tls half", base + "api {\n  tls_cert = \"/x.pem\"\n}\n", []string{"gw1.hcl:5: api.tls_cert: "}},
		{"webhook url", base + "webhook {\n  url = \"ftp://hooks.example/x\"\n}\n", []string{"gw1.hcl:5: webhook.url: ", "http(s) URL"}},
		{"webhook secret alone", base + "webhook {\n  secret_file = \"/x\"\n}\n", []string{"gw1.hcl:5: webhook.secret_file: ", "without webhook.url"}},
		{"notify relative", base + "notify {\n  fenced = [\"vip-down\"]\n}\n", []string{"gw1.hcl:5: notify.fenced: ", "not an absolute path"}},
		{"notify timeout", base + "notify {\n  timeout = \"soon\"\n}\n", []string{"gw1.hcl:5: notify.timeout: "}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := load(t, "gw1.hcl", c.src)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Resolve(f)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v\nwant it to say %q", err, w)
				}
			}
		})
	}
}

// TestResourcesCheckedPerProvider: each provider's kinds and ID forms are
// checked when the configuration resolves, so that validate and the agent
// refuse what the first failover would; the error names the key and, from
// a file, its line.
func TestResourcesCheckedPerProvider(t *testing.T) {
	resource := func(typ, kind, id, settings string) string {
		return base + "provider {\n  type = \"" + typ + "\"\n  resource {\n    kind = \"" + kind + "\"\n    id   = \"" + id + "\"\n  }\n" + settings + "}\n"
	}
	linux := "  linux {\n    interface = \"eth0\"\n  }\n"
	for _, c := range []struct {
		name, src string
		want      []string
	}{
		{"aws kind bogus", resource("aws", "bogus", "x", ""), []string{"gw1.hcl:7: provider.resource[0].kind: ", `"bogus"`, "aws moves"}},
		{"aws route not-a-route", resource("aws", "route", "not-a-route", ""), []string{"gw1.hcl:8: provider.resource[0].id: ", `"rtb-<id>|<destination CIDR>"`}},
		{"aws eip without eip_private_ips", resource("aws", "eip", "eipalloc-0a1b2c3d4e5f60718", ""), []string{"gw1.hcl:8: provider.resource[0].id: ", "provider.aws.eip_private_ips"}},
		{"gcp kind teleporter", resource("gcp", "teleporter", "x", ""), []string{"gw1.hcl:7: provider.resource[0].kind: ", `"teleporter"`}},
		{"linux vip not-an-ip", resource("linux", "vip", "not-an-ip", linux), []string{"gw1.hcl:8: provider.resource[0].id: ", `VIP "not-an-ip"`}},
		{"azure kind eip", resource("azure", "eip", "x", ""), []string{"gw1.hcl:7: provider.resource[0].kind: "}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := load(t, "gw1.hcl", c.src)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Resolve(f)
			if err == nil {
				t.Fatalf("accepted:\n%s", c.src)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v\nwant it to say %q", err, w)
				}
			}
		})
	}
	// YAML gives lines too, under the HCL key names.
	y := strings.ReplaceAll(base, " = ", ": ") + "provider:\n  type: aws\n  resources:\n    - kind: eip\n      id: eipalloc-1\n    - kind: route\n      id: not-a-route\n"
	f, err := load(t, "gw1.yaml", y)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Resolve(f)
	for _, w := range []string{"gw1.yaml:8: provider.resource[0].id: ", "gw1.yaml:10: provider.resource[1].id: "} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("%v\nwant it to say %q", err, w)
		}
	}
}

func TestGatewayThatMovesOrCarriesNothingIsWarned(t *testing.T) {
	f, err := load(t, "gw1.hcl", base)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Resolve(f)
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(c.Warnings, "\n")
	if len(c.Warnings) != 2 || !strings.Contains(w, "provider.resource: none") || !strings.Contains(w, `dataplane.type: "memory" carries no tunnels`) {
		t.Errorf("warnings = %q", c.Warnings)
	}
	f.Role = "witness"
	if c, err = Resolve(f); err != nil || len(c.Warnings) != 0 {
		t.Errorf("a witness is warned: %q, %v", c.Warnings, err)
	}
}

// TestFlagOverridesForgetTheFilesLine: a value from a flag is not reported
// at the line of the value it replaced.
func TestFlagOverridesForgetTheFilesLine(t *testing.T) {
	f, err := load(t, "gw1.hcl", base+"bind_addr = \"10.0.1.10:7946\"\n")
	if err != nil {
		t.Fatal(err)
	}
	Merge(&f, File{BindAddr: "10.0.1.10:99999"})
	_, err = Resolve(f)
	if err == nil || !strings.Contains(err.Error(), "\n  bind_addr: ") {
		t.Errorf("err = %v, want bind_addr without the file's line", err)
	}
}
