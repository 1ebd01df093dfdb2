package terraform_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
	"go.yaml.in/yaml/v3"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/providers/aws"
	"github.com/handoffvpn/handoff/providers/azure"
	"github.com/handoffvpn/handoff/providers/gcp"
	"github.com/handoffvpn/handoff/terraform"
)

const (
	unitPath      = "files/handoff.service"
	cloudInitPath = "files/cloud-init.yaml.tftpl"
)

// templateFuncs are the Terraform functions the templates call, with
// Terraform's semantics.
var templateFuncs = map[string]function.Function{
	"length":     stdlib.LengthFunc,
	"jsonencode": stdlib.JSONEncodeFunc,
	"base64encode": function.New(&function.Spec{
		Params: []function.Parameter{{Name: "str", Type: cty.String}},
		Type:   function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			return cty.StringVal(base64.StdEncoding.EncodeToString([]byte(args[0].AsString()))), nil
		},
	}),
}

// render evaluates a template file as Terraform's templatefile does.
func render(t *testing.T, path string, vars map[string]cty.Value) string {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	expr, diags := hclsyntax.ParseTemplate(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("parsing %s: %v", path, diags)
	}
	v, diags := expr.Value(&hcl.EvalContext{Variables: vars, Functions: templateFuncs})
	if diags.HasErrors() {
		t.Fatalf("rendering %s: %v", path, diags)
	}
	return v.AsString()
}

// TestTemplateCallsPassExactlyTheTemplatesVariables: every templatefile
// call in the modules hands its template exactly the variables it uses, so
// what the tests below render is what Terraform renders.
func TestTemplateCallsPassExactlyTheTemplatesVariables(t *testing.T) {
	for _, cloud := range terraform.Clouds {
		m, err := terraform.LoadModule(filepath.Join("modules", cloud))
		if err != nil {
			t.Fatal(err)
		}
		calls, err := m.TemplateCalls()
		if err != nil {
			t.Fatal(err)
		}
		var templates []string
		for _, c := range calls {
			templates = append(templates, c.Template)
			src, err := os.ReadFile(c.Template)
			if err != nil {
				t.Fatalf("%s: local.%s: %v", cloud, c.Local, err)
			}
			expr, diags := hclsyntax.ParseTemplate(src, c.Template, hcl.InitialPos)
			if diags.HasErrors() {
				t.Fatalf("%s: %v", c.Template, diags)
			}
			var used []string
			for _, tr := range expr.Variables() {
				used = append(used, tr.RootName())
			}
			slices.Sort(used)
			used = slices.Compact(used)
			if !slices.Equal(used, c.Vars) {
				t.Errorf("%s local.%s passes %v to %s, which uses %v", cloud, c.Local, c.Vars, c.Template, used)
			}
		}
		slices.Sort(templates)
		want := []string{cloudInitPath, filepath.Join("modules", cloud, "templates/handoff.hcl.tftpl")}
		slices.Sort(want)
		if !slices.Equal(templates, want) {
			t.Errorf("%s renders %v, want %v", cloud, templates, want)
		}
	}
}

// fleetPKI is real key material for the nodes, made as `handoff tls` does.
type fleetPKI struct {
	ca         string
	certs      map[string][2]string // node -> cert, key
	clusterKey string
}

func newPKI(t *testing.T, nodes []string) fleetPKI {
	t.Helper()
	ca, err := pki.NewCA("test cluster CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := fleetPKI{ca: string(ca.PEM), certs: map[string][2]string{}, clusterKey: strings.Repeat("ab", 32) + "\n"}
	for _, n := range nodes {
		nc, err := ca.Issue(n, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f.certs[n] = [2]string{string(nc.CertPEM), string(nc.KeyPEM)}
	}
	return f
}

func strs(s ...string) cty.Value {
	if len(s) == 0 {
		return cty.ListValEmpty(cty.String)
	}
	var vs []cty.Value
	for _, x := range s {
		vs = append(vs, cty.StringVal(x))
	}
	return cty.ListVal(vs)
}

func resources(kv ...string) cty.Value {
	var vs []cty.Value
	for i := 0; i < len(kv); i += 2 {
		vs = append(vs, cty.ObjectVal(map[string]cty.Value{"kind": cty.StringVal(kv[i]), "id": cty.StringVal(kv[i+1])}))
	}
	return cty.TupleVal(vs)
}

// cloudVars are each cloud's own template inputs, as its module computes
// them for a two-gateway fleet.
var cloudVars = map[string]map[string]cty.Value{
	"aws": {
		"resources":       resources("eip", "eipalloc-0a1b2c3d4e5f60718", "route", "rtb-0123456789abcdef0|100.64.0.0/16"),
		"region":          cty.StringVal("eu-west-1"),
		"eip_private_ips": cty.ObjectVal(map[string]cty.Value{"eipalloc-0a1b2c3d4e5f60718": cty.StringVal("10.0.1.100")}),
	},
	"gcp": {
		"resources": resources("forwarding_rule", "europe-west1/vpn-vpn-udp", "forwarding_rule", "europe-west1/vpn-vpn-esp",
			"route", "vpc/100.64.0.0/16"),
		"region":         cty.StringVal("europe-west1"),
		"route_next_hop": cty.StringVal("instance"),
		"alias_zones":    strs("europe-west1-b", "europe-west1-c"),
	},
	"azure": {
		"resources":                  resources("public_ip", "rg-vpn/vpn-vpn", "route", "rg-vpn/rt-inside/vpn-100.64.0.0_16"),
		"resource_group":             cty.StringVal("rg-vpn"),
		"managed_identity_client_id": cty.StringVal("00000000-0000-0000-0000-0000000000c1"),
		"network_interface":          cty.StringVal("rg-vpn/vpn-gw1"),
	},
}

var (
	nodeIDs = []string{"gw1", "gw2", "witness"}
	nodeIPs = map[string]string{"gw1": "10.0.1.10", "gw2": "10.0.1.11", "witness": "10.0.2.20"}
)

// operatorVars are a node's operator-surface inputs as its module computes
// them: gw1 and the witness with the API on their private address over
// TLS, a token and webhooks (gw1 with notify commands and their script),
// gw2 with none of it, so that every branch of the templates is rendered.
type operatorVars struct {
	apiAddr                   string
	apiTLS                    bool
	apiToken                  string
	webhookURL, webhookSecret string
	notify                    map[string][]string
	notifyScript              string
}

const (
	testToken         = "0123456789abcdef0123456789abcdef"
	testWebhookURL    = "https://hooks.example.com/services/T0/B0/x"
	testWebhookSecret = "fedcba9876543210fedcba9876543210"
)

func operatorOf(node string) operatorVars {
	switch node {
	case "gw2":
		return operatorVars{apiAddr: "127.0.0.1:7950"}
	case "witness":
		return operatorVars{apiAddr: nodeIPs[node] + ":7950", apiTLS: true, apiToken: testToken,
			webhookURL: testWebhookURL, webhookSecret: testWebhookSecret}
	}
	return operatorVars{apiAddr: nodeIPs[node] + ":7950", apiTLS: true, apiToken: testToken,
		webhookURL: testWebhookURL, webhookSecret: testWebhookSecret,
		notify:       map[string][]string{"active": {"/usr/local/sbin/handoff-notify", "active"}, "faulty": {"/usr/local/sbin/handoff-notify", "faulty", "a \"quoted\" arg"}},
		notifyScript: "#!/bin/sh\nlogger -t handoff-notify \"$HANDOFF_NOTIFY_STATE\"\n"}
}

func notifyValue(n map[string][]string) cty.Value {
	if len(n) == 0 {
		return cty.MapValEmpty(cty.List(cty.String))
	}
	m := map[string]cty.Value{}
	for k, v := range n {
		m[k] = strs(v...)
	}
	return cty.MapVal(m)
}

// renderNode renders a node's agent configuration and cloud-init as the
// cloud's module does.
func renderNode(t *testing.T, cloud, node string, keys fleetPKI) (configText, cloudInit string) {
	t.Helper()
	role := "gateway"
	if node == "witness" {
		role = "witness"
	}
	op := operatorOf(node)
	var join []string
	if node != "gw1" {
		for _, o := range nodeIDs {
			if o != node {
				join = append(join, nodeIPs[o]+":7946")
			}
		}
	}
	vars := map[string]cty.Value{
		"node_id":              cty.StringVal(node),
		"role":                 cty.StringVal(role),
		"priority":             cty.NumberIntVal(int64(100 - slices.Index(nodeIDs, node))),
		"bind_addr":            cty.StringVal(nodeIPs[node] + ":7946"),
		"bootstrap":            cty.BoolVal(node == "gw1"),
		"join":                 strs(join...),
		"allowed_nodes":        strs(nodeIDs...),
		"log_level":            cty.StringVal("info"),
		"log_format":           cty.StringVal("json"),
		"heartbeat_timeout":    cty.StringVal("150ms"),
		"election_timeout":     cty.StringVal("150ms"),
		"leader_lease_timeout": cty.StringVal("50ms"),
		"dataplane":            cty.StringVal("strongswan"),
		"ike_continuity":       cty.BoolVal(role == "gateway"),
		"api_addr":             cty.StringVal(op.apiAddr),
		"api_tls":              cty.BoolVal(op.apiTLS),
		"has_api_token":        cty.BoolVal(op.apiToken != ""),
		"webhook_url":          cty.StringVal(op.webhookURL),
		"notify":               notifyValue(op.notify),
		"notify_timeout":       cty.StringVal("30s"),
	}
	for k, v := range cloudVars[cloud] {
		vars[k] = v
	}
	configText = render(t, filepath.Join("modules", cloud, "templates/handoff.hcl.tftpl"), vars)
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	packages := strs("curl")
	swanctl, vips := "", strs()
	if role == "gateway" {
		packages = strs("curl", "strongswan-swanctl", "charon-systemd", "libcharon-extra-plugins")
		swanctl = "connections {}\n"
		if cloud != "azure" {
			vips = strs("203.0.113.100/32")
		}
	}
	cloudInit = render(t, cloudInitPath, map[string]cty.Value{
		"node_id":        cty.StringVal(node),
		"role":           cty.StringVal(role),
		"packages":       packages,
		"config":         cty.StringVal(configText),
		"cluster_key":    cty.StringVal(keys.clusterKey),
		"ca_pem":         cty.StringVal(keys.ca),
		"cert_pem":       cty.StringVal(keys.certs[node][0]),
		"key_pem":        cty.StringVal(keys.certs[node][1]),
		"unit":           cty.StringVal(string(unit)),
		"swanctl_conf":   cty.StringVal(swanctl),
		"ike_continuity": cty.BoolVal(role == "gateway"),
		"api_token":      cty.StringVal(op.apiToken),
		"webhook_secret": cty.StringVal(op.webhookSecret),
		"notify_script":  cty.StringVal(op.notifyScript),
		"local_vips":     vips,
		"handoff_url":    cty.StringVal("https://downloads.example.com/handoff-linux-amd64"),
		"handoff_sha256": cty.StringVal(strings.Repeat("0", 64)),
	})
	return configText, cloudInit
}

// cloudConfig is the part of #cloud-config the modules write.
type cloudConfig struct {
	Packages   []string `yaml:"packages"`
	WriteFiles []struct {
		Path        string `yaml:"path"`
		Owner       string `yaml:"owner"`
		Permissions string `yaml:"permissions"`
		Encoding    string `yaml:"encoding"`
		Content     string `yaml:"content"`
	} `yaml:"write_files"`
	Runcmd [][]string `yaml:"runcmd"`
}

// materialize parses the cloud-init document and writes its files under
// root with their modes, as cloud-init would on the node.
func materialize(t *testing.T, doc, root string) (cloudConfig, map[string][]byte) {
	t.Helper()
	if !strings.HasPrefix(doc, "#cloud-config\n") {
		t.Fatalf("cloud-init does not start with #cloud-config:\n%s", doc)
	}
	var cc cloudConfig
	dec := yaml.NewDecoder(strings.NewReader(doc))
	if err := dec.Decode(&cc); err != nil {
		t.Fatalf("cloud-init is not YAML: %v\n%s", err, doc)
	}
	files := map[string][]byte{}
	for _, f := range cc.WriteFiles {
		data := []byte(f.Content)
		if f.Encoding == "b64" {
			var err error
			if data, err = base64.StdEncoding.DecodeString(f.Content); err != nil {
				t.Fatalf("%s: %v", f.Path, err)
			}
		}
		var mode uint32
		if _, err := fmt.Sscanf(f.Permissions, "%o", &mode); err != nil || f.Owner != "root:root" {
			t.Fatalf("%s: permissions %q owner %q", f.Path, f.Permissions, f.Owner)
		}
		dst := filepath.Join(root, f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dst, os.FileMode(mode)); err != nil { // past the umask
			t.Fatal(err)
		}
		files[f.Path] = data
	}
	return cc, files
}

// TestRenderedNodesAreValid renders every node of every cloud, writes what
// cloud-init would write, and checks it with the agent's own code: the
// configuration resolves, its provider block is the cloud's, the key
// material loads and names the node, and every secret is mode 0600.
func TestRenderedNodesAreValid(t *testing.T) {
	keys := newPKI(t, nodeIDs)
	for _, cloud := range terraform.Clouds {
		for _, node := range nodeIDs {
			t.Run(cloud+"/"+node, func(t *testing.T) {
				cfgText, doc := renderNode(t, cloud, node, keys)
				root := t.TempDir()
				cc, files := materialize(t, doc, root)

				for _, p := range []string{"/etc/handoff/handoff.hcl", "/etc/handoff/cluster.key", "/etc/handoff/tls/node-key.pem", "/etc/handoff/tls/node.pem", "/etc/handoff/tls/ca.pem"} {
					st, err := os.Stat(filepath.Join(root, p))
					if err != nil {
						t.Fatalf("cloud-init does not write %s", p)
					}
					if st.Mode().Perm() != 0o600 {
						t.Errorf("%s has mode %v, want 0600", p, st.Mode().Perm())
					}
				}
				op := operatorOf(node)
				for path, want := range map[string]string{"/etc/handoff/api.token": op.apiToken, "/etc/handoff/webhook.secret": op.webhookSecret} {
					got, written := files[path]
					if written != (want != "") || written && string(got) != want+"\n" {
						t.Errorf("%s = %q (written: %v), want %q", path, got, written, want)
					}
					if written {
						if st, err := os.Stat(filepath.Join(root, path)); err != nil {
							t.Error(err)
						} else if st.Mode().Perm() != 0o600 {
							t.Errorf("%s has mode %v, want 0600", path, st.Mode().Perm())
						}
					}
				}
				if _, ok := files["/etc/handoff/agent.env"]; ok {
					t.Error("cloud-init still writes the API token into agent.env")
				}
				if script, ok := files["/usr/local/sbin/handoff-notify"]; ok != (op.notifyScript != "") || ok && string(script) != op.notifyScript {
					t.Errorf("handoff-notify = %q (written: %v), want %q", script, ok, op.notifyScript)
				} else if ok {
					if st, err := os.Stat(filepath.Join(root, "/usr/local/sbin/handoff-notify")); err != nil || st.Mode().Perm() != 0o755 {
						t.Errorf("handoff-notify: %v, %v; want mode 0755", st.Mode(), err)
					}
				}
				if string(files["/etc/handoff/handoff.hcl"]) != cfgText {
					t.Fatal("the config cloud-init writes is not the rendered one")
				}
				unit, err := os.ReadFile(unitPath)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(files["/etc/systemd/system/handoff.service"], unit) {
					t.Error("cloud-init does not install terraform/files/handoff.service as handoff.service")
				}
				if len(cc.Runcmd) != 1 || !slices.Equal(cc.Runcmd[0], []string{"/usr/local/sbin/handoff-bootstrap"}) {
					t.Errorf("runcmd = %v", cc.Runcmd)
				}
				gateway := node != "witness"
				if slices.Contains(cc.Packages, "strongswan-swanctl") != gateway || slices.Contains(cc.Packages, "charon-systemd") != gateway {
					t.Errorf("packages %v for a %s", cc.Packages, node)
				}

				// The agent reads the files where cloud-init put them.
				local := strings.ReplaceAll(cfgText, "\"/etc/handoff/", "\""+root+"/etc/handoff/")
				f, err := config.Parse("handoff.hcl", []byte(local), "hcl")
				if err != nil {
					t.Fatalf("%v\n%s", err, cfgText)
				}
				out := config.Defaults()
				config.Merge(&out, f)
				c, err := config.Resolve(out)
				if err != nil {
					t.Fatalf("%v\n%s", err, cfgText)
				}
				mat, err := pki.Load(c.TLS.CA, c.TLS.Cert, c.TLS.Key)
				if err != nil {
					t.Fatal(err)
				}
				if mat.NodeID != node || c.NodeID != node {
					t.Errorf("certificate names %q, node_id %q, want %q", mat.NodeID, c.NodeID, node)
				}
				if !slices.Equal(c.TLS.AllowedNodes, nodeIDs) || c.Bootstrap != (node == "gw1") || c.BindAddr != nodeIPs[node]+":7946" {
					t.Errorf("allowed %v bootstrap %v bind %s", c.TLS.AllowedNodes, c.Bootstrap, c.BindAddr)
				}
				if (node == "gw1") != (len(c.Join) == 0) {
					t.Errorf("join = %v", c.Join)
				}
				// The operator surface's settings reach the agent's config.
				wantAPI := config.APIBlock{Addr: op.apiAddr}
				if op.apiToken != "" {
					wantAPI.TokenFile = root + "/etc/handoff/api.token"
				}
				if op.apiTLS {
					wantAPI.TLSCert, wantAPI.TLSKey = c.TLS.Cert, c.TLS.Key
				}
				if c.API != wantAPI {
					t.Errorf("api = %+v, want %+v", c.API, wantAPI)
				}
				wantHook := config.WebhookBlock{}
				if op.webhookURL != "" {
					wantHook = config.WebhookBlock{URL: op.webhookURL, SecretFile: root + "/etc/handoff/webhook.secret"}
				}
				if c.Webhook != wantHook {
					t.Errorf("webhook = %+v, want %+v", c.Webhook, wantHook)
				}
				if len(c.Notify.Commands) != len(op.notify) {
					t.Errorf("notify = %v, want %v", c.Notify.Commands, op.notify)
				}
				for state, argv := range op.notify {
					if !slices.Equal(c.Notify.Commands[state], argv) {
						t.Errorf("notify.%s = %q, want %q", state, c.Notify.Commands[state], argv)
					}
				}
				// And pass the agent's own preflight where cloud-init put
				// them (token, secret and TLS key private, the notify
				// program executable).
				localCfg := filepath.Join(root, "local.hcl")
				local = strings.ReplaceAll(local, `"/usr/local/sbin/`, `"`+root+`/usr/local/sbin/`)
				if err := os.WriteFile(localCfg, []byte(local), 0o600); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command(handoffBinary(t), "validate", "-config", localCfg).CombinedOutput(); err != nil {
					t.Errorf("handoff validate of the rendered %s: %v\n%s", node, err, out)
				}
				if !gateway {
					if _, ok := files["/etc/strongswan.d/charon/ha.conf"]; ok || c.HAListen.IsValid() {
						t.Error("the witness is given IKE continuity")
					}
					if c.Role != "witness" || c.ProviderType != "memory" || len(c.Resources) != 0 || c.DataplaneType != "memory" {
						t.Errorf("witness: role %s provider %s resources %v dataplane %s", c.Role, c.ProviderType, c.Resources, c.DataplaneType)
					}
					return
				}
				if c.Role != "gateway" || c.ProviderType != cloud || c.DataplaneType != "strongswan" {
					t.Errorf("role %s provider %s dataplane %s", c.Role, c.ProviderType, c.DataplaneType)
				}
				// IKE continuity: the agent is charon's ha peer, and charon
				// loads the plugin with the settings that match it.
				if c.HAListen.String() != "127.0.0.2:4510" || c.HACharon.String() != "127.0.0.1:4510" {
					t.Errorf("ha channel %v → %v, want 127.0.0.2:4510 → 127.0.0.1:4510", c.HAListen, c.HACharon)
				}
				ha := string(files["/etc/strongswan.d/charon/ha.conf"])
				for _, want := range []string{"load = yes", "local = 127.0.0.1", "remote = 127.0.0.2", "monitor = no", "resync = yes", "segment_count = 1"} {
					if !strings.Contains(ha, want) {
						t.Errorf("ha.conf lacks %q:\n%s", want, ha)
					}
				}
				if !slices.Contains(cc.Packages, "libcharon-extra-plugins") {
					t.Errorf("packages %v: the ha plugin's package is missing", cc.Packages)
				}
				if want := cloudVars[cloud]["resources"].LengthInt(); len(c.Resources) != want {
					t.Errorf("%d resources, want %d", len(c.Resources), want)
				}
				switch s := c.ProviderSettings.(type) {
				case *aws.Settings:
					if s.Region != "eu-west-1" || s.EIPPrivateIPs["eipalloc-0a1b2c3d4e5f60718"] != "10.0.1.100" {
						t.Errorf("aws settings %+v", s)
					}
				case *gcp.Settings:
					if s.Region != "europe-west1" || s.RouteNextHop != "instance" || len(s.AliasZones) != 2 {
						t.Errorf("gcp settings %+v", s)
					}
				case *azure.Settings:
					if s.Credential != "managed_identity" || s.ResourceGroup != "rg-vpn" || s.ManagedIdentityClientID == "" {
						t.Errorf("azure settings %+v", s)
					}
				default:
					t.Errorf("provider settings are %T", s)
				}
			})
		}
	}
}

// unitFile is a parsed systemd unit: section -> key -> values.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: bad line %q", path, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s appears %d times", section, key, len(v))
	}
	return v[0]
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// handoffBinary builds cmd/handoff once per test run.
func handoffBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "handoff-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "handoff")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", binPath, "../cmd/handoff").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/handoff: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// TestUnitMatchesTheBinaryAndCloudInit checks the systemd unit against
// what the binary accepts and what cloud-init installs: the program path
// is where the bootstrap installs it, the flags are the agent's, the
// config path is the file cloud-init writes, and the agent started with
// exactly those arguments runs on the rendered files and stops cleanly on
// the unit's kill signal.
func TestUnitMatchesTheBinaryAndCloudInit(t *testing.T) {
	u := parseUnit(t, unitPath)
	exec0 := strings.Fields(u.one(t, "Service", "ExecStart"))
	if len(exec0) < 2 || exec0[1] != "agent" {
		t.Fatalf("ExecStart = %v, want the agent command", exec0)
	}
	if got := u.one(t, "Service", "Type"); got != "simple" {
		t.Errorf("Type=%s", got)
	}
	if got := u.one(t, "Service", "Restart"); got != "always" {
		t.Errorf("Restart=%s", got)
	}
	if got := u.one(t, "Service", "KillSignal"); got != "SIGTERM" {
		t.Errorf("KillSignal=%s", got)
	}
	after := strings.Fields(strings.Join(u["Unit"]["After"], " "))
	for _, want := range []string{"strongswan.service", "network-online.target"} {
		if !slices.Contains(after, want) {
			t.Errorf("After= lacks %s", want)
		}
	}
	if got := u.one(t, "Service", "EnvironmentFile"); got != "-/etc/handoff/agent.env" {
		t.Errorf("EnvironmentFile=%s, want the optional file for HANDOFF_* settings", got)
	}
	for k, want := range map[string]string{"NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"CapabilityBoundingSet": "CAP_NET_ADMIN CAP_NET_RAW", "ReadWritePaths": "/var/lib/handoff"} {
		if got := u.one(t, "Service", k); got != want {
			t.Errorf("%s=%s, want %s", k, got, want)
		}
	}
	// Reload only once the agent handles SIGHUP: systemd's default action
	// for it would otherwise kill the agent.
	mainSrc, err := os.ReadFile("../cmd/handoff/main.go")
	if err != nil {
		t.Fatal(err)
	}
	if hup := bytes.Contains(mainSrc, []byte("SIGHUP")); hup != (len(u["Service"]["ExecReload"]) > 0) {
		t.Errorf("ExecReload %v but the agent handles SIGHUP: %v", u["Service"]["ExecReload"], hup)
	}

	keys := newPKI(t, nodeIDs)
	cfgText, doc := renderNode(t, "aws", "witness", keys)
	root := t.TempDir()
	_, files := materialize(t, doc, root)
	script := string(files["/usr/local/sbin/handoff-bootstrap"])
	if !strings.Contains(script, "set -eu") {
		t.Error("the bootstrap script does not stop at the first failure")
	}
	if !strings.Contains(script, "install -m 0755 /root/handoff.download "+exec0[0]+"\n") {
		t.Errorf("the bootstrap script does not install the binary at %s:\n%s", exec0[0], script)
	}
	cfgIdx := slices.Index(exec0, "-config")
	if cfgIdx < 0 || cfgIdx+1 >= len(exec0) {
		t.Fatalf("ExecStart has no -config: %v", exec0)
	}
	cfgPath := exec0[cfgIdx+1]
	if string(files[cfgPath]) != cfgText {
		t.Fatalf("ExecStart reads %s, which cloud-init does not write", cfgPath)
	}
	if !strings.Contains(script, exec0[0]+" validate -config "+cfgPath+"\n") {
		t.Errorf("the bootstrap script does not validate %s before starting the agent", cfgPath)
	}
	data := u.one(t, "Service", "ReadWritePaths")
	if !strings.Contains(cfgText, `data_dir  = "`+data+`"`) {
		t.Errorf("the config's data_dir is not the unit's writable %s", data)
	}

	bin := handoffBinary(t)
	help, _ := exec.Command(bin, "agent", "-h").CombinedOutput()
	for _, a := range exec0[2:] {
		if strings.HasPrefix(a, "-") && !strings.Contains(string(help), "  "+a+" ") {
			t.Errorf("ExecStart passes %s, which `handoff agent` does not accept:\n%s", a, help)
		}
	}

	// Run the agent with ExecStart's arguments on the files cloud-init
	// wrote, with the paths moved under root and a loopback port.
	local := strings.ReplaceAll(cfgText, "\"/etc/handoff/", "\""+root+"/etc/handoff/")
	local = strings.ReplaceAll(local, `"`+data+`"`, `"`+filepath.Join(root, "data")+`"`)
	local = strings.ReplaceAll(local, nodeIPs["witness"]+":7946", "127.0.0.1:0")
	// The API on the private address, as rendered, moved to loopback.
	if !strings.Contains(local, `addr = "`+nodeIPs["witness"]+`:7950"`) {
		t.Fatalf("the witness's API is not rendered on its private address:\n%s", local)
	}
	local = strings.ReplaceAll(local, nodeIPs["witness"]+":7950", "127.0.0.1:0")
	local = strings.ReplaceAll(local, `join      = [`, `join      = [] # `)
	localCfg := filepath.Join(root, cfgPath)
	if err := os.WriteFile(localCfg, []byte(local), 0o600); err != nil {
		t.Fatal(err)
	}
	args := slices.Clone(exec0[1:])
	args[cfgIdx] = localCfg
	out, err := exec.Command(bin, append([]string{"validate"}, args[1:]...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "configuration valid: node witness (witness") {
		t.Fatalf("handoff validate %v: %v\n%s", args[1:], err, out)
	}
	var logs syncBuffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(logs.String(), "agent running") {
		select {
		case err := <-done:
			t.Fatalf("the agent exited: %v\n%s", err, logs.String())
		case <-deadline:
			cmd.Process.Kill()
			<-done
			t.Fatalf("the agent did not start in 10 s:\n%s", logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	checkServedAPI(t, logs.String(), keys)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the agent did not stop cleanly on SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the agent ignored SIGTERM for 10 s:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), strings.TrimSpace(keys.clusterKey)) {
		t.Error("the agent logged the cluster key")
	}
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestUnitVerifies runs systemd's own checker on the unit.
func TestUnitVerifies(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("SKIP: systemd-analyze is not installed")
	}
	out, _ := exec.Command(sa, "verify", unitPath).CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// The binary is installed at first boot, not on this machine.
		if line == "" || strings.Contains(line, "/usr/local/bin/handoff is not executable") {
			continue
		}
		t.Errorf("systemd-analyze verify: %s", line)
	}
}

// checkServedAPI finds the URL the agent's API listens on in its (JSON)
// log and reads /v1/status and /metrics over HTTPS, verifying the node's
// certificate with the cluster CA and the node ID as the server name, with
// the token cloud-init wrote: what Prometheus and an operator do.
func checkServedAPI(t *testing.T, logs string, keys fleetPKI) {
	t.Helper()
	var url string
	for _, line := range strings.Split(logs, "\n") {
		var rec struct{ Msg, URL string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "API listening" {
			url = rec.URL
		}
	}
	if !strings.HasPrefix(url, "https://127.0.0.1:") {
		t.Fatalf("the agent's API does not listen over HTTPS where its config says (url %q):\n%s", url, logs)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(keys.ca))
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "witness", MinVersion: tls.VersionTLS12}}}
	for path, want := range map[string]string{"/v1/status": `"node": "witness"`, "/metrics": "handoff_"} {
		req, err := http.NewRequest(http.MethodGet, url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %s, want 200 and %q:\n%.300s", path, resp.Status, want, body)
		}
	}
}
