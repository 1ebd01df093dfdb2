package aws

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"go.yaml.in/yaml/v3"
)

const settingsHCL = `
region               = "eu-west-1"
endpoint             = "https://ec2.eu-west-1.amazonaws.com"
imds_endpoint        = "http://169.254.169.254"
instance_id          = "i-0123456789abcdef0"
network_interface_id = "eni-0123456789abcdef0"
eip_private_ips = {
  "eipalloc-0a1b2c3d4e5f60718" = "10.0.1.100"
}
attempt_timeout = "2s"
max_attempts    = 4
backoff_base    = "50ms"
backoff_max     = "1s"
max_parallel    = 32
`

const settingsYAML = `
region: eu-west-1
endpoint: https://ec2.eu-west-1.amazonaws.com
imds_endpoint: http://169.254.169.254
instance_id: i-0123456789abcdef0
network_interface_id: eni-0123456789abcdef0
eip_private_ips:
  eipalloc-0a1b2c3d4e5f60718: 10.0.1.100
attempt_timeout: 2s
max_attempts: 4
backoff_base: 50ms
backoff_max: 1s
max_parallel: 32
`

func checkDecoded(t *testing.T, s Settings) {
	t.Helper()
	if err := s.Validate(); err != nil {
		t.Fatalf("aws settings: %v", err)
	}
	tn, _ := s.tuning()
	want := tuning{attemptTimeout: 2 * time.Second, maxAttempts: 4, backoffBase: 50 * time.Millisecond,
		backoffMax: time.Second, maxParallel: 32}
	if tn.attemptTimeout != want.attemptTimeout || tn.maxAttempts != want.maxAttempts || tn.backoffBase != want.backoffBase ||
		tn.backoffMax != want.backoffMax || tn.maxParallel != want.maxParallel {
		t.Fatalf("aws settings tuning = %+v, want %+v", tn, want)
	}
	if tn.vips["eipalloc-0a1b2c3d4e5f60718"] != netip.MustParseAddr("10.0.1.100") || s.Region != "eu-west-1" ||
		s.InstanceID != "i-0123456789abcdef0" || s.NetworkInterfaceID != "eni-0123456789abcdef0" {
		t.Fatalf("aws settings decoded = %+v", s)
	}
}

func TestAWSSettingsFromHCL(t *testing.T) {
	f, diags := hclsyntax.ParseConfig([]byte(settingsHCL), "aws.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	var s Settings
	if diags := gohcl.DecodeBody(f.Body, nil, &s); diags.HasErrors() {
		t.Fatalf("decoding aws settings from HCL: %v", diags)
	}
	checkDecoded(t, s)

	f, _ = hclsyntax.ParseConfig([]byte(`regoin = "x"`), "typo.hcl", hcl.InitialPos)
	if diags := gohcl.DecodeBody(f.Body, nil, &Settings{}); !diags.HasErrors() {
		t.Fatal("aws settings from HCL: an unknown key was accepted")
	}
}

func TestAWSSettingsFromYAML(t *testing.T) {
	var s Settings
	dec := yaml.NewDecoder(strings.NewReader(settingsYAML))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("decoding aws settings from YAML: %v", err)
	}
	checkDecoded(t, s)

	dec = yaml.NewDecoder(strings.NewReader("regoin: x\n"))
	dec.KnownFields(true)
	if err := dec.Decode(&Settings{}); err == nil {
		t.Fatal("aws settings from YAML: an unknown key was accepted")
	}
}

func TestAWSSettingsDefaults(t *testing.T) {
	tn, err := Settings{}.tuning()
	if err != nil {
		t.Fatal(err)
	}
	if tn.attemptTimeout != DefaultAttemptTimeout || tn.maxAttempts != DefaultMaxAttempts ||
		tn.backoffBase != DefaultBackoffBase || tn.backoffMax != DefaultBackoffMax || tn.maxParallel != DefaultMaxParallel {
		t.Fatalf("aws settings defaults = %+v", tn)
	}
}

func TestAWSSettingsValidateNamesKey(t *testing.T) {
	cases := []struct {
		key string
		s   Settings
	}{
		{"attempt_timeout", Settings{AttemptTimeout: "2"}},
		{"attempt_timeout", Settings{AttemptTimeout: "-1s"}},
		{"backoff_base", Settings{BackoffBase: "soon"}},
		{"backoff_max", Settings{BackoffBase: "2s", BackoffMax: "1s"}},
		{"max_attempts", Settings{MaxAttempts: 11}},
		{"max_parallel", Settings{MaxParallel: -1}},
		{"endpoint", Settings{Endpoint: "ec2.amazonaws.com"}},
		{"endpoint: \"http://ec2.eu-west-1.amazonaws.com\" is not an https URL", Settings{Endpoint: "http://ec2.eu-west-1.amazonaws.com"}},
		{"imds_endpoint", Settings{IMDSEndpoint: "ftp://x"}},
		{"instance_id", Settings{InstanceID: "0123"}},
		{"network_interface_id", Settings{NetworkInterfaceID: "if-1"}},
		{"eip_private_ips", Settings{EIPPrivateIPs: map[string]string{"eip-1": "10.0.0.1"}}},
		{`eip_private_ips["eipalloc-01"]`, Settings{EIPPrivateIPs: map[string]string{"eipalloc-01": "10.0.0"}}},
		{`eip_private_ips["eipalloc-02"]`, Settings{EIPPrivateIPs: map[string]string{"eipalloc-01": "10.0.0.1", "eipalloc-02": "10.0.0.1"}}},
	}
	for _, c := range cases {
		err := c.s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("aws settings %+v: Validate() = %v, want an error naming %s", c.s, err, c.key)
		}
	}
}

// TestAWSRefusesPlainHTTPEndpointFromTheEnvironment: the SDK's own
// endpoint sources (AWS_ENDPOINT_URL, the shared config) are held to the
// same rule as the endpoint setting: no session token over plain HTTP.
func TestAWSRefusesPlainHTTPEndpointFromTheEnvironment(t *testing.T) {
	t.Setenv("AWS_ENDPOINT_URL", "http://ec2.example:8080")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	s := Settings{InstanceID: "i-0123456789abcdef0", NetworkInterfaceID: "eni-0123456789abcdef0", Region: "eu-west-1"}
	_, err := New(t.Context(), "gw1", s)
	if err == nil || !strings.Contains(err.Error(), `"http://ec2.example:8080"`) || !strings.Contains(err.Error(), "AWS_ENDPOINT_URL") {
		t.Fatalf("AWS_ENDPOINT_URL over plain HTTP: err = %v, want a refusal naming it", err)
	}
	t.Setenv("AWS_ENDPOINT_URL", "https://ec2.example:8443")
	if _, err := New(t.Context(), "gw1", s); err != nil {
		t.Fatalf("AWS_ENDPOINT_URL over https: %v", err)
	}
}
