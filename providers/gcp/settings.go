package gcp

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"time"

	"go.yaml.in/yaml/v3"
)

// Settings configure the GCP provider of one node. Every key is optional on
// a GCE VM: identity comes from the metadata server.
type Settings struct {
	// Project is the project ID; default: the metadata server's project.
	Project string `hcl:"project,optional" yaml:"project"`
	// Zone is the VM's zone; default: the metadata server's.
	Zone string `hcl:"zone,optional" yaml:"zone"`
	// Region of the forwarding rules; default: derived from Zone.
	Region string `hcl:"region,optional" yaml:"region"`
	// Instance is this node's VM name; default: the metadata server's.
	Instance string `hcl:"instance,optional" yaml:"instance"`
	// NetworkInterface carries the alias IP ranges; default "nic0".
	NetworkInterface string `hcl:"network_interface,optional" yaml:"network_interface"`
	// TargetInstance is the target instance (in Zone) that sends protocol
	// forwarding traffic to this VM; default: the VM's name.
	TargetInstance string `hcl:"target_instance,optional" yaml:"target_instance"`
	// AliasZones are the zones searched for the current holder of an alias
	// IP range; default: Zone only.
	AliasZones []string `hcl:"alias_zones,optional" yaml:"alias_zones"`
	// RouteNextHop is "instance" (nextHopInstance, default) or "ip"
	// (nextHopIp with this VM's primary internal address).
	RouteNextHop string `hcl:"route_next_hop,optional" yaml:"route_next_hop"`
	// RoutePriority of the routes the provider inserts, 0-65535; 0 or
	// unset means 1000 (GCE's default).
	RoutePriority int `hcl:"route_priority,optional" yaml:"route_priority"`

	// Endpoint overrides the Compute API base URL ("https://host:port");
	// it must be https.
	Endpoint string `hcl:"endpoint,optional" yaml:"endpoint"`
	// MetadataURL overrides the metadata server ("http://host:port").
	MetadataURL string `hcl:"metadata_url,optional" yaml:"metadata_url"`
	// CredentialsFile is a service account key (JSON); default:
	// Application Default Credentials (the VM's service account).
	CredentialsFile string `hcl:"credentials_file,optional" yaml:"credentials_file"`
	// WithoutAuthentication sends no credentials (the emulator).
	WithoutAuthentication bool `hcl:"without_authentication,optional" yaml:"without_authentication"`

	// CallTimeout bounds every API request; default "10s".
	CallTimeout string `hcl:"call_timeout,optional" yaml:"call_timeout"`
	// OperationTimeout bounds waiting for one Operation; default "60s".
	OperationTimeout string `hcl:"operation_timeout,optional" yaml:"operation_timeout"`
	// Attempts per call when throttled, 5xx or timed out; default 5.
	Attempts int `hcl:"attempts,optional" yaml:"attempts"`
	// BackoffBase is the first retry delay, doubled each time with
	// jitter; default "200ms".
	BackoffBase string `hcl:"backoff_base,optional" yaml:"backoff_base"`
	// BackoffMax caps the retry delay; default "5s".
	BackoffMax string `hcl:"backoff_max,optional" yaml:"backoff_max"`

	// HTTPClient, when set, carries every Compute API call and adds no
	// credentials: tests and the demo point it at the emulator. A copy of
	// it with call_timeout as its Timeout carries all but operation waits.
	HTTPClient *http.Client `yaml:"-"`
	// Logger receives one line per move; default: discard.
	Logger *slog.Logger `yaml:"-"`
}

// resolved holds Settings with defaults applied and durations parsed.
type resolved struct {
	Settings
	callTimeout, opTimeout  time.Duration
	backoffBase, backoffMax time.Duration
}

var (
	gceNameRE = regexp.MustCompile(`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)
	zoneRE    = regexp.MustCompile(`^[a-z]+-[a-z]+[0-9]+-[a-z]$`)
	regionRE  = regexp.MustCompile(`^[a-z]+-[a-z]+[0-9]+$`)
	// nodeRE is what fits a GCE label value, where the node ID is written.
	nodeRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,39}$`)
	nicRE  = regexp.MustCompile(`^nic[0-9]$`)
)

// Validate checks every key and names the offending one.
func (s Settings) Validate() error {
	_, err := s.resolve()
	return err
}

func (s Settings) resolve() (resolved, error) {
	r := resolved{Settings: s}
	if r.NetworkInterface == "" {
		r.NetworkInterface = "nic0"
	}
	if r.RouteNextHop == "" {
		r.RouteNextHop = "instance"
	}
	if r.RoutePriority == 0 {
		r.RoutePriority = 1000
	}
	if r.Attempts == 0 {
		r.Attempts = 5
	}
	checks := []struct {
		key, val string
		re       *regexp.Regexp
	}{
		{"zone", s.Zone, zoneRE}, {"region", s.Region, regionRE}, {"instance", s.Instance, gceNameRE},
		{"target_instance", s.TargetInstance, gceNameRE}, {"network_interface", s.NetworkInterface, nicRE},
	}
	for _, c := range checks {
		if c.val != "" && !c.re.MatchString(c.val) {
			return r, fmt.Errorf("gcp setting %s: %q is not a valid GCE %s", c.key, c.val, c.key)
		}
	}
	for _, z := range s.AliasZones {
		if !zoneRE.MatchString(z) {
			return r, fmt.Errorf("gcp setting alias_zones: %q is not a valid GCE zone", z)
		}
	}
	if r.RouteNextHop != "instance" && r.RouteNextHop != "ip" {
		return r, fmt.Errorf("gcp setting route_next_hop: %q, want \"instance\" or \"ip\"", s.RouteNextHop)
	}
	if r.RoutePriority < 0 || r.RoutePriority > 65535 {
		return r, fmt.Errorf("gcp setting route_priority: %d is outside 0-65535", s.RoutePriority)
	}
	if r.Attempts < 1 || r.Attempts > 20 {
		return r, fmt.Errorf("gcp setting attempts: %d is outside 1-20", s.Attempts)
	}
	// Compute API calls carry the service account's bearer token: over
	// plain HTTP anyone on the path could replay it. The metadata server
	// is plain HTTP by design, on the VM's own link-local address.
	if s.Endpoint != "" {
		pu, err := url.Parse(s.Endpoint)
		if err != nil || pu.Host == "" || pu.Scheme != "https" {
			return r, fmt.Errorf("gcp setting endpoint: %q is not an https:// URL (API calls carry a bearer token, never sent over plain HTTP)", s.Endpoint)
		}
	}
	if s.MetadataURL != "" {
		pu, err := url.Parse(s.MetadataURL)
		if err != nil || pu.Host == "" || (pu.Scheme != "http" && pu.Scheme != "https") {
			return r, fmt.Errorf("gcp setting metadata_url: %q is not an http:// URL", s.MetadataURL)
		}
	}
	if s.CredentialsFile != "" && s.WithoutAuthentication {
		return r, fmt.Errorf("gcp setting credentials_file: set together with without_authentication")
	}
	durs := []struct {
		key, val, def string
		dst           *time.Duration
	}{
		{"call_timeout", s.CallTimeout, "10s", &r.callTimeout},
		{"operation_timeout", s.OperationTimeout, "60s", &r.opTimeout},
		{"backoff_base", s.BackoffBase, "200ms", &r.backoffBase},
		{"backoff_max", s.BackoffMax, "5s", &r.backoffMax},
	}
	for _, d := range durs {
		v := d.val
		if v == "" {
			v = d.def
		}
		parsed, err := time.ParseDuration(v)
		if err != nil {
			return r, fmt.Errorf("gcp setting %s: %w", d.key, err)
		}
		if parsed <= 0 {
			return r, fmt.Errorf("gcp setting %s: %q must be positive", d.key, v)
		}
		*d.dst = parsed
	}
	if r.backoffMax < r.backoffBase {
		return r, fmt.Errorf("gcp setting backoff_max: %s is below backoff_base %s", r.backoffMax, r.backoffBase)
	}
	return r, nil
}

// settingsFrom accepts the forms a config loader hands a factory: the typed
// struct, a pointer to it, or a decoded YAML/JSON map (strictly decoded:
// unknown keys are an error).
func settingsFrom(v any) (Settings, error) {
	switch s := v.(type) {
	case Settings:
		return s, nil
	case *Settings:
		if s == nil {
			return Settings{}, nil
		}
		return *s, nil
	case nil:
		return Settings{}, nil
	case map[string]any:
		raw, err := yaml.Marshal(s)
		if err != nil {
			return Settings{}, fmt.Errorf("re-encoding gcp settings: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		var out Settings
		if err := dec.Decode(&out); err != nil {
			return Settings{}, fmt.Errorf("decoding gcp settings: %w", err)
		}
		return out, nil
	}
	return Settings{}, fmt.Errorf("gcp settings: unsupported type %T (want gcp.Settings)", v)
}
