// Package fleet runs the operator surface of every node of an in-process
// cluster (internal/cluster): each node gets its metrics, webhook and API
// (with the status page) on a loopback port of its own, and the APIs know
// each other's addresses for leader hints. It serves `handoff demo --serve`
// and the operator tests.
package fleet

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/handoffvpn/handoff/agent"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/operator"
	"github.com/handoffvpn/handoff/operator/api"
	"github.com/handoffvpn/handoff/operator/webhook"
	"github.com/handoffvpn/handoff/providers"
)

// Options configure a Fleet.
type Options struct {
	// Tokens are every API's accepted tokens.
	Tokens []string
	// Webhook, if set, returns a node's webhook configuration.
	Webhook func(node string) *webhook.Config
	// Interval and LagThreshold tune each node's monitor.
	Interval, LagThreshold time.Duration
	Logger                 *slog.Logger
}

// Fleet is the operator surfaces of a cluster's nodes.
type Fleet struct {
	opts Options

	mu       sync.Mutex // guards the following fields
	surfaces map[string]*operator.Surface
	urls     map[string]string
}

// New builds a surface for each node ID. Pass Events and WrapProvider to
// the cluster's options, then Serve once it runs.
func New(nodes []string, o Options) (*Fleet, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{opts: o, surfaces: map[string]*operator.Surface{}, urls: map[string]string{}}
	for _, n := range nodes {
		so := operator.Options{Node: n, Interval: o.Interval, LagThreshold: o.LagThreshold, Logger: o.Logger}
		if o.Webhook != nil {
			so.Webhook = o.Webhook(n)
		}
		s, err := operator.New(so)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("operator surface of %s: %w", n, err)
		}
		f.surfaces[n] = s
	}
	return f, nil
}

// Surface returns node's surface, or nil.
func (f *Fleet) Surface(node string) *operator.Surface {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.surfaces[node]
}

// Events routes an agent event to the surface of the node that emitted it.
func (f *Fleet) Events(e agent.Event) {
	if s := f.Surface(e.Node); s != nil {
		s.Event(e)
	}
}

// WrapProvider times node's provider calls in node's metrics.
func (f *Fleet) WrapProvider(node string, p providers.Provider) providers.Provider {
	if s := f.Surface(node); s != nil {
		return s.Metrics.InstrumentProvider(p)
	}
	return p
}

// Serve starts the API of every running node of c: on the address addrs
// names for it, else on a free loopback port.
func (f *Fleet) Serve(c *cluster.Cluster, addrs map[string]string) error {
	for _, n := range c.Nodes() {
		s := f.Surface(n.Spec.ID)
		if s == nil {
			return fmt.Errorf("no operator surface for node %s", n.Spec.ID)
		}
		addr := addrs[n.Spec.ID]
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		err := s.Serve(n.Agent, n.Store, api.Config{Addr: addr, Tokens: f.opts.Tokens, PeerAPI: f.URL, Logger: f.opts.Logger})
		if err != nil {
			return fmt.Errorf("serving the API of %s: %w", n.Spec.ID, err)
		}
		f.mu.Lock()
		f.urls[n.Spec.ID] = s.URL()
		f.mu.Unlock()
	}
	return nil
}

// URL is node's API URL, "" when it does not serve.
func (f *Fleet) URL(node string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.urls[node]
}

// URLs lists every serving node's API URL, by node ID.
func (f *Fleet) URLs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.urls))
	for id := range f.urls {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id + " " + f.urls[id]
	}
	return out
}

// Close closes every surface. Safe twice.
func (f *Fleet) Close() error {
	f.mu.Lock()
	all := make([]*operator.Surface, 0, len(f.surfaces))
	for _, s := range f.surfaces {
		all = append(all, s)
	}
	f.mu.Unlock()
	var errs []error
	for _, s := range all {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
