package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/providers/aws"
	"github.com/handoffvpn/handoff/providers/gcp"
)

// private copies a testdata file (git keeps it 0644) to a file only its
// owner may read, as a file with an inline cluster_key must be.
func private(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), filepath.Base(name))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestHCLAndYAMLAgree(t *testing.T) {
	var got []*Config
	for _, name := range []string{"testdata/gw1.hcl", "testdata/gw1.yaml"} {
		f, err := Load(private(t, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c, err := Resolve(f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got = append(got, c)
	}
	if !reflect.DeepEqual(got[0], got[1]) {
		t.Fatalf("HCL and YAML differ:\n hcl %+v\nyaml %+v", got[0], got[1])
	}
	c := got[0]
	if len(c.TLS.DenySerials) != 1 {
		t.Errorf("tls.deny_serials = %v", c.TLS.DenySerials)
	}
	if c.Priority != 120 || c.Heartbeat != 100*time.Millisecond || c.LeaderLease != 30*time.Millisecond ||
		c.BatchWindow != 2*time.Millisecond || len(c.Resources) != 2 || len(c.Join) != 2 || len(c.ClusterKey) != 32 {
		t.Errorf("file values not applied: %+v", c)
	}
	// Defaults fill what the file leaves out.
	if c.ClaimTimeout != 20*time.Second || c.MaxBatch != 256 || c.Role != "gateway" || c.DataplaneType != "memory" {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func TestUnknownKeysRejected(t *testing.T) {
	for name, src := range map[string]string{
		"x.hcl":  "node_id = \"a\"\nnode_idd = \"b\"\n",
		"x.yaml": "node_id: a\nraft:\n  heartbeat: 1s\n",
	} {
		_, err := Parse(name, []byte(src), "")
		if err == nil {
			t.Errorf("%s: unknown key accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), "node_idd") && !strings.Contains(err.Error(), "heartbeat") {
			t.Errorf("%s: error does not name the key: %v", name, err)
		}
	}
}

func TestValidationNamesEveryBadKey(t *testing.T) {
	f := File{NodeID: "has space", Role: "boss", BindAddr: "nohost", ClusterKey: "abc",
		Raft:        &RaftBlock{HeartbeatTimeout: "fast", LeaderLeaseTimeout: "2s"},
		Replication: &ReplicationBlock{MaxBatch: ptr(0)},
		Provider:    &ProviderBlock{Type: "ibm", Resources: []ResourceBlock{{Kind: "eip"}}},
		Dataplane:   &DataplaneBlock{Type: "vpp"}, TLS: &TLSBlock{DenySerials: []string{"not a serial"}}}
	_, err := Resolve(f)
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, key := range []string{"node_id", "role", "bind_addr", "cluster_key", "raft.heartbeat_timeout",
		"replication.max_batch", "provider.type", "provider.resource[0]", "dataplane.type", "tls.deny_serials"} {
		if !strings.Contains(err.Error(), key+":") {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
}

func TestLeaseMustBeUnderHalfTheHeartbeat(t *testing.T) {
	f := validFile()
	f.Raft = &RaftBlock{HeartbeatTimeout: "100ms", LeaderLeaseTimeout: "60ms"}
	if _, err := Resolve(f); err == nil || !strings.Contains(err.Error(), "raft.leader_lease_timeout") {
		t.Errorf("lease of 60ms with a 100ms heartbeat: err = %v", err)
	}
}

func TestSuspectAfterBounds(t *testing.T) {
	for _, c := range []struct {
		suspect, stagger string
		want             time.Duration
		bad              string
	}{
		{"", "", 100 * time.Millisecond, ""}, // twice the 50ms lease
		{"0s", "", 0, ""},                    // off: Raft's own timeout
		{"120ms", "10ms", 120 * time.Millisecond, ""},
		{"80ms", "", 0, "raft.suspect_after"},  // under twice the lease
		{"150ms", "", 0, "raft.suspect_after"}, // not under the heartbeat
		{"", "0s", 0, "raft.suspect_stagger"},
	} {
		f := validFile()
		f.Raft = &RaftBlock{HeartbeatTimeout: "150ms", LeaderLeaseTimeout: "50ms", SuspectAfter: c.suspect, SuspectStagger: c.stagger}
		got, err := Resolve(f)
		if c.bad != "" {
			if err == nil || !strings.Contains(err.Error(), c.bad+":") {
				t.Errorf("suspect_after %q, stagger %q: err = %v, want one naming %s", c.suspect, c.stagger, err, c.bad)
			}
			continue
		}
		if err != nil || got.SuspectAfter != c.want {
			t.Errorf("suspect_after %q: got %v, %v; want %v", c.suspect, got, err, c.want)
		}
	}
}

func TestFlagsOverrideFile(t *testing.T) {
	f, err := Load(private(t, "testdata/gw1.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	Merge(&f, File{NodeID: "gw9", Priority: ptr(5), Raft: &RaftBlock{HeartbeatTimeout: "300ms"}})
	c, err := Resolve(f)
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeID != "gw9" || c.Priority != 5 || c.Heartbeat != 300*time.Millisecond || c.Election != 100*time.Millisecond {
		t.Errorf("override not layered: %+v", c)
	}
}

func TestClusterKeyFileMustBePrivate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k")
	if err := os.WriteFile(path, []byte(strings.Repeat("ab", 32)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := validFile()
	f.ClusterKey, f.ClusterKeyFile = "", path
	if _, err := Resolve(f); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable key file: err = %v", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Resolve(f)
	if err != nil || len(c.ClusterKey) != 32 {
		t.Errorf("private key file: %v", err)
	}
}

// TestInlineClusterKeyNeedsAPrivateFile: a config file holding the cluster
// key inline is refused when others may read it, naming the key, as a
// cluster_key_file is; without an inline key its mode is the operator's.
func TestInlineClusterKeyNeedsAPrivateFile(t *testing.T) {
	path := private(t, "testdata/gw1.hcl")
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.HasPrefix(err.Error(), "cluster_key: ") || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("inline key in a world-readable file: err = %v, want one naming cluster_key", err)
	}
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	without := strings.Replace(string(src), "cluster_key ", "# cluster_key ", 1)
	if err := os.WriteFile(path, []byte(without), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err != nil {
		t.Errorf("a world-readable file without a key: %v", err)
	}
}

func validFile() File {
	return File{NodeID: "gw1", AdvertiseAddr: "192.0.2.1:7946", ClusterKey: strings.Repeat("0f", 32)}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"testdata/gw1.hcl", "testdata/gw1.yaml"} {
		src, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src, strings.TrimPrefix(filepath.Ext(name), "."))
	}
	f.Add([]byte("raft { heartbeat_timeout = 5 }"), "hcl")
	f.Add([]byte("provider: [1, 2]"), "yaml")
	f.Fuzz(func(t *testing.T, src []byte, format string) {
		if format != "hcl" && format != "yaml" {
			return
		}
		file, err := Parse("fuzz", src, format)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		// Whatever parses must validate to a config or to named errors,
		// never panic.
		if _, err := Resolve(file); err != nil && !strings.Contains(err.Error(), ":") {
			t.Fatalf("validation error without a key: %v", err)
		}
	})
}

func TestProviderSettingsBlocks(t *testing.T) {
	src := `node_id = "gw1"
advertise_addr = "192.0.2.11:7946"
cluster_key = "` + strings.Repeat("0f", 32) + `"
provider {
  type = "aws"
  resource {
    kind = "eip"
    id   = "eipalloc-1"
  }
  aws {
    region = "eu-west-1"
    eip_private_ips = { "eipalloc-1" = "198.18.2.100" }
  }
}
`
	f, err := Parse("x.hcl", []byte(src), "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Resolve(f)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := c.ProviderSettings.(*aws.Settings)
	if !ok || s.Region != "eu-west-1" || s.EIPPrivateIPs["eipalloc-1"] != "198.18.2.100" {
		t.Fatalf("aws settings = %#v", c.ProviderSettings)
	}
	if _, err := Parse("x.hcl", []byte(strings.Replace(src, "region", "regoin", 1)), ""); err == nil {
		t.Error("unknown key inside the aws block accepted")
	}
	y := "node_id: gw1\nadvertise_addr: 192.0.2.11:7946\ncluster_key: " + strings.Repeat("0f", 32) +
		"\nprovider:\n  type: gcp\n  gcp:\n    project: p1\n"
	f, err = Parse("x.yaml", []byte(y), "")
	if err != nil {
		t.Fatal(err)
	}
	if c, err = Resolve(f); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.ProviderSettings.(*gcp.Settings); !ok {
		t.Fatalf("gcp settings = %#v", c.ProviderSettings)
	}
}

func TestReestablishTemplate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "conn.json")
	tmpl := `{"version": 2, "proposals": ["aes128gcm16-prfsha256-ecp256"], "local": {"auth": "psk"},
"remote": {"auth": "psk"}, "children": {"net": {"esp_proposals": ["aes128gcm16"]}}}`
	if err := os.WriteFile(path, []byte(tmpl), 0o600); err != nil {
		t.Fatal(err)
	}
	f := validFile()
	f.Dataplane = &DataplaneBlock{Type: "strongswan", ReestablishTemplate: path}
	c, err := Resolve(f)
	if err != nil {
		t.Fatal(err)
	}
	if ch, ok := c.Reestablish["children"].(map[string]any); !ok || ch["net"] == nil {
		t.Fatalf("template = %#v", c.Reestablish)
	}
	if err := os.WriteFile(path, []byte(`{"version": 2}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Resolve(f); err == nil || !strings.Contains(err.Error(), "dataplane.reestablish_template") {
		t.Errorf("template without children: err = %v", err)
	}
}

// TestAddressesNeedPortsInRange: ports net.SplitHostPort takes but Listen
// and Dial refuse (issue 17: 99999, -1, 70000) are refused here, naming the
// key; bind_addr may ask for any free port, an address peers dial may not.
func TestAddressesNeedPortsInRange(t *testing.T) {
	for _, c := range []struct {
		key  string
		edit func(f *File)
	}{
		{"bind_addr", func(f *File) { f.BindAddr = "192.0.2.1:99999" }},
		{"bind_addr", func(f *File) { f.BindAddr = "192.0.2.1:-1" }},
		{"bind_addr", func(f *File) { f.BindAddr = "192.0.2.1:70000" }},
		{"bind_addr", func(f *File) { f.BindAddr = "192.0.2.1:raft" }},
		{"advertise_addr", func(f *File) { f.AdvertiseAddr = "192.0.2.1:70000" }},
		{"advertise_addr", func(f *File) { f.AdvertiseAddr = "192.0.2.1:0" }},
		{"join[1]", func(f *File) { f.Join = []string{"192.0.2.2:7946", "192.0.2.3:-1"} }},
	} {
		f := validFile()
		c.edit(&f)
		if _, err := Resolve(f); err == nil || !strings.Contains(err.Error(), c.key+": ") || !strings.Contains(err.Error(), "65535") {
			t.Errorf("%+v: err = %v, want one naming %s", f, err, c.key)
		}
	}
	f := validFile()
	f.BindAddr, f.Join = "127.0.0.1:0", []string{"192.0.2.2:7946"}
	if _, err := Resolve(f); err != nil {
		t.Errorf("bind_addr on any free port: %v", err)
	}
}

// TestParseErrorsNameEveryProblem: an HCL file's every problem is shown
// with its line and source snippet under the file's own name (not the
// first one and "and 2 other diagnostic(s)", nor x.hcl.hcl); a YAML file's
// type errors name the line and key path and say what the key wants, not
// a Go type such as config.ResourceBlock.
func TestParseErrorsNameEveryProblem(t *testing.T) {
	_, err := Parse("gw1.hcl", []byte("node_id = \"a\"\nnode_idd = \"b\"\nraft {\n  bogus = 1\n}\nprovider {\n  resource \"x\" {}\n}\n"), "")
	if err == nil {
		t.Fatal("broken HCL accepted")
	}
	for _, want := range []string{"3 problems", "on gw1.hcl line 2:", `2: node_idd = "b"`, "on gw1.hcl line 4, in raft:", "4:   bogus = 1",
		"on gw1.hcl line 7, in provider:", "No labels are expected for resource blocks"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("HCL error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), ".hcl.hcl") || strings.Contains(err.Error(), "other diagnostic") {
		t.Errorf("HCL error:\n%v", err)
	}

	_, err = Parse("gw1.yaml", []byte("node_id: a\nraft:\n  heartbeat: 1s\nprovider:\n  resources:\n    - kind: eip\n      id: [1]\n    - x\npriority: high\ntls: 5\njoin: [a, b]\n"), "")
	if err == nil {
		t.Fatal("broken YAML accepted")
	}
	for _, want := range []string{
		`line 3: raft.heartbeat: unknown key "heartbeat"`,
		"line 7: provider.resources[0].id: want a string, got a list",
		"line 8: provider.resources[1]: want a block of keys, got a string (x)",
		"line 9: priority: want an integer, got a string (high)",
		"line 10: tls: want a block of keys, got an integer (5)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("YAML error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "config.") || strings.Contains(err.Error(), "!!") {
		t.Errorf("YAML error names Go types or YAML tags:\n%v", err)
	}
}

// The ha channel (IKE continuity): both ends or none, loopback, distinct,
// only with the strongswan dataplane; each refusal names its key.
func TestHAChannel(t *testing.T) {
	f := validFile()
	f.Dataplane = &DataplaneBlock{Type: "strongswan", HAListen: "127.0.0.2", HACharon: "127.0.0.1"}
	c, err := Resolve(f)
	if err != nil {
		t.Fatal(err)
	}
	if c.HAListen.String() != "127.0.0.2:4510" || c.HACharon.String() != "127.0.0.1:4510" {
		t.Fatalf("ha channel %v → %v", c.HAListen, c.HACharon)
	}
	f.Dataplane = &DataplaneBlock{Type: "strongswan"}
	if c, err := Resolve(f); err != nil || c.HAListen.IsValid() {
		t.Fatalf("without ha keys: %v, listen %v", err, c.HAListen)
	}
	for _, tc := range []struct {
		name, key string
		d         DataplaneBlock
	}{
		{"one end only", "dataplane.ha_charon", DataplaneBlock{Type: "strongswan", HAListen: "127.0.0.2"}},
		{"not an address", "dataplane.ha_listen", DataplaneBlock{Type: "strongswan", HAListen: "127.0.0.2:4510", HACharon: "127.0.0.1"}},
		{"off the host", "dataplane.ha_charon", DataplaneBlock{Type: "strongswan", HAListen: "127.0.0.2", HACharon: "192.0.2.1"}},
		{"same address", "dataplane.ha_listen", DataplaneBlock{Type: "strongswan", HAListen: "127.0.0.1", HACharon: "127.0.0.1"}},
		{"memory dataplane", "dataplane.ha_listen", DataplaneBlock{Type: "memory", HAListen: "127.0.0.2", HACharon: "127.0.0.1"}},
	} {
		f.Dataplane = &tc.d
		if _, err := Resolve(f); err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%s: err = %v, want one naming %s", tc.name, err, tc.key)
		}
	}
}
