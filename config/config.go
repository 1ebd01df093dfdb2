// Package config reads the agent's configuration: HCL or YAML files with
// unknown keys rejected and durations as strings, layered as defaults, then
// the file, then command-line flags, then one validation whose errors name
// the offending key.
package config

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/internal/rtsched"
	"github.com/handoffvpn/handoff/internal/secretfile"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/aws"
	"github.com/handoffvpn/handoff/providers/azure"
	"github.com/handoffvpn/handoff/providers/gcp"
	"github.com/handoffvpn/handoff/providers/linux"
)

// File is the configuration as written in a file. Every field is optional;
// Defaults fills what a file leaves out.
type File struct {
	NodeID        string   `hcl:"node_id,optional" yaml:"node_id" json:"node_id"`
	Role          string   `hcl:"role,optional" yaml:"role" json:"role"`
	Priority      *int     `hcl:"priority,optional" yaml:"priority" json:"priority"`
	DataDir       string   `hcl:"data_dir,optional" yaml:"data_dir" json:"data_dir"`
	BindAddr      string   `hcl:"bind_addr,optional" yaml:"bind_addr" json:"bind_addr"`
	AdvertiseAddr string   `hcl:"advertise_addr,optional" yaml:"advertise_addr" json:"advertise_addr"`
	Bootstrap     *bool    `hcl:"bootstrap,optional" yaml:"bootstrap" json:"bootstrap"`
	Join          []string `hcl:"join,optional" yaml:"join" json:"join"`
	// ClusterKey is the hex AES-256 key that seals SAs; prefer ClusterKeyFile.
	ClusterKey     string `hcl:"cluster_key,optional" yaml:"cluster_key" json:"cluster_key"`
	ClusterKeyFile string `hcl:"cluster_key_file,optional" yaml:"cluster_key_file" json:"cluster_key_file"`
	LogLevel       string `hcl:"log_level,optional" yaml:"log_level" json:"log_level"`
	LogFormat      string `hcl:"log_format,optional" yaml:"log_format" json:"log_format"`

	TLS         *TLSBlock         `hcl:"tls,block" yaml:"tls" json:"tls"`
	Raft        *RaftBlock        `hcl:"raft,block" yaml:"raft" json:"raft"`
	Replication *ReplicationBlock `hcl:"replication,block" yaml:"replication" json:"replication"`
	Takeover    *TakeoverBlock    `hcl:"takeover,block" yaml:"takeover" json:"takeover"`
	Provider    *ProviderBlock    `hcl:"provider,block" yaml:"provider" json:"provider"`
	Dataplane   *DataplaneBlock   `hcl:"dataplane,block" yaml:"dataplane" json:"dataplane"`
	Health      *HealthBlock      `hcl:"health,block" yaml:"health" json:"health"`
	Scheduling  *SchedulingBlock  `hcl:"scheduling,block" yaml:"scheduling" json:"scheduling"`
	API         *APIBlock         `hcl:"api,block" yaml:"api" json:"api"`
	Webhook     *WebhookBlock     `hcl:"webhook,block" yaml:"webhook" json:"webhook"`
	Notify      *NotifyBlock      `hcl:"notify,block" yaml:"notify" json:"notify"`

	// at is where each key was written, when the file came from Load:
	// errors then name the line as well as the key.
	at *source
}

// APIBlock is the operator HTTP API (status, members, promote, drain, the
// status page and /metrics). The agent's -api-* flags override it.
type APIBlock struct {
	// Addr is the listen address; a private address lets the other nodes
	// and Prometheus reach it, and wants TLS and a token.
	Addr string `hcl:"addr,optional" yaml:"addr" json:"addr"`
	// TokenFile holds the accepted bearer tokens, one per line (mode
	// 0600). Without one (nor HANDOFF_API_TOKEN) the API serves reads only.
	TokenFile string `hcl:"token_file,optional" yaml:"token_file" json:"token_file"`
	// TLSCert and TLSKey serve the API over HTTPS; the key is a secret file.
	TLSCert string `hcl:"tls_cert,optional" yaml:"tls_cert" json:"tls_cert"`
	TLSKey  string `hcl:"tls_key,optional" yaml:"tls_key" json:"tls_key"`
}

// WebhookBlock sends operator events as signed JSON POSTs. The agent's
// -webhook-* flags override it.
type WebhookBlock struct {
	URL string `hcl:"url,optional" yaml:"url" json:"url"`
	// SecretFile holds the signing secret (mode 0600); without it the
	// secret comes from HANDOFF_WEBHOOK_SECRET.
	SecretFile string `hcl:"secret_file,optional" yaml:"secret_file" json:"secret_file"`
}

// NotifyBlock names the commands run when this node changes state, the
// way keepalived's notify_master and notify_backup scripts are: each is
// an argument vector (no shell), run after the transition is committed,
// never in a takeover's path.
type NotifyBlock struct {
	Active  []string `hcl:"active,optional" yaml:"active" json:"active"`
	Standby []string `hcl:"standby,optional" yaml:"standby" json:"standby"`
	Fenced  []string `hcl:"fenced,optional" yaml:"fenced" json:"fenced"`
	Faulty  []string `hcl:"faulty,optional" yaml:"faulty" json:"faulty"`
	// Timeout bounds one command: it is killed (with its process group)
	// when it runs longer.
	Timeout string `hcl:"timeout,optional" yaml:"timeout" json:"timeout"`
}

// SchedulingBlock is the agent's own CPU scheduling. It asks for a realtime
// policy and locked memory by default: under CPU load from other processes
// a normally scheduled agent misses its leader lease and the cluster fails
// over for nothing, and a false failover is an outage.
type SchedulingBlock struct {
	// RealtimePriority is the priority (1..99) of the realtime policy on
	// every thread; 0 leaves the scheduling the agent was started with.
	RealtimePriority *int   `hcl:"realtime_priority,optional" yaml:"realtime_priority" json:"realtime_priority"`
	Policy           string `hcl:"policy,optional" yaml:"policy" json:"policy"`
	LockMemory       *bool  `hcl:"lock_memory,optional" yaml:"lock_memory" json:"lock_memory"`
	// GCPercent is the Go garbage collector's target (GOGC); MemoryLimit
	// its soft memory limit (GOMEMLIMIT), "0" for none.
	GCPercent   *int   `hcl:"gc_percent,optional" yaml:"gc_percent" json:"gc_percent"`
	MemoryLimit string `hcl:"memory_limit,optional" yaml:"memory_limit" json:"memory_limit"`
	// ProcsPerCPU is how many Go Ps (GOMAXPROCS) run per CPU: more than
	// one lets the kernel time-slice the runtime's threads, so that a
	// heartbeat does not wait behind 10 ms of bulk work (internal/gotune).
	ProcsPerCPU *int `hcl:"procs_per_cpu,optional" yaml:"procs_per_cpu" json:"procs_per_cpu"`
}

// HealthBlock configures the health checks: the node's own (charon over
// VICI, its process) and what it observes of the active gateway (IKEv2
// probes on UDP 500 and 4500 to the address clients use).
type HealthBlock struct {
	// ProbeAddress is the address the IKE probes go to: the VIP the
	// gateways terminate on. Empty disables observing the active.
	ProbeAddress   string `hcl:"probe_address,optional" yaml:"probe_address" json:"probe_address"`
	Interval       string `hcl:"interval,optional" yaml:"interval" json:"interval"`
	Timeout        string `hcl:"timeout,optional" yaml:"timeout" json:"timeout"`
	Rise           *int   `hcl:"rise,optional" yaml:"rise" json:"rise"`
	Fall           *int   `hcl:"fall,optional" yaml:"fall" json:"fall"`
	ReportInterval string `hcl:"report_interval,optional" yaml:"report_interval" json:"report_interval"`
	// CharonProcess is the process name checked in /proc ("" disables).
	CharonProcess string `hcl:"charon_process,optional" yaml:"charon_process" json:"charon_process"`
	// LocalChecks turns on the VICI and process checks of this node's own
	// charon (default: on with the strongswan dataplane).
	LocalChecks *bool `hcl:"local_checks,optional" yaml:"local_checks" json:"local_checks"`
}

// TLSBlock is the node's mutual-TLS material.
type TLSBlock struct {
	CA   string `hcl:"ca,optional" yaml:"ca" json:"ca"`
	Cert string `hcl:"cert,optional" yaml:"cert" json:"cert"`
	Key  string `hcl:"key,optional" yaml:"key" json:"key"`
	// AllowedNodes, if set, lists the only node IDs allowed to connect.
	// It narrows membership, the default authorisation: a node that
	// connects may do nothing but join until it is in the Raft
	// configuration.
	AllowedNodes []string `hcl:"allowed_nodes,optional" yaml:"allowed_nodes" json:"allowed_nodes"`
	// DenySerials lists the serial numbers (hex) of retired node
	// certificates: refused on every handshake, either way, though the
	// CA signed them.
	DenySerials []string `hcl:"deny_serials,optional" yaml:"deny_serials" json:"deny_serials"`
}

// RaftBlock is the Raft timing.
type RaftBlock struct {
	HeartbeatTimeout   string `hcl:"heartbeat_timeout,optional" yaml:"heartbeat_timeout" json:"heartbeat_timeout"`
	ElectionTimeout    string `hcl:"election_timeout,optional" yaml:"election_timeout" json:"election_timeout"`
	LeaderLeaseTimeout string `hcl:"leader_lease_timeout,optional" yaml:"leader_lease_timeout" json:"leader_lease_timeout"`
	CommitTimeout      string `hcl:"commit_timeout,optional" yaml:"commit_timeout" json:"commit_timeout"`
	SnapshotInterval   string `hcl:"snapshot_interval,optional" yaml:"snapshot_interval" json:"snapshot_interval"`
	SnapshotThreshold  *int   `hcl:"snapshot_threshold,optional" yaml:"snapshot_threshold" json:"snapshot_threshold"`
	TrailingLogs       *int   `hcl:"trailing_logs,optional" yaml:"trailing_logs" json:"trailing_logs"`
	// SuspectAfter: a follower whose leader is silent this long starts an
	// election (default twice the lease; "0s" leaves it to Raft's
	// randomised heartbeat timeout).
	SuspectAfter string `hcl:"suspect_after,optional" yaml:"suspect_after" json:"suspect_after"`
	// SuspectStagger: the pause between the followers' elections, best
	// gateway last (default suspect_after / 8).
	SuspectStagger string `hcl:"suspect_stagger,optional" yaml:"suspect_stagger" json:"suspect_stagger"`
}

// ReplicationBlock tunes the SA feed.
type ReplicationBlock struct {
	BatchWindow    string   `hcl:"batch_window,optional" yaml:"batch_window" json:"batch_window"`
	MaxBatch       *int     `hcl:"max_batch,optional" yaml:"max_batch" json:"max_batch"`
	ReplayInterval string   `hcl:"replay_interval,optional" yaml:"replay_interval" json:"replay_interval"`
	MinSeqJump     *int64   `hcl:"min_seq_jump,optional" yaml:"min_seq_jump" json:"min_seq_jump"`
	MaxPacketRate  *float64 `hcl:"max_packet_rate,optional" yaml:"max_packet_rate" json:"max_packet_rate"`
	// ReplayBudget caps the replay records one sync commits; more moved
	// counters are synced in turn over several intervals.
	ReplayBudget *int `hcl:"replay_budget,optional" yaml:"replay_budget" json:"replay_budget"`
	// StageInterval is the least time between a standby's staging rounds.
	StageInterval string `hcl:"stage_interval,optional" yaml:"stage_interval" json:"stage_interval"`
	// StageInbound pre-installs the inbound states on a standby.
	StageInbound *bool `hcl:"stage_inbound,optional" yaml:"stage_inbound" json:"stage_inbound"`
}

// TakeoverBlock bounds the takeover steps.
type TakeoverBlock struct {
	BarrierTimeout string `hcl:"barrier_timeout,optional" yaml:"barrier_timeout" json:"barrier_timeout"`
	ClaimTimeout   string `hcl:"claim_timeout,optional" yaml:"claim_timeout" json:"claim_timeout"`
	InstallTimeout string `hcl:"install_timeout,optional" yaml:"install_timeout" json:"install_timeout"`
	FenceTimeout   string `hcl:"fence_timeout,optional" yaml:"fence_timeout" json:"fence_timeout"`
	HandoverGrace  string `hcl:"handover_grace,optional" yaml:"handover_grace" json:"handover_grace"`
}

// ProviderBlock selects the provider and the floating resources. The
// block named like the type carries that provider's own settings; each
// provider package documents and validates its keys.
type ProviderBlock struct {
	Type      string          `hcl:"type,optional" yaml:"type" json:"type"`
	Resources []ResourceBlock `hcl:"resource,block" yaml:"resources" json:"resources"`
	AWS       *aws.Settings   `hcl:"aws,block" yaml:"aws" json:"aws"`
	GCP       *gcp.Settings   `hcl:"gcp,block" yaml:"gcp" json:"gcp"`
	Azure     *azure.Settings `hcl:"azure,block" yaml:"azure" json:"azure"`
	Linux     *linux.Settings `hcl:"linux,block" yaml:"linux" json:"linux"`
}

// ResourceBlock is one floating resource.
type ResourceBlock struct {
	Kind string `hcl:"kind" yaml:"kind" json:"kind"`
	ID   string `hcl:"id" yaml:"id" json:"id"`
}

// DataplaneBlock selects the dataplane.
type DataplaneBlock struct {
	Type       string `hcl:"type,optional" yaml:"type" json:"type"`
	ViciSocket string `hcl:"vici_socket,optional" yaml:"vici_socket" json:"vici_socket"`
	// ReestablishTemplate is a JSON or YAML file holding the gateway's
	// connection in VICI load-conn form (version, proposals, local/remote
	// auth, children...). After a takeover the agent derives one
	// connection per known peer from it and initiates a fresh IKE SA, so
	// the peers' next DPD or rekey finds a live IKE SA. Empty: no
	// re-establishment (the peers restart at their next DPD or rekey).
	ReestablishTemplate string `hcl:"reestablish_template,optional" yaml:"reestablish_template" json:"reestablish_template"`
	// HAListen turns IKE continuity on: the address Handoff binds, port
	// 4510, as the peer of the local charon's ha plugin (its `remote`
	// setting). The IKE_SAs are then replicated and carried across a
	// takeover, and re-establishment is only the fallback (docs/ipsec.md,
	// "IKE continuity"). HACharon is the plugin's `local` address.
	HAListen string `hcl:"ha_listen,optional" yaml:"ha_listen" json:"ha_listen"`
	HACharon string `hcl:"ha_charon,optional" yaml:"ha_charon" json:"ha_charon"`
}

// haPort is the ha plugin's fixed UDP port (HA_PORT in strongSwan).
const haPort = 4510

// haChannel checks the ha channel's addresses: both or none, distinct,
// loopback (the channel carries key material unencrypted), and only with
// the strongswan dataplane.
func haChannel(d *DataplaneBlock, dataplane string, bad func(key, format string, args ...any)) (listen, charon netip.AddrPort) {
	if d.HAListen == "" && d.HACharon == "" {
		return
	}
	if dataplane != "strongswan" {
		bad("dataplane.ha_listen", "IKE continuity needs dataplane type \"strongswan\" (charon's ha plugin), not %q", dataplane)
		return
	}
	parse := func(key, v string) netip.Addr {
		if v == "" {
			bad(key, "required with the other ha_ key (the ha plugin's `remote` and `local` settings)")
			return netip.Addr{}
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			bad(key, "%q is not an IP address (the port is always %d)", v, haPort)
			return netip.Addr{}
		}
		if !a.IsLoopback() {
			bad(key, "%s is not a loopback address: the ha channel carries key material in clear, and must not leave the host", a)
		}
		return a
	}
	l, c := parse("dataplane.ha_listen", d.HAListen), parse("dataplane.ha_charon", d.HACharon)
	if l.IsValid() && l == c {
		bad("dataplane.ha_listen", "%s is also ha_charon: the two ends need different addresses", l)
	}
	return netip.AddrPortFrom(l, haPort), netip.AddrPortFrom(c, haPort)
}

// Defaults returns the built-in configuration.
func Defaults() File {
	return File{
		Role:      "gateway",
		Priority:  ptr(100),
		DataDir:   "/var/lib/handoff",
		BindAddr:  "0.0.0.0:7946",
		Bootstrap: ptr(false),
		LogLevel:  "info",
		LogFormat: "text",
		TLS:       &TLSBlock{CA: "/etc/handoff/tls/ca.pem", Cert: "/etc/handoff/tls/node.pem", Key: "/etc/handoff/tls/node-key.pem"},
		Raft: &RaftBlock{HeartbeatTimeout: "150ms", ElectionTimeout: "150ms", LeaderLeaseTimeout: "50ms",
			CommitTimeout: "5ms", SnapshotInterval: "30s", SnapshotThreshold: ptr(8192), TrailingLogs: ptr(10240)},
		Replication: &ReplicationBlock{BatchWindow: "0s", MaxBatch: ptr(256), ReplayInterval: "100ms",
			MinSeqJump: ptr(int64(1 << 16)), MaxPacketRate: ptr(1e6), ReplayBudget: ptr(8192), StageInterval: "250ms",
			StageInbound: ptr(false)},
		Takeover:  &TakeoverBlock{BarrierTimeout: "5s", ClaimTimeout: "20s", InstallTimeout: "30s", FenceTimeout: "2s", HandoverGrace: "1s"},
		Provider:  &ProviderBlock{Type: "memory"},
		Dataplane: &DataplaneBlock{Type: "memory", ViciSocket: "/var/run/charon.vici"},
		Health: &HealthBlock{Interval: "1s", Timeout: "500ms", Rise: ptr(2), Fall: ptr(3), ReportInterval: "1s",
			CharonProcess: "charon-systemd"},
		// Realtime scheduling is opt-in: measured, it held the lease
		// against busy loops no better than the lane and the leader's
		// heartbeat do at normal priority, and under a 100,000-SA storm
		// the agent's own threads at one RR priority waited out each
		// other's 100 ms time slices and failed over for nothing
		// (docs/architecture.md, "Stable under load").
		Scheduling: &SchedulingBlock{RealtimePriority: ptr(0), Policy: "rr", LockMemory: ptr(false),
			GCPercent: ptr(200), MemoryLimit: "0", ProcsPerCPU: ptr(DefaultProcsPerCPU)},
		// The API's own default (operator/api.DefaultAddr): loopback only.
		API:     &APIBlock{Addr: "127.0.0.1:7950"},
		Webhook: &WebhookBlock{},
		Notify:  &NotifyBlock{Timeout: "30s"},
	}
}

func ptr[T any](v T) *T { return &v }

// DefaultProcsPerCPU is scheduling.procs_per_cpu's default: measured with
// `make bench-stability` (docs/performance.md, Stability under load).
// maxProcsPerCPU bounds it: each P may run a thread.
const (
	DefaultProcsPerCPU = 8
	maxProcsPerCPU     = 64
)

// Parse decodes a config file. format is "hcl" or "yaml"; "" picks it from
// the file name (.hcl, .yaml, .yml).
func Parse(name string, src []byte, format string) (File, error) {
	if format == "" {
		switch strings.ToLower(filepath.Ext(name)) {
		case ".hcl":
			format = "hcl"
		case ".yaml", ".yml":
			format = "yaml"
		default:
			return File{}, fmt.Errorf("config %s: unknown format (use a .hcl, .yaml or .yml file)", name)
		}
	}
	var f File
	switch format {
	case "hcl":
		if err := decodeHCL(name, src, &f); err != nil {
			return File{}, fmt.Errorf("config %s: %w", name, err)
		}
	case "yaml":
		dec := yaml.NewDecoder(bytes.NewReader(src))
		dec.KnownFields(true)
		if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
			return File{}, fmt.Errorf("config %s:\n  %w", name, yamlError(src, err))
		}
	default:
		return File{}, fmt.Errorf("config %s: unknown format %q", name, format)
	}
	return f, nil
}

// Load reads path and layers it over the defaults. A file that holds the
// cluster key inline is a secret file: refused if others may read it, as
// cluster_key_file is.
func Load(path string) (File, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("reading config: %w", err)
	}
	f, err := Parse(path, src, "")
	if err != nil {
		return File{}, err
	}
	f.at = locate(path, src)
	if f.ClusterKey != "" {
		st, err := os.Stat(path)
		if err != nil {
			return File{}, fmt.Errorf("reading config: %w", err)
		}
		if err := secretfile.Check(path, st.Mode()); err != nil {
			return File{}, fmt.Errorf("cluster_key: the key is inline, and %w, or move the key to a cluster_key_file", err)
		}
	}
	out := Defaults()
	Merge(&out, f)
	out.at = f.at
	return out, nil
}

// Merge overlays every field set in src onto dst: non-empty strings and
// slices, non-nil pointers; this package's blocks merge field by field, a
// provider's settings block replaces the earlier one whole. A key src sets
// (a command-line flag) no longer points at dst's line in its file.
func Merge(dst *File, src File) {
	merge(reflect.ValueOf(dst).Elem(), reflect.ValueOf(src), "", dst.at.forget)
}

var ownPkg = reflect.TypeOf(File{}).PkgPath()

func merge(dst, src reflect.Value, prefix string, set func(key string)) {
	for i := 0; i < src.NumField(); i++ {
		field := src.Type().Field(i)
		if !field.IsExported() {
			continue
		}
		key := prefix + tagName(field)
		sf, df := src.Field(i), dst.Field(i)
		switch sf.Kind() {
		case reflect.String:
			if sf.String() != "" {
				df.Set(sf)
				set(key)
			}
		case reflect.Slice:
			if sf.Len() > 0 {
				df.Set(sf)
				set(key)
			}
		case reflect.Pointer:
			if sf.IsNil() {
				continue
			}
			if sf.Elem().Kind() == reflect.Struct && sf.Elem().Type().PkgPath() == ownPkg {
				if df.IsNil() {
					df.Set(reflect.New(sf.Elem().Type()))
				}
				merge(df.Elem(), sf.Elem(), key+".", set)
			} else {
				df.Set(sf)
				set(key)
			}
		}
	}
}

// tagName is a field's key in HCL.
func tagName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("hcl"), ",")
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

// Config is the resolved, validated configuration.
type Config struct {
	NodeID         string
	Role           string
	Priority       int
	DataDir        string
	BindAddr       string
	AdvertiseAddr  string
	Bootstrap      bool
	Join           []string
	ClusterKey     []byte
	LogLevel       string
	LogFormat      string
	TLS            TLSBlock
	Heartbeat      time.Duration
	Election       time.Duration
	LeaderLease    time.Duration
	SuspectAfter   time.Duration
	SuspectStagger time.Duration
	Commit         time.Duration
	SnapInterval   time.Duration
	SnapThreshold  uint64
	TrailingLogs   uint64
	BatchWindow    time.Duration
	MaxBatch       int
	ReplayInterval time.Duration
	ReplayBudget   int
	StageInterval  time.Duration
	StageInbound   bool
	MinSeqJump     uint64
	MaxPacketRate  float64
	BarrierTimeout time.Duration
	ClaimTimeout   time.Duration
	InstallTimeout time.Duration
	FenceTimeout   time.Duration
	HandoverGrace  time.Duration
	ProviderType   string
	Resources      []ResourceBlock
	// ProviderSettings is the settings block of ProviderType (a
	// *aws.Settings, *gcp.Settings, ...), nil when the file has none.
	ProviderSettings any
	DataplaneType    string
	ViciSocket       string
	// HAListen and HACharon are the ha channel's two ends (with port
	// hasync.Port); HAListen is invalid when IKE continuity is off.
	HAListen, HACharon netip.AddrPort
	// Reestablish is the decoded reestablish_template (nil if unset).
	Reestablish map[string]any
	Health      Health
	// Scheduling is what the agent applies to itself at start.
	Scheduling rtsched.Request
	// GCPercent and MemoryLimit (bytes, 0: none) tune the Go runtime's
	// garbage collector.
	GCPercent   int
	MemoryLimit int64
	// ProcsPerCPU sets GOMAXPROCS to this many Ps per CPU (1: Go's own).
	ProcsPerCPU int
	// API, Webhook and Notify are the operator surface's blocks, checked
	// for form; the preflight reads the secret files they name.
	API     APIBlock
	Webhook WebhookBlock
	Notify  Notify
	// Warnings are what is valid but probably not meant (a gateway that
	// moves or carries nothing), each naming its key.
	Warnings []string
}

// Notify is the resolved notify block.
type Notify struct {
	// Commands maps a state (active, standby, fenced, faulty) to the
	// argument vector run on entering it; states without one are absent.
	Commands map[string][]string
	Timeout  time.Duration
}

// Health is the resolved health block.
type Health struct {
	ProbeAddress   netip.Addr
	Interval       time.Duration
	Timeout        time.Duration
	Rise, Fall     int
	ReportInterval time.Duration
	CharonProcess  string
	LocalChecks    bool
}

// Resolve validates f and converts it. Every problem is reported, each
// naming its key.
func Resolve(f File) (*Config, error) {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", f.at.where(key), key, fmt.Sprintf(format, args...)))
	}
	dur := func(key, v string, min time.Duration) time.Duration {
		d, err := time.ParseDuration(v)
		if err != nil {
			bad(key, "%q is not a duration (write e.g. \"150ms\" or \"2s\")", v)
			return 0
		}
		if d < min {
			bad(key, "%s is below the minimum %s", d, min)
		}
		return d
	}
	def := Defaults()
	Merge(&def, f)
	def.at = f.at
	f = def
	c := &Config{NodeID: f.NodeID, Role: f.Role, Priority: *f.Priority, DataDir: f.DataDir, BindAddr: f.BindAddr,
		AdvertiseAddr: f.AdvertiseAddr, Bootstrap: *f.Bootstrap, Join: f.Join, LogLevel: f.LogLevel, LogFormat: f.LogFormat,
		TLS: *f.TLS, ProviderType: f.Provider.Type, Resources: f.Provider.Resources, DataplaneType: f.Dataplane.Type,
		ViciSocket: f.Dataplane.ViciSocket}
	if c.NodeID == "" {
		bad("node_id", "required")
	} else if strings.ContainsAny(c.NodeID, " \t\n/") || len(c.NodeID) > 64 {
		bad("node_id", "%q must be at most 64 characters without spaces or slashes", c.NodeID)
	}
	if c.Role != "gateway" && c.Role != "witness" {
		bad("role", "%q is not gateway or witness", c.Role)
	}
	if c.Priority < 0 || c.Priority > 1000 {
		bad("priority", "%d is outside 0..1000", c.Priority)
	}
	if c.DataDir == "" {
		bad("data_dir", "required")
	}
	// bind_addr may ask for any free port (0); an address peers dial may not.
	if err := CheckHostPort(c.BindAddr, 0); err != nil {
		bad("bind_addr", "%v", err)
	}
	if c.AdvertiseAddr != "" {
		if err := CheckHostPort(c.AdvertiseAddr, 1); err != nil {
			bad("advertise_addr", "%v", err)
		} else if h, _, _ := net.SplitHostPort(c.AdvertiseAddr); h == "" || net.ParseIP(h) != nil && net.ParseIP(h).IsUnspecified() {
			bad("advertise_addr", "%q is not a reachable host:port", c.AdvertiseAddr)
		}
	} else if h, _, err := net.SplitHostPort(c.BindAddr); err == nil && (h == "" || net.ParseIP(h) != nil && net.ParseIP(h).IsUnspecified()) {
		bad("advertise_addr", "required when bind_addr %q listens on every address", c.BindAddr)
	}
	for i, j := range c.Join {
		if err := CheckHostPort(j, 1); err != nil {
			bad(fmt.Sprintf("join[%d]", i), "%v", err)
		}
	}
	switch {
	case f.ClusterKey != "" && f.ClusterKeyFile != "":
		bad("cluster_key", "set cluster_key or cluster_key_file, not both")
	case f.ClusterKey != "":
		c.ClusterKey = decodeKey("cluster_key", f.ClusterKey, bad)
	case f.ClusterKeyFile != "":
		c.ClusterKey = readKeyFile(f.ClusterKeyFile, bad)
	default:
		bad("cluster_key_file", "required: the 32-byte key (64 hex digits) that seals SA keys in the Raft log")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("log_format", "%q is not text or json", c.LogFormat)
	}
	for key, v := range map[string]string{"tls.ca": c.TLS.CA, "tls.cert": c.TLS.Cert, "tls.key": c.TLS.Key} {
		if v == "" {
			bad(key, "required: Raft runs over mutual TLS only (create material with `handoff tls`)")
		}
	}
	if _, err := pki.ParseDenyList(c.TLS.DenySerials); err != nil {
		bad("tls.deny_serials", "%v", err)
	}
	r := f.Raft
	c.Heartbeat = dur("raft.heartbeat_timeout", r.HeartbeatTimeout, 10*time.Millisecond)
	c.Election = dur("raft.election_timeout", r.ElectionTimeout, 10*time.Millisecond)
	c.LeaderLease = dur("raft.leader_lease_timeout", r.LeaderLeaseTimeout, 5*time.Millisecond)
	c.Commit = dur("raft.commit_timeout", r.CommitTimeout, time.Millisecond)
	c.SnapInterval = dur("raft.snapshot_interval", r.SnapshotInterval, time.Second)
	if c.LeaderLease > 0 && c.Heartbeat > 0 && 2*c.LeaderLease >= c.Heartbeat {
		bad("raft.leader_lease_timeout", "%s must be under half of raft.heartbeat_timeout (%s), so a cut-off leader steps down and fences itself before a follower can be elected", c.LeaderLease, c.Heartbeat)
	}
	switch {
	case r.SuspectAfter == "":
		c.SuspectAfter = 2 * c.LeaderLease
	default:
		c.SuspectAfter = dur("raft.suspect_after", r.SuspectAfter, 0)
		if c.SuspectAfter > 0 && c.SuspectAfter < 2*c.LeaderLease {
			bad("raft.suspect_after", "%s must be at least twice raft.leader_lease_timeout (%s), so a cut-off leader has stepped down before a follower votes for another", c.SuspectAfter, c.LeaderLease)
		}
	}
	if c.SuspectAfter > 0 && c.Heartbeat > 0 && c.SuspectAfter >= c.Heartbeat {
		if r.SuspectAfter != "" {
			bad("raft.suspect_after", "%s must be under raft.heartbeat_timeout (%s), or Raft's own timeout always comes first", c.SuspectAfter, c.Heartbeat)
		}
		c.SuspectAfter = 0
	}
	if r.SuspectStagger != "" {
		c.SuspectStagger = dur("raft.suspect_stagger", r.SuspectStagger, time.Millisecond)
	}
	if *r.SnapshotThreshold < 1 {
		bad("raft.snapshot_threshold", "%d must be positive", *r.SnapshotThreshold)
	}
	if *r.TrailingLogs < 0 {
		bad("raft.trailing_logs", "%d must not be negative", *r.TrailingLogs)
	}
	c.SnapThreshold, c.TrailingLogs = uint64(max(*r.SnapshotThreshold, 0)), uint64(max(*r.TrailingLogs, 0))
	p := f.Replication
	c.BatchWindow = dur("replication.batch_window", p.BatchWindow, 0)
	c.ReplayInterval = dur("replication.replay_interval", p.ReplayInterval, time.Millisecond)
	c.MaxBatch = *p.MaxBatch
	if c.MaxBatch < 1 || c.MaxBatch > 65536 {
		bad("replication.max_batch", "%d is outside 1..65536", c.MaxBatch)
	}
	if *p.MinSeqJump < 1 {
		bad("replication.min_seq_jump", "%d must be positive", *p.MinSeqJump)
	}
	c.MinSeqJump = uint64(max(*p.MinSeqJump, 0))
	c.ReplayBudget = *p.ReplayBudget
	if c.ReplayBudget < 1 {
		bad("replication.replay_budget", "%d must be positive", c.ReplayBudget)
	}
	c.StageInterval = dur("replication.stage_interval", p.StageInterval, time.Millisecond)
	c.StageInbound = *p.StageInbound
	c.MaxPacketRate = *p.MaxPacketRate
	if c.MaxPacketRate <= 0 {
		bad("replication.max_packet_rate", "%g must be positive", c.MaxPacketRate)
	}
	t := f.Takeover
	c.BarrierTimeout = dur("takeover.barrier_timeout", t.BarrierTimeout, time.Millisecond)
	c.ClaimTimeout = dur("takeover.claim_timeout", t.ClaimTimeout, time.Millisecond)
	c.InstallTimeout = dur("takeover.install_timeout", t.InstallTimeout, time.Millisecond)
	c.FenceTimeout = dur("takeover.fence_timeout", t.FenceTimeout, time.Millisecond)
	c.HandoverGrace = dur("takeover.handover_grace", t.HandoverGrace, time.Millisecond)
	for i, r := range c.Resources {
		if r.Kind == "" || r.ID == "" {
			bad(fmt.Sprintf("provider.resource[%d]", i), "needs kind and id")
		}
	}
	switch c.ProviderType {
	case "memory":
	case "aws":
		c.ProviderSettings = settingsOf(f.Provider.AWS, "provider.aws", c.Resources, bad)
	case "gcp":
		c.ProviderSettings = settingsOf(f.Provider.GCP, "provider.gcp", c.Resources, bad)
	case "azure":
		c.ProviderSettings = settingsOf(f.Provider.Azure, "provider.azure", c.Resources, bad)
	case "linux":
		c.ProviderSettings = settingsOf(f.Provider.Linux, "provider.linux", c.Resources, bad)
	default:
		bad("provider.type", "%q is not memory, aws, gcp, azure or linux", c.ProviderType)
	}
	switch c.DataplaneType {
	case "memory", "strongswan":
	default:
		bad("dataplane.type", "%q is not memory or strongswan", c.DataplaneType)
	}
	if path := f.Dataplane.ReestablishTemplate; path != "" {
		c.Reestablish = readTemplate(path, bad)
	}
	c.HAListen, c.HACharon = haChannel(f.Dataplane, c.DataplaneType, bad)
	h := f.Health
	c.Health = Health{Rise: *h.Rise, Fall: *h.Fall, CharonProcess: h.CharonProcess, LocalChecks: c.DataplaneType == "strongswan"}
	if h.LocalChecks != nil {
		c.Health.LocalChecks = *h.LocalChecks
	}
	if h.ProbeAddress != "" {
		a, err := netip.ParseAddr(h.ProbeAddress)
		if err != nil {
			bad("health.probe_address", "%q is not an IP address", h.ProbeAddress)
		}
		c.Health.ProbeAddress = a
	}
	c.Health.Interval = dur("health.interval", h.Interval, 10*time.Millisecond)
	c.Health.Timeout = dur("health.timeout", h.Timeout, time.Millisecond)
	c.Health.ReportInterval = dur("health.report_interval", h.ReportInterval, 10*time.Millisecond)
	if c.Health.Rise < 1 || c.Health.Fall < 1 {
		bad("health.rise", "rise (%d) and fall (%d) must be at least 1", c.Health.Rise, c.Health.Fall)
	}
	s := f.Scheduling
	c.Scheduling = rtsched.Request{Priority: *s.RealtimePriority, LockMemory: *s.LockMemory}
	if p, err := rtsched.ParsePolicy(s.Policy); err != nil {
		bad("scheduling.policy", "%v", err)
	} else {
		c.Scheduling.Policy = p
	}
	if c.Scheduling.Priority < 0 || c.Scheduling.Priority > rtsched.MaxPriority {
		bad("scheduling.realtime_priority", "%d is outside 0..%d (0 leaves the agent's scheduling as it was started)", c.Scheduling.Priority, rtsched.MaxPriority)
	}
	c.GCPercent = *s.GCPercent
	if c.GCPercent < 0 {
		bad("scheduling.gc_percent", "%d must not be negative (100 is Go's default; higher collects less often)", c.GCPercent)
	}
	if lim, err := parseBytes(s.MemoryLimit); err != nil {
		bad("scheduling.memory_limit", "%v", err)
	} else {
		c.MemoryLimit = lim
	}
	c.ProcsPerCPU = *s.ProcsPerCPU
	if c.ProcsPerCPU < 1 || c.ProcsPerCPU > maxProcsPerCPU {
		bad("scheduling.procs_per_cpu", "%d is outside 1..%d (1 is Go's own one P per CPU)", c.ProcsPerCPU, maxProcsPerCPU)
	}
	c.API, c.Webhook = *f.API, *f.Webhook
	resolveOperator(c, bad)
	c.Notify = resolveNotify(*f.Notify, dur, bad)
	c.Warnings = warnings(c, f.at)
	if len(errs) > 0 {
		return nil, Invalid(errs)
	}
	return c, nil
}

// CheckHostPort checks that addr is host:port with a numeric port from
// minPort to 65535. net.SplitHostPort takes any port string ("-1",
// "99999", a service name), which Listen or Dial would only refuse later,
// at start or at the first join.
func CheckHostPort(addr string, minPort int) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < minPort || p > 65535 {
		return fmt.Errorf("%q: port %q is not a number from %d to 65535", addr, port, minPort)
	}
	return nil
}

// parseBytes reads a size such as "0", "512MiB", "2GiB" or "1073741824".
func parseBytes(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"B", 1}, {"", 1}}
	for _, u := range units {
		num, ok := strings.CutSuffix(v, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || n < 0 || n > math.MaxInt64/u.mult {
			break
		}
		return n * u.mult, nil
	}
	return 0, fmt.Errorf("%q is not a size (write e.g. \"0\", \"512MiB\" or \"2GiB\")", v)
}

// Invalid reports every problem found, one per line, each naming its key.
// The agent's preflight (cmd/handoff) reports its own the same way.
func Invalid(errs []error) error {
	return fmt.Errorf("invalid configuration:\n  %w", lines(errs))
}

type lines []error

func (l lines) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n  ")
}

func (l lines) Unwrap() []error { return l }

func decodeKey(key, v string, bad func(string, string, ...any)) []byte {
	b, err := hex.DecodeString(strings.TrimSpace(v))
	if err != nil || len(b) != 32 {
		bad(key, "must be 64 hex digits (32 bytes); got %d characters", len(strings.TrimSpace(v)))
		return nil
	}
	return b
}

func readKeyFile(path string, bad func(string, string, ...any)) []byte {
	b, err := secretfile.Read(path)
	if err != nil {
		bad("cluster_key_file", "%v", err)
		return nil
	}
	defer clear(b)
	return decodeKey("cluster_key_file", string(b), bad)
}

// validator is what every provider's Settings offers: its own keys
// checked, and a resource checked against its kinds and ID forms.
type validator interface {
	Validate() error
	ValidateResource(providers.Resource) error
}

// settingsOf validates a provider's settings block and the resources it is
// to move; nil settings mean "all from the instance metadata service", and
// the resources are checked against the zero settings. A resource's error
// names its kind when the provider moves no such kind, its id otherwise.
func settingsOf[T any, P interface {
	*T
	validator
}](s P, key string, rs []ResourceBlock, bad func(string, string, ...any)) any {
	check := s
	if s == nil {
		check = new(T)
	} else if err := s.Validate(); err != nil {
		bad(key, "%v", err)
	}
	for i, r := range rs {
		if r.Kind == "" || r.ID == "" {
			continue // reported as such
		}
		if err := check.ValidateResource(providers.Resource{Kind: r.Kind, ID: r.ID}); err != nil {
			field := "id"
			if errors.Is(err, providers.ErrUnknownKind) {
				field = "kind"
			}
			bad(fmt.Sprintf("provider.resource[%d].%s", i, field), "%v", err)
		}
	}
	if s == nil {
		return nil
	}
	return s
}

// readTemplate reads a connection template (JSON is YAML too).
func readTemplate(path string, bad func(string, string, ...any)) map[string]any {
	src, err := os.ReadFile(path)
	if err != nil {
		bad("dataplane.reestablish_template", "%v", err)
		return nil
	}
	var m map[string]any
	if err := yaml.Unmarshal(src, &m); err != nil {
		bad("dataplane.reestablish_template", "%s: %v", path, err)
		return nil
	}
	if len(m) == 0 {
		bad("dataplane.reestablish_template", "%s holds no connection", path)
		return nil
	}
	if _, ok := m["children"]; !ok {
		bad("dataplane.reestablish_template", "%s: the connection has no children section", path)
	}
	return m
}
