// Package cluster runs several Handoff nodes in one process: real Raft over
// loopback TCP with mutual TLS (through internal/faultnet, so links can be
// cut), one agent per node, memory dataplanes sharing one Wire and a
// provider per node. It is the in-process cluster of the demo and of the
// cluster tests.
package cluster

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/agent/ikecarry"
	"github.com/handoffvpn/handoff/internal/bulk"
	"github.com/handoffvpn/handoff/internal/faultnet"
	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/ipsec/memdp"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/memory"
	"github.com/handoffvpn/handoff/raftstore"
)

// NodeSpec describes one node.
type NodeSpec struct {
	ID       string
	Role     raftstore.Role
	Priority int
}

// Options configure a cluster.
type Options struct {
	Nodes []NodeSpec
	// Dir holds one data directory per node.
	Dir string
	// HeartbeatTimeout sets the Raft timing: the election timeout equals
	// it and the leader lease is a third of it, so a cut-off leader steps
	// down (and fences) before any follower can start an election.
	HeartbeatTimeout time.Duration
	// Resources are the floating resources claimed at takeover.
	Resources []providers.Resource
	// NewProvider returns node's provider; default: a memory cloud.
	NewProvider func(node string) (providers.Provider, error)
	// WrapProvider, if set, decorates each node's provider (the operator
	// surface's metrics time every call).
	WrapProvider func(node string, p providers.Provider) providers.Provider
	// ProviderLatency is the memory cloud's per-call latency.
	ProviderLatency time.Duration
	// Agent tunes the agents (NodeID, Role, Priority, Resources are set
	// per node).
	Agent agent.Config
	// Health, if set, returns the health source of a node.
	Health func(node string) agent.Health
	// Observer, if set, returns a node's view of the active gateway.
	Observer func(node string) agent.ActiveObserver
	// Events receives every agent's events.
	Events func(agent.Event)
	Logger *slog.Logger
	// NoSync skips fsync of the Raft logs.
	NoSync bool
	// Lane paces the nodes' bulk work; they share one process and so one
	// lane. Default: a lane of GOMAXPROCS−1 seats.
	Lane *bulk.Lane
	// IKEChannel, if set, returns a node's end of its charon's ha channel
	// (nil: that node carries no IKE_SAs); see agent.WithIKEChannel.
	IKEChannel func(node string) ikecarry.Channel
	// Egress, if set, returns a node's ESP egress fence (nil: none); see
	// agent.WithEgressFence.
	Egress func(node string) agent.EgressFence
	// SnapshotThreshold and TrailingLogs tune Raft's log compaction
	// (tests use small values to force snapshot installs).
	SnapshotThreshold uint64
	TrailingLogs      uint64
}

// Node is one member of the in-process cluster.
type Node struct {
	Spec  NodeSpec
	Dir   string
	Store *raftstore.Store
	Agent *agent.Agent
	DP    *memdp.Dataplane
	Prov  providers.Provider

	cancel context.CancelFunc
	done   chan struct{}
}

// Cluster is a running in-process cluster.
type Cluster struct {
	Net   *faultnet.Net
	Wire  *memdp.Wire
	Cloud *memory.Cloud
	Key   []byte
	VIP   netip.Addr

	opts Options
	ca   *pki.CA
	log  *slog.Logger

	mu    sync.Mutex // guards the following fields
	nodes map[string]*Node
	bound map[string]string // node → the address it listened on first, reused on restart
}

// Start starts every node and bootstraps the cluster with all of them as
// voters. It returns once the nodes run; use WaitActive to wait for the
// first takeover.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if len(opts.Nodes) == 0 {
		return nil, errors.New("cluster: no nodes")
	}
	if opts.HeartbeatTimeout <= 0 {
		opts.HeartbeatTimeout = 200 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Lane == nil {
		opts.Lane = bulk.NewLane(0, 0)
	}
	ca, err := pki.NewCA("handoff in-process cluster", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	key := make([]byte, raftstore.KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating cluster key: %w", err)
	}
	c := &Cluster{Net: faultnet.New(), Wire: memdp.NewWire(), Cloud: memory.NewCloud(opts.ProviderLatency), Key: key,
		VIP: netip.MustParseAddr("203.0.113.100"), opts: opts, ca: ca, log: opts.Logger, nodes: make(map[string]*Node), bound: make(map[string]string)}
	var boot []raftstore.Server
	for _, spec := range opts.Nodes {
		n, err := c.open(spec)
		if err != nil {
			c.Close()
			return nil, err
		}
		boot = append(boot, raftstore.Server{ID: spec.ID, Address: n.Store.Addr()})
	}
	for _, spec := range opts.Nodes {
		if err := c.Node(spec.ID).Store.Bootstrap(boot); err != nil {
			c.Close()
			return nil, err
		}
		c.run(c.Node(spec.ID))
	}
	// Members' roles and priorities go into the state machine through the
	// (idempotent) join path, from whichever node leads.
	if err := c.registerMembers(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) registerMembers(ctx context.Context) error {
	for _, spec := range c.opts.Nodes {
		n := c.Node(spec.ID)
		if err := n.Store.JoinCluster(ctx, c.addrs(), spec.Role, spec.Priority); err != nil {
			return fmt.Errorf("registering %s: %w", spec.ID, err)
		}
	}
	return nil
}

func (c *Cluster) addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.Store.Addr())
	}
	return out
}

// open creates (or reopens) a node's store, dataplane, provider and agent.
func (c *Cluster) open(spec NodeSpec) (*Node, error) {
	if spec.Role == "" {
		spec.Role = raftstore.RoleGateway
	}
	mat, err := c.Certificate(spec.ID)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.opts.Dir, spec.ID)
	hb := c.opts.HeartbeatTimeout
	lease := hb / 3 // under half the heartbeat timeout, as configuration requires
	c.mu.Lock()
	bind := c.bound[spec.ID]
	c.mu.Unlock()
	if bind == "" {
		bind = "127.0.0.1:0"
	}
	store, err := raftstore.Open(raftstore.Config{
		NodeID: spec.ID, BindAddr: bind, DataDir: dir, TLS: mat, Network: c.Net,
		HeartbeatTimeout: hb, ElectionTimeout: hb, LeaderLeaseTimeout: lease, CommitTimeout: 5 * time.Millisecond,
		Logger: c.log, NoSync: c.opts.NoSync, Lane: c.opts.Lane, SnapshotThreshold: c.opts.SnapshotThreshold, TrailingLogs: c.opts.TrailingLogs,
	})
	if err != nil {
		return nil, fmt.Errorf("opening node %s: %w", spec.ID, err)
	}
	var prov providers.Provider = memory.New(c.Cloud, spec.ID)
	if c.opts.NewProvider != nil {
		if prov, err = c.opts.NewProvider(spec.ID); err != nil {
			store.Close()
			return nil, fmt.Errorf("provider of %s: %w", spec.ID, err)
		}
	}
	if c.opts.WrapProvider != nil {
		prov = c.opts.WrapProvider(spec.ID, prov)
	}
	sealer, err := raftstore.NewSealer(c.Key)
	if err != nil {
		store.Close()
		return nil, err
	}
	dp := memdp.New(spec.ID, c.Wire)
	acfg := c.opts.Agent
	if acfg.SuspectAfter == 0 {
		acfg.SuspectAfter = 2 * lease // as the agent's configuration defaults to
	}
	acfg.NodeID, acfg.Role, acfg.Priority, acfg.Resources = spec.ID, spec.Role, spec.Priority, c.opts.Resources
	opts := []agent.Option{agent.WithLogger(c.log), agent.WithBulkLane(c.opts.Lane)}
	if c.opts.Events != nil {
		opts = append(opts, agent.WithEvents(c.opts.Events))
	}
	if c.opts.Observer != nil {
		opts = append(opts, agent.WithActiveObserver(c.opts.Observer(spec.ID)))
	}
	if c.opts.Health != nil {
		opts = append(opts, agent.WithHealth(c.opts.Health(spec.ID)))
	}
	if c.opts.Egress != nil {
		if f := c.opts.Egress(spec.ID); f != nil {
			opts = append(opts, agent.WithEgressFence(f))
		}
	}
	if c.opts.IKEChannel != nil {
		if ch := c.opts.IKEChannel(spec.ID); ch != nil {
			opts = append(opts, agent.WithIKEChannel(ch))
		}
	}
	ag, err := agent.New(acfg, store, dp, prov, sealer, opts...)
	if err != nil {
		store.Close()
		return nil, err
	}
	n := &Node{Spec: spec, Dir: dir, Store: store, Agent: ag, DP: dp, Prov: prov}
	c.mu.Lock()
	c.nodes[spec.ID] = n
	c.bound[spec.ID] = store.Addr()
	c.mu.Unlock()
	return n, nil
}

func (c *Cluster) run(n *Node) {
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan struct{})
	go func() {
		defer close(n.done)
		if err := n.Agent.Run(ctx); err != nil {
			c.log.Error("agent stopped", "node", n.Spec.ID, "err", err)
		}
	}()
}

// Certificate issues a node certificate for id from the cluster's CA. id
// need not be, or ever become, a member: tests use it for what a
// certificate the CA signed may do on its own.
func (c *Cluster) Certificate(id string) (*pki.Material, error) {
	cert, err := c.ca.Issue(id, []string{"127.0.0.1"}, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("issuing a certificate for %s: %w", id, err)
	}
	return pki.FromPEM(c.ca.PEM, cert.CertPEM, cert.KeyPEM)
}

// Node returns the node with id, or nil.
func (c *Cluster) Node(id string) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

// Nodes returns every running node.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Node, 0, len(c.nodes))
	for _, spec := range c.opts.Nodes {
		if n := c.nodes[spec.ID]; n != nil {
			out = append(out, n)
		}
	}
	for id, n := range c.nodes {
		if !c.specified(id) {
			out = append(out, n)
		}
	}
	return out
}

func (c *Cluster) specified(id string) bool {
	for _, s := range c.opts.Nodes {
		if s.ID == id {
			return true
		}
	}
	return false
}

// Kill crashes a node: its links are cut, its dataplane stops dead and its
// agent and Raft stop without a word to anyone (no fencing, no leave).
func (c *Cluster) Kill(id string) error {
	n := c.Node(id)
	if n == nil {
		return fmt.Errorf("kill: no node %q", id)
	}
	c.Net.Isolate(id)
	n.DP.Crash()
	n.cancel()
	<-n.done
	err := n.Store.Close()
	c.mu.Lock()
	delete(c.nodes, id)
	c.mu.Unlock()
	return err
}

// Restart brings a killed node back from its data directory (log replay,
// snapshots) as a fresh process would, and heals its links.
func (c *Cluster) Restart(spec NodeSpec) (*Node, error) {
	if c.Node(spec.ID) != nil {
		return nil, fmt.Errorf("restart: node %q is running", spec.ID)
	}
	n, err := c.open(spec)
	if err != nil {
		return nil, err
	}
	c.run(n)
	c.Net.Heal()
	return n, nil
}

// Add starts a new node and joins it to the cluster.
func (c *Cluster) Add(ctx context.Context, spec NodeSpec) (*Node, error) {
	addrs := c.addrs()
	n, err := c.open(spec)
	if err != nil {
		return nil, err
	}
	c.run(n)
	if err := n.Store.JoinCluster(ctx, addrs, spec.Role, spec.Priority); err != nil {
		return nil, err
	}
	return n, nil
}

// Active returns the node that the replicated state says is active (phase
// active), as seen by node from.
func (c *Cluster) Active(from string) raftstore.Active {
	var a raftstore.Active
	if n := c.Node(from); n != nil {
		n.Store.FSM().View(func(st *raftstore.State) { a = st.Active })
	}
	return a
}

// WaitActive waits until a running node other than any in exclude is the
// Raft leader, believes it is active, and the state says so at a term
// higher than after.
func (c *Cluster) WaitActive(ctx context.Context, after uint64, exclude ...string) (*Node, raftstore.Active, error) {
	for {
		for _, n := range c.Nodes() {
			skip := false
			for _, e := range exclude {
				skip = skip || e == n.Spec.ID
			}
			// A deposed active believes it is active until it fences, a
			// moment after losing leadership: leading is part of the test.
			if skip || !n.Agent.IsActive() || !n.Store.IsLeader() {
				continue
			}
			var act raftstore.Active
			n.Store.FSM().View(func(st *raftstore.State) { act = st.Active })
			if act.Node == n.Spec.ID && act.Phase == raftstore.PhaseActive && act.Term > after {
				return n, act, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, raftstore.Active{}, fmt.Errorf("waiting for an active node: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Traffic sends perTick packets on every node's outbound SAs every tick
// until ctx ends: the tunnels' traffic.
func (c *Cluster) Traffic(ctx context.Context, tick time.Duration, perTick uint64) {
	c.TrafficBounded(ctx, tick, perTick, 0)
}

// TrafficBounded is Traffic that sends on at most maxSAs SAs per node and
// tick, taking them in turn (0: every SA every tick). The stand-in
// dataplanes share the agents' process, where real ESP would run in the
// kernel: bounding their work keeps a large tunnel count from being a load
// the agents would never see in production.
func (c *Cluster) TrafficBounded(ctx context.Context, tick time.Duration, perTick uint64, maxSAs int) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, n := range c.Nodes() {
				if maxSAs <= 0 {
					n.DP.Send(perTick)
					continue
				}
				// The stand-in's work shares the agents' Ps: it takes its
				// turn in their lane like their own bulk work.
				w, err := c.opts.Lane.Enter(ctx)
				if err != nil {
					return
				}
				n.DP.SendSome(perTick, maxSAs)
				w.Leave()
			}
		}
	}
}

// Close stops every node and removes nothing on disk (tests own Dir).
func (c *Cluster) Close() error {
	var errs []error
	for _, n := range c.Nodes() {
		if n.cancel != nil {
			n.cancel()
			<-n.done
		}
		errs = append(errs, n.Store.Close())
	}
	return errors.Join(errs...)
}

// TempDir makes a scratch directory for a cluster outside tests.
func TempDir() (string, func(), error) {
	dir, err := os.MkdirTemp("", "handoff-demo-")
	if err != nil {
		return "", nil, fmt.Errorf("creating scratch dir: %w", err)
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}
