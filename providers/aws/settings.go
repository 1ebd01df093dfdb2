package aws

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
)

// Settings configure the AWS provider of one node. The tagged fields come
// from the agent's config file (HCL or YAML); the untagged ones are hooks
// for code (tests, the demo) and never appear in a file.
type Settings struct {
	// Region of the EC2 API. Default: the region in the instance identity
	// document (IMDS).
	Region string `hcl:"region,optional" yaml:"region"`
	// Endpoint overrides the EC2 API endpoint (the emulator, a VPC
	// interface endpoint); it must be https. Default: the SDK's regional
	// endpoint.
	Endpoint string `hcl:"endpoint,optional" yaml:"endpoint"`
	// IMDSEndpoint overrides the instance metadata endpoint. Default: the
	// SDK's (http://169.254.169.254).
	IMDSEndpoint string `hcl:"imds_endpoint,optional" yaml:"imds_endpoint"`
	// InstanceID and NetworkInterfaceID name this node's instance and the
	// interface the VIPs, EIPs and routes move to. Default: from IMDS (the
	// primary interface, found by its MAC).
	InstanceID         string `hcl:"instance_id,optional" yaml:"instance_id"`
	NetworkInterfaceID string `hcl:"network_interface_id,optional" yaml:"network_interface_id"`
	// EIPPrivateIPs maps each Elastic IP allocation ID to the secondary
	// private IP (the VIP the gateways terminate on) it is associated with.
	EIPPrivateIPs map[string]string `hcl:"eip_private_ips,optional" yaml:"eip_private_ips"`
	// AttemptTimeout bounds one HTTP attempt of one API call. Default "3s".
	AttemptTimeout string `hcl:"attempt_timeout,optional" yaml:"attempt_timeout"`
	// MaxAttempts bounds the attempts of one call (retries + 1) on
	// throttling, 5xx and timeouts. Default 5.
	MaxAttempts int `hcl:"max_attempts,optional" yaml:"max_attempts"`
	// BackoffBase and BackoffMax shape the jittered exponential backoff
	// between attempts. Defaults "100ms" and "2s".
	BackoffBase string `hcl:"backoff_base,optional" yaml:"backoff_base"`
	BackoffMax  string `hcl:"backoff_max,optional" yaml:"backoff_max"`
	// MaxParallel bounds the API calls one node has in flight. Default 64.
	MaxParallel int `hcl:"max_parallel,optional" yaml:"max_parallel"`

	// HTTPClient carries the API and IMDS calls (the emulator's client trusts
	// its certificate). Default: a client with enough idle connections for
	// MaxParallel calls.
	HTTPClient *http.Client `yaml:"-"`
	// Credentials replace the SDK's default chain (environment, shared
	// files, the instance role). Never logged.
	Credentials sdkaws.CredentialsProvider `yaml:"-"`
	// Logger receives the provider's decisions. Default: discarded.
	Logger *slog.Logger `yaml:"-"`
}

// Defaults of the tunable settings.
const (
	DefaultAttemptTimeout = 3 * time.Second
	DefaultMaxAttempts    = 5
	DefaultBackoffBase    = 100 * time.Millisecond
	DefaultBackoffMax     = 2 * time.Second
	DefaultMaxParallel    = 64
)

// tuning is Settings with defaults applied and durations parsed.
type tuning struct {
	attemptTimeout time.Duration
	maxAttempts    int
	backoffBase    time.Duration
	backoffMax     time.Duration
	maxParallel    int
	vips           map[string]netip.Addr
}

var (
	allocationIDRe = regexp.MustCompile(`^eipalloc-[0-9a-f]{1,17}$`)
	// nodeIDRe keeps node IDs inside the characters EC2 tag values allow and
	// free of the separators of the route fencing record (space and '=').
	nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9+\-._:/@]{1,128}$`)
)

// Validate checks every key and names the offending one.
func (s Settings) Validate() error {
	_, err := s.tuning()
	return err
}

func (s Settings) tuning() (tuning, error) {
	var errs []error
	dur := func(key, v string, def time.Duration) time.Duration {
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("%s: %q is not a positive duration such as \"2s\"", key, v))
			return def
		}
		return d
	}
	t := tuning{
		attemptTimeout: dur("attempt_timeout", s.AttemptTimeout, DefaultAttemptTimeout),
		backoffBase:    dur("backoff_base", s.BackoffBase, DefaultBackoffBase),
		backoffMax:     dur("backoff_max", s.BackoffMax, DefaultBackoffMax),
		maxAttempts:    DefaultMaxAttempts,
		maxParallel:    DefaultMaxParallel,
		vips:           make(map[string]netip.Addr, len(s.EIPPrivateIPs)),
	}
	if t.backoffMax < t.backoffBase {
		errs = append(errs, fmt.Errorf("backoff_max: %s is below backoff_base %s", t.backoffMax, t.backoffBase))
	}
	switch {
	case s.MaxAttempts < 0 || s.MaxAttempts > 10:
		errs = append(errs, fmt.Errorf("max_attempts: %d is outside 1..10", s.MaxAttempts))
	case s.MaxAttempts > 0:
		t.maxAttempts = s.MaxAttempts
	}
	switch {
	case s.MaxParallel < 0 || s.MaxParallel > 1024:
		errs = append(errs, fmt.Errorf("max_parallel: %d is outside 1..1024", s.MaxParallel))
	case s.MaxParallel > 0:
		t.maxParallel = s.MaxParallel
	}
	// The EC2 API's requests carry the role's session token: over plain
	// HTTP anyone on the path reads it. IMDS is plain HTTP by design, on
	// the instance's own link-local address.
	if s.Endpoint != "" {
		if u, err := url.Parse(s.Endpoint); err != nil || u.Scheme != "https" || u.Host == "" {
			errs = append(errs, fmt.Errorf("endpoint: %q is not an https URL (API requests carry the credentials' session token, never sent over plain HTTP)", s.Endpoint))
		}
	}
	if s.IMDSEndpoint != "" {
		if u, err := url.Parse(s.IMDSEndpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("imds_endpoint: %q is not an http(s) URL", s.IMDSEndpoint))
		}
	}
	if s.InstanceID != "" && !strings.HasPrefix(s.InstanceID, "i-") {
		errs = append(errs, fmt.Errorf("instance_id: %q is not an instance ID (i-...)", s.InstanceID))
	}
	if s.NetworkInterfaceID != "" && !strings.HasPrefix(s.NetworkInterfaceID, "eni-") {
		errs = append(errs, fmt.Errorf("network_interface_id: %q is not a network interface ID (eni-...)", s.NetworkInterfaceID))
	}
	allocs := make([]string, 0, len(s.EIPPrivateIPs))
	for a := range s.EIPPrivateIPs {
		allocs = append(allocs, a)
	}
	sort.Strings(allocs)
	owner := make(map[netip.Addr]string)
	for _, a := range allocs {
		v := s.EIPPrivateIPs[a]
		if !allocationIDRe.MatchString(a) {
			errs = append(errs, fmt.Errorf("eip_private_ips: key %q is not an allocation ID (eipalloc-...)", a))
			continue
		}
		ip, err := netip.ParseAddr(v)
		if err != nil || !ip.Is4() {
			errs = append(errs, fmt.Errorf("eip_private_ips[%q]: %q is not an IPv4 address", a, v))
			continue
		}
		if other, dup := owner[ip]; dup {
			errs = append(errs, fmt.Errorf("eip_private_ips[%q]: %s is already the private IP of %s (one Elastic IP per private IP)", a, ip, other))
			continue
		}
		owner[ip] = a
		t.vips[a] = ip
	}
	if len(errs) > 0 {
		return tuning{}, fmt.Errorf("aws provider settings: %w", errors.Join(errs...))
	}
	return t, nil
}
