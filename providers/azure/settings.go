package azure

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"go.yaml.in/yaml/v3"

	"github.com/handoffvpn/handoff/providers"
)

// Settings configure the azure provider of one node. Every identity field is
// optional: what is left empty comes from the instance metadata service
// (IMDS) of the VM the agent runs on.
type Settings struct {
	// SubscriptionID of the resources; default: the VM's subscription.
	SubscriptionID string `hcl:"subscription_id,optional" yaml:"subscription_id"`
	// ResourceGroup of resources named without one; default: the VM's.
	ResourceGroup string `hcl:"resource_group,optional" yaml:"resource_group"`
	// NetworkInterface is this node's NIC, a name (in ResourceGroup) or an
	// ARM ID; default: the NIC of the VM that carries its private IP.
	NetworkInterface string `hcl:"network_interface,optional" yaml:"network_interface"`
	// IPConfiguration of NetworkInterface that public IPs attach to;
	// default: the primary one.
	IPConfiguration string `hcl:"ip_configuration,optional" yaml:"ip_configuration"`
	// PrivateIP is the next hop routes are pointed at; default: the NIC's
	// primary private IP.
	PrivateIP string `hcl:"private_ip,optional" yaml:"private_ip"`

	// Credential is "default" (DefaultAzureCredential: environment,
	// workload identity, managed identity, Azure CLI) or
	// "managed_identity". Default "default".
	Credential string `hcl:"credential,optional" yaml:"credential"`
	// ManagedIdentityClientID selects a user-assigned managed identity
	// (credential "managed_identity" only).
	ManagedIdentityClientID string `hcl:"managed_identity_client_id,optional" yaml:"managed_identity_client_id"`

	// Endpoint overrides the Resource Manager URL (sovereign clouds, the
	// emulator); it must be https, bearer tokens are never sent in clear.
	Endpoint string `hcl:"endpoint,optional" yaml:"endpoint"`
	// Audience of the tokens for Endpoint; default: Endpoint itself.
	Audience string `hcl:"audience,optional" yaml:"audience"`
	// MetadataEndpoint overrides IMDS; default "http://169.254.169.254".
	MetadataEndpoint string `hcl:"metadata_endpoint,optional" yaml:"metadata_endpoint"`

	// CallTimeout bounds each HTTP try; default "10s".
	CallTimeout string `hcl:"call_timeout,optional" yaml:"call_timeout"`
	// MaxAttempts bounds the tries of one call on throttling, 5xx and
	// timeouts, and the re-reads after a lost ETag race; default 5.
	MaxAttempts int `hcl:"max_attempts,optional" yaml:"max_attempts"`
	// BackoffBase is the first retry delay, doubled per try with jitter;
	// default "200ms".
	BackoffBase string `hcl:"backoff_base,optional" yaml:"backoff_base"`
	// BackoffMax caps one retry delay, and a throttled answer asking for a
	// longer Retry-After is not retried; default "5s".
	BackoffMax string `hcl:"backoff_max,optional" yaml:"backoff_max"`
	// PollInterval is how often a long-running operation is polled;
	// default "500ms".
	PollInterval string `hcl:"poll_interval,optional" yaml:"poll_interval"`
	// OperationTimeout bounds one long-running operation; default "2m".
	OperationTimeout string `hcl:"operation_timeout,optional" yaml:"operation_timeout"`

	// HTTPClient, when set, carries every Resource Manager call (tests and
	// the demo point it at the emulator's certificate).
	HTTPClient *http.Client `yaml:"-"`
	// TokenCredential, when set, replaces Credential.
	TokenCredential azcore.TokenCredential `yaml:"-"`
	// Logger receives the provider's logs; default: discarded.
	Logger *slog.Logger `yaml:"-"`
}

// tuning is Settings' timing, parsed.
type tuning struct {
	callTimeout  time.Duration
	maxAttempts  int
	backoffBase  time.Duration
	backoffMax   time.Duration
	pollInterval time.Duration
	opTimeout    time.Duration
}

const (
	defaultMetadataEndpoint = "http://169.254.169.254"
	maxMaxAttempts          = 20
)

// Validate checks the settings and names the offending key.
func (s Settings) Validate() error {
	_, err := s.tuning()
	if err != nil {
		return err
	}
	switch s.Credential {
	case "", "default", "managed_identity":
	default:
		return fmt.Errorf("azure settings: credential: %q is not one of \"default\", \"managed_identity\"", s.Credential)
	}
	if s.ManagedIdentityClientID != "" && s.Credential != "managed_identity" {
		return fmt.Errorf("azure settings: managed_identity_client_id: needs credential = \"managed_identity\" (DefaultAzureCredential reads AZURE_CLIENT_ID)")
	}
	if s.Endpoint != "" {
		u, err := url.Parse(s.Endpoint)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("azure settings: endpoint: %q is not an https URL (bearer tokens are never sent over plain HTTP)", s.Endpoint)
		}
	}
	if s.MetadataEndpoint != "" {
		u, err := url.Parse(s.MetadataEndpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("azure settings: metadata_endpoint: %q is not an http(s) URL", s.MetadataEndpoint)
		}
	}
	if s.PrivateIP != "" {
		if _, err := netip.ParseAddr(s.PrivateIP); err != nil {
			return fmt.Errorf("azure settings: private_ip: %w", err)
		}
	}
	if s.NetworkInterface != "" {
		if _, err := parseTopLevel(s.NetworkInterface, "networkInterfaces"); err != nil {
			return fmt.Errorf("azure settings: network_interface: %w", err)
		}
	}
	return nil
}

func (s Settings) tuning() (tuning, error) {
	t := tuning{maxAttempts: 5}
	durations := []struct {
		key, val string
		def      time.Duration
		dst      *time.Duration
	}{
		{"call_timeout", s.CallTimeout, 10 * time.Second, &t.callTimeout},
		{"backoff_base", s.BackoffBase, 200 * time.Millisecond, &t.backoffBase},
		{"backoff_max", s.BackoffMax, 5 * time.Second, &t.backoffMax},
		{"poll_interval", s.PollInterval, 500 * time.Millisecond, &t.pollInterval},
		{"operation_timeout", s.OperationTimeout, 2 * time.Minute, &t.opTimeout},
	}
	for _, d := range durations {
		*d.dst = d.def
		if d.val == "" {
			continue
		}
		v, err := time.ParseDuration(d.val)
		if err != nil {
			return tuning{}, fmt.Errorf("azure settings: %s: %w", d.key, err)
		}
		if v <= 0 {
			return tuning{}, fmt.Errorf("azure settings: %s: %q must be positive", d.key, d.val)
		}
		*d.dst = v
	}
	if s.MaxAttempts < 0 || s.MaxAttempts > maxMaxAttempts {
		return tuning{}, fmt.Errorf("azure settings: max_attempts: %d is outside 1..%d", s.MaxAttempts, maxMaxAttempts)
	}
	if s.MaxAttempts > 0 {
		t.maxAttempts = s.MaxAttempts
	}
	if t.backoffMax < t.backoffBase {
		return tuning{}, fmt.Errorf("azure settings: backoff_max: %s is below backoff_base %s", t.backoffMax, t.backoffBase)
	}
	return t, nil
}

// Factory builds the provider of node; it is the function to register as
// "azure" in a providers.Registry. settings may be a Settings, a *Settings,
// a map decoded from YAML or JSON (unknown keys are an error), an hcl.Body,
// or nil (everything from IMDS).
func Factory(ctx context.Context, node string, settings any) (providers.Provider, error) {
	s, err := decodeSettings(settings)
	if err != nil {
		return nil, err
	}
	return New(ctx, node, s)
}

var _ providers.Factory = Factory

func decodeSettings(v any) (Settings, error) {
	switch v := v.(type) {
	case nil:
		return Settings{}, nil
	case Settings:
		return v, nil
	case *Settings:
		if v == nil {
			return Settings{}, nil
		}
		return *v, nil
	case map[string]any:
		b, err := yaml.Marshal(v)
		if err != nil {
			return Settings{}, fmt.Errorf("azure settings: %w", err)
		}
		var s Settings
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&s); err != nil {
			return Settings{}, fmt.Errorf("azure settings: %w", err)
		}
		return s, nil
	case hcl.Body:
		var s Settings
		if diags := gohcl.DecodeBody(v, nil, &s); diags.HasErrors() {
			return Settings{}, fmt.Errorf("azure settings: %w", diags)
		}
		return s, nil
	default:
		return Settings{}, fmt.Errorf("azure settings: unsupported type %T", v)
	}
}
