package providers

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// Factory builds a provider for one node from its provider-specific
// settings. Settings arrive as the decoded config block; each factory
// validates its own keys and names them in its errors.
type Factory func(ctx context.Context, node string, settings any) (Provider, error)

// Registry maps provider names ("aws", "gcp", "azure", "linux", "memory") to
// factories. It is a value, not a package global, so tests build their own.
type Registry struct {
	mu        sync.Mutex // guards factories
	factories map[string]Factory
}

// Register adds a factory; registering a name twice is a programming error.
func (r *Registry) Register(name string, f Factory) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.factories == nil {
		r.factories = make(map[string]Factory)
	}
	if _, dup := r.factories[name]; dup {
		panic("providers: duplicate registration of " + name)
	}
	r.factories[name] = f
}

// New builds the named provider.
func (r *Registry) New(ctx context.Context, name, node string, settings any) (Provider, error) {
	r.mu.Lock()
	f, ok := r.factories[name]
	r.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("unknown provider %q (known: %v)", name, r.Names())
	}
	p, err := f(ctx, node, settings)
	if err != nil {
		return nil, fmt.Errorf("building provider %q: %w", name, err)
	}
	return p, nil
}

// Names lists the registered providers, sorted.
func (r *Registry) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	names := make([]string, 0, len(r.factories))
	for n := range r.factories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
