package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/handoffvpn/handoff/lab/topo"
	"github.com/handoffvpn/handoff/operator/api"
)

// raftPort is where every agent listens for Raft and cluster RPC, on its
// gateway's outside address (the uplink: losing it cuts the node off from
// the cluster too, as in a cloud subnet with one interface).
const raftPort = 7946

// agentTiming is Raft's timing for the lab's agents.
type agentTiming struct {
	Heartbeat, Election, Lease time.Duration
	// SuspectAfter is raft.suspect_after, as written ("" for the default,
	// twice the lease; "0s" for Raft's own timeout alone).
	SuspectAfter string
	// ProbeTimeout bounds the linux provider's owner query and yield.
	ProbeTimeout time.Duration
	// HealthInterval is the period of the agent's own charon checks,
	// HealthTimeout the bound of one (charon answers VICI slowly when the
	// guest's CPU is busy: a tight bound makes false alarms).
	HealthInterval, HealthTimeout time.Duration
	// ReplayInterval is how often the active commits replay counters.
	ReplayInterval time.Duration
}

// agentSpec is one node's agent.
type agentSpec struct {
	Node      *topo.Node
	ID        string
	Addr      string // outside address, host part
	Witness   bool
	Bootstrap bool
	Join      string
	Vici      string
	Dir       string // configs and logs (hostfs)
	DataDir   string // Raft's files (tmpfs)
	StateDir  string // the linux provider's term records (tmpfs)
	PKI       string
	Timing    agentTiming
	// Nice is the agent's scheduling priority (nice(1) value).
	Nice int
	// Realtime is scheduling.realtime_priority (0: normal scheduling).
	Realtime int
	// ProcsPerCPU is scheduling.procs_per_cpu.
	ProcsPerCPU int
	// APIToken authorises the operator API's mutating endpoints.
	APIToken string
	// AWS: the agent moves the VIP and the route through the EC2 API of
	// the emulated account (cloud.go) instead of the linux provider;
	// AWSCAFile is the emulator's certificate.
	AWS       bool
	AWSCAFile string
	// CPUProfile: the agent writes a CPU profile to Dir/cpu.prof (kept
	// when it stops on SIGTERM, not when it is killed).
	CPUProfile bool
	// Reestablish is the connection template file (JSON) the agent
	// re-establishes IKE SAs from after a takeover; empty: none.
	Reestablish string
	// HA: the agent carries the IKE_SAs through charon's ha plugin.
	HA bool
}

var agentConf = template.Must(template.New("agent").Parse(`# Handoff agent {{.ID}} in the kernel lab (lab/scenario/e2e).
node_id          = "{{.ID}}"
role             = "{{if .Witness}}witness{{else}}gateway{{end}}"
bind_addr        = "{{.Addr}}:{{.Port}}"
advertise_addr   = "{{.Addr}}:{{.Port}}"
data_dir         = "{{.DataDir}}"
cluster_key_file = "{{.PKI}}/cluster.key"
log_level        = "info"
log_format       = "json"
{{- if .Bootstrap}}
bootstrap        = true
{{- else}}
join             = ["{{.Join}}"]
{{- end}}

tls {
  ca   = "{{.PKI}}/ca.pem"
  cert = "{{.PKI}}/{{.ID}}.pem"
  key  = "{{.PKI}}/{{.ID}}-key.pem"
}

raft {
  heartbeat_timeout    = "{{.Timing.Heartbeat}}"
  election_timeout     = "{{.Timing.Election}}"
  leader_lease_timeout = "{{.Timing.Lease}}"
{{- if .Timing.SuspectAfter}}
  suspect_after        = "{{.Timing.SuspectAfter}}"
{{- end}}
  # Raft's leader sends an (empty) AppendEntries to every follower each
  # commit_timeout: at 2 ms that was most of the agents' CPU in the guest,
  # whose clock reads are system calls (the profile: time.Now and the
  # runtime's timers at 57 %). Takeovers do not wait for it (Barrier).
  commit_timeout       = "50ms"
}

replication {
  batch_window    = "2ms"
  replay_interval = "{{.Timing.ReplayInterval}}"
}

scheduling {
  procs_per_cpu = {{.ProcsPerCPU}}
{{- if .Realtime}}
  realtime_priority = {{.Realtime}}
{{- end}}
}

# A leadership transfer in the guest takes up to a second (its one CPU
# runs three agents and four charons), and is asked for again when it
# times out: the old active keeps carrying the tunnels for up to 3 s.
takeover {
  handover_grace = "3s"
}
{{if .Witness}}
provider {
  type = "memory"
}

dataplane {
  type = "memory"
}
{{- else if .AWS}}
# The emulated EC2 account (lab/scenario/e2e/cloud.go): instance,
# interface and region come from IMDS at 169.254.169.254, as on EC2.
provider {
  type = "aws"
  resource {
    kind = "eip"
    id   = "{{.AWSAllocation}}"
  }
  resource {
    kind = "route"
    id   = "{{.AWSRoute}}"
  }
  aws {
    endpoint        = "https://127.0.0.1:{{.AWSPort}}"
    eip_private_ips = {
      "{{.AWSAllocation}}" = "{{.VIP}}"
    }
    attempt_timeout = "2s"
  }
}
{{- else}}
provider {
  type = "linux"
  resource {
    kind = "vip"
    id   = "{{.VIP}}/24"
  }
  resource {
    kind = "vip"
    id   = "{{.VIPInner}}/24 dev {{.InnerIf}}"
  }
  linux {
    interface         = "{{.OuterIf}}"
    interfaces        = ["{{.InnerIf}}"]
    announce_count    = 5
    announce_interval = "100ms"
    probe_timeout     = "{{.Timing.ProbeTimeout}}"
    state_dir         = "{{.StateDir}}"
  }
}
{{- end}}
{{- if not .Witness}}

dataplane {
  type        = "strongswan"
  vici_socket = "{{.Vici}}"
{{- if .Reestablish}}
  reestablish_template = "{{.Reestablish}}"
{{- end}}
{{- if .HA}}
  ha_listen = "127.0.0.2"
  ha_charon = "127.0.0.1"
{{- end}}
}

health {
  interval = "{{.Timing.HealthInterval}}"
  timeout  = "{{.Timing.HealthTimeout}}"
  rise     = 1
  fall     = 3
}
{{- end}}
`))

// Agent is one running `handoff agent`.
type Agent struct {
	spec agentSpec
	cmd  *exec.Cmd
	log  string
	done chan struct{}

	mu      sync.Mutex // guards waitErr
	waitErr error
}

// writeConfig renders the agent's configuration file.
func (s agentSpec) writeConfig() (string, error) {
	var b bytes.Buffer
	data := struct {
		agentSpec
		Port                    int
		VIP, OuterIf            string
		VIPInner, InnerIf       string
		AWSAllocation, AWSRoute string
		AWSPort                 int
	}{s, raftPort, topo.VIPOuter, topo.OuterIf, topo.VIPInner, topo.InnerIf, awsAllocation, awsRouteTbl + "|" + topo.ClientNet, awsAPIPort}
	if err := agentConf.Execute(&b, data); err != nil {
		return "", fmt.Errorf("rendering agent config of %s: %w", s.ID, err)
	}
	for _, d := range []string{s.Dir, s.DataDir, s.StateDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", fmt.Errorf("creating %s: %w", d, err)
		}
	}
	path := filepath.Join(s.Dir, "agent.hcl")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return path, nil
}

// startAgent starts `handoff agent` inside the spec's namespace.
func startAgent(bin string, s agentSpec) (*Agent, error) {
	conf, err := s.writeConfig()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(s.Dir, "agent.log")
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating agent log of %s: %w", s.ID, err)
	}
	// Agents run at a higher priority than charon and the probes, as an
	// HA daemon should (keepalived runs at a real-time priority): on the
	// guest's one slow CPU a starved agent misses its Raft lease and
	// steps down, which is an outage of its own.
	args := []string{"-n", strconv.Itoa(s.Nice), bin, "agent", "-config", conf}
	if s.CPUProfile {
		args = append(args, "-cpuprofile", filepath.Join(s.Dir, "cpu.prof"))
	}
	cmd := exec.Command("nice", args...)
	// A larger GC target: the agents allocate little, and every
	// collection is CPU the guest's one slow processor lacks.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GOGC=400",
		// The operator API's token (promote and drain need one).
		"HANDOFF_API_TOKEN=" + s.APIToken, "HANDOFF_TOKEN=" + s.APIToken}
	if s.AWS {
		cmd.Env = append(cmd.Env, awsEnv(s.AWSCAFile)...)
	}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, and gone with the scenario: a killed scenario
	// must not leave agents behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.Node.Start(cmd); err != nil {
		out.Close()
		return nil, err
	}
	a := &Agent{spec: s, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		out.Close()
		a.mu.Lock()
		a.waitErr = err
		a.mu.Unlock()
		close(a.done)
	}()
	return a, nil
}

// Kill ends the agent with SIGKILL, as a crash would, and waits for it.
func (a *Agent) Kill() {
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.cmd.Process.Kill()
	<-a.done
}

// Close stops the agent (SIGTERM, then SIGKILL after 3 s). Safe twice.
func (a *Agent) Close() {
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(3 * time.Second):
		a.Kill()
	}
}

// logLine is one JSON line of an agent's log (slog's JSON handler:
// durations in nanoseconds).
type logLine struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Msg     string    `json:"msg"`
	Node    string    `json:"node"`
	Term    uint64    `json:"term"`
	SAs     int       `json:"sas"`
	Detect  int64     `json:"detect"`
	Elect   int64     `json:"elect"`
	Claim   int64     `json:"claim"`
	Move    int64     `json:"move"`
	Install int64     `json:"install"`
	Total   int64     `json:"total"`
	Reason  string    `json:"reason"`
	Err     string    `json:"err"`
	IKESAs  int       `json:"ike_sas"`
}

// Lines parses the agent's log so far (non-JSON lines are skipped).
func (a *Agent) Lines() []logLine {
	data, err := os.ReadFile(a.log)
	if err != nil {
		return nil
	}
	var out []logLine
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var l logLine
		if json.Unmarshal(line, &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// waitLog waits until the agent logged a line msg satisfies.
func (a *Agent) waitLog(ctx context.Context, d time.Duration, what string, ok func(logLine) bool) (logLine, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, l := range a.Lines() {
			if ok(l) {
				return l, nil
			}
		}
		select {
		case <-a.done:
			return logLine{}, fmt.Errorf("agent %s exited while waiting for %s: %v\n%s", a.spec.ID, what, a.exitErr(), a.tail())
		case <-ctx.Done():
			return logLine{}, fmt.Errorf("agent %s: waiting for %s: %w\n%s", a.spec.ID, what, ctx.Err(), a.tail())
		case <-tick.C:
		}
	}
}

func (a *Agent) exitErr() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.waitErr
}

func (a *Agent) tail() string {
	data, _ := os.ReadFile(a.log)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 12 {
		lines = lines[len(lines)-12:]
	}
	return strings.Join(lines, "\n")
}

// makePKI creates the cluster's CA, one certificate per node and the
// cluster key with the handoff binary itself, as an operator would.
func makePKI(ctx context.Context, bin, dir string, nodes map[string]string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.WaitDelay = time.Second
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("handoff %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	_ = gctx
	g.Go(func() error { return run("keygen", "-out", filepath.Join(dir, "cluster.key")) })
	if err := run("tls", "ca", "-out", dir, "-name", "handoff lab CA"); err != nil {
		return errors.Join(err, g.Wait())
	}
	for id, host := range nodes {
		g.Go(func() error { return run("tls", "cert", "-ca", dir, "-node", id, "-hosts", host, "-out", dir) })
	}
	return g.Wait()
}

// cpuTimes returns the CPU time (user + system) each process in the guest
// has used, by pid and command name: the lab runs every node on one
// (slow) CPU, and Raft's timing depends on who else uses it.
func cpuTimes() map[string]time.Duration {
	out := map[string]time.Duration{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(data)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) < 13 {
			continue
		}
		var ut, st int64
		fmt.Sscan(f[11], &ut)
		fmt.Sscan(f[12], &st)
		// USER_HZ is 100.
		out[e.Name()+":"+s[open+1:close]] = time.Duration(ut+st) * 10 * time.Millisecond
	}
	return out
}

// operatorCall sends an operator request (POST /v1/<verb>, the call the
// CLI makes) to the agent's API inside n's namespace and returns a channel
// with its outcome. The scenario calls the API itself rather than running
// `handoff drain`: a start of the handoff binary (cloud SDKs and all) took
// ~19 s of paging it in through the guest's hostfs, after which the
// scenario had long stopped watching.
func operatorCall(token string, n *topo.Node, verb string) <-chan error {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := n.Do(func() error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	done := make(chan error, 1)
	go func() {
		defer client.CloseIdleConnections()
		req, err := http.NewRequest(http.MethodPost, "http://"+api.DefaultAddr+"/v1/"+verb, strings.NewReader("{}"))
		if err != nil {
			done <- err
			return
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			done <- fmt.Errorf("%s on %s: %w", verb, n.Name, err)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != http.StatusOK {
			done <- fmt.Errorf("%s on %s: %s: %s", verb, n.Name, resp.Status, body)
			return
		}
		done <- nil
	}()
	return done
}
