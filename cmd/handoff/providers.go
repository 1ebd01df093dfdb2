package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/internal/demo"
	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/aws"
	"github.com/handoffvpn/handoff/providers/azure"
	"github.com/handoffvpn/handoff/providers/emulator"
	"github.com/handoffvpn/handoff/providers/gcp"
	"github.com/handoffvpn/handoff/providers/linux"
	"github.com/handoffvpn/handoff/providers/memory"
)

// registry holds every provider this build knows.
func registry() *providers.Registry {
	r := &providers.Registry{}
	r.Register("aws", func(ctx context.Context, node string, s any) (providers.Provider, error) {
		if s == nil {
			s = aws.Settings{} // everything from IMDSv2
		}
		return aws.Factory(ctx, node, s)
	})
	r.Register("gcp", gcp.Factory)
	r.Register("azure", azure.Factory)
	r.Register("linux", linux.Factory)
	r.Register("memory", func(_ context.Context, node string, _ any) (providers.Provider, error) {
		// A cloud of one: useful to try the agent; it moves nothing real.
		return memory.New(memory.NewCloud(0), node), nil
	})
	return r
}

// buildProvider opens the configured provider, its logs going to log
// (without it every provider's own lines, such as a VIP yielded or a claim
// retried, were lost).
func buildProvider(ctx context.Context, cfg *config.Config, log *slog.Logger) (providers.Provider, error) {
	settings := cfg.ProviderSettings
	if settings == nil && cfg.ProviderType == "aws" {
		settings = &aws.Settings{} // everything from IMDSv2
	}
	plog := log.With("component", "provider")
	switch s := settings.(type) {
	case *aws.Settings:
		settings = withLogger(s, func(c *aws.Settings) **slog.Logger { return &c.Logger }, plog)
	case *gcp.Settings:
		settings = withLogger(s, func(c *gcp.Settings) **slog.Logger { return &c.Logger }, plog)
	case *azure.Settings:
		settings = withLogger(s, func(c *azure.Settings) **slog.Logger { return &c.Logger }, plog)
	case *linux.Settings:
		settings = withLogger(s, func(c *linux.Settings) **slog.Logger { return &c.Logger }, plog)
	}
	return registry().New(ctx, cfg.ProviderType, cfg.NodeID, settings)
}

// withLogger returns a copy of settings whose logger field is log (the
// configuration's own value stays as loaded).
func withLogger[T any](settings *T, field func(*T) **slog.Logger, log *slog.Logger) *T {
	c := *settings
	*field(&c) = log
	return &c
}

// fixture is what every cloud's emulated fleet offers.
type fixture interface {
	NewProvider(node string) (providers.Provider, error)
	Close() error
}

// demoProvider returns the demo's provider set-up: nil for the built-in
// memory cloud, or the built-in cloud emulator seeded with a small fleet of
// the named cloud, reached through that cloud's real SDK.
func demoProvider(name string, latency time.Duration) (func(context.Context, []string) (demo.Fixture, error), error) {
	var seed func(ctx context.Context, em *emulator.Emulator, nodes []string) (fixture, []providers.Resource, error)
	switch name {
	case "memory":
		return nil, nil
	case "aws":
		seed = func(ctx context.Context, em *emulator.Emulator, nodes []string) (fixture, []providers.Resource, error) {
			fx, err := aws.EmulatorFixture(ctx, em, nodes)
			if err != nil {
				return nil, nil, err
			}
			return fx, fx.Resources, nil
		}
	case "gcp":
		seed = func(ctx context.Context, em *emulator.Emulator, nodes []string) (fixture, []providers.Resource, error) {
			fx, err := gcp.EmulatorFixture(ctx, em, nodes)
			if err != nil {
				return nil, nil, err
			}
			return fx, fx.Resources, nil
		}
	case "azure":
		seed = func(ctx context.Context, em *emulator.Emulator, nodes []string) (fixture, []providers.Resource, error) {
			fx, err := azure.EmulatorFixture(ctx, em, nodes)
			if err != nil {
				return nil, nil, err
			}
			return fx, fx.Resources, nil
		}
	default:
		return nil, usageError{fmt.Sprintf("demo: -provider %q is not memory, aws, gcp or azure", name)}
	}
	return func(ctx context.Context, nodes []string) (demo.Fixture, error) {
		em, err := emulator.New(emulator.Options{Latency: latency})
		if err != nil {
			return demo.Fixture{}, err
		}
		fx, resources, err := seed(ctx, em, nodes)
		if err != nil {
			em.Close()
			return demo.Fixture{}, fmt.Errorf("seeding the %s emulator: %w", name, err)
		}
		// Owner is asked through a provider of its own, as an operator's
		// CLI would.
		observer, err := fx.NewProvider(nodes[len(nodes)-1])
		if err != nil {
			fx.Close()
			em.Close()
			return demo.Fixture{}, err
		}
		var made []providers.Provider
		return demo.Fixture{
			Name:      name + " (emulated)",
			Resources: resources,
			NewProvider: func(node string) (providers.Provider, error) {
				p, err := fx.NewProvider(node)
				if err == nil {
					made = append(made, p)
				}
				return p, err
			},
			Owner: observer.Owner,
			Close: func() {
				for _, p := range append(made, observer) {
					if c, ok := p.(io.Closer); ok {
						c.Close()
					}
				}
				fx.Close()
				em.Close()
			},
		}, nil
	}, nil
}

// runEmulator serves the built-in cloud emulator for drills and for agents
// in other processes, seeded with a small fleet per requested cloud.
func runEmulator(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("emulator", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8443", "HTTPS listen address of the cloud APIs")
	clouds := fs.String("clouds", "aws,gcp,azure", "comma-separated fleets to seed")
	nodes := fs.String("nodes", "gw1,gw2,gw3", "comma-separated node IDs of the fleet")
	latency := fs.Duration("latency", 0, "latency added to every API call")
	caOut := fs.String("ca-out", "", "write the emulator's CA certificate (PEM) here")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	em, err := emulator.New(emulator.Options{Addr: *addr, Latency: *latency})
	if err != nil {
		return err
	}
	defer em.Close()
	if *caOut != "" {
		if err := pki.WriteFile(*caOut, em.CertPEM(), false, true); err != nil {
			return err
		}
	}
	ids := strings.Split(*nodes, ",")
	type seeded struct {
		Cloud     string               `json:"cloud"`
		Resources []providers.Resource `json:"resources"`
	}
	report := struct {
		API   string   `json:"api"`
		Fleet []seeded `json:"fleets"`
	}{API: em.URL()}
	for _, c := range strings.Split(*clouds, ",") {
		var fx fixture
		var rs []providers.Resource
		switch strings.TrimSpace(c) {
		case "aws":
			f, err := aws.EmulatorFixture(ctx, em, ids)
			if err != nil {
				return err
			}
			fx, rs = f, f.Resources
		case "gcp":
			f, err := gcp.EmulatorFixture(ctx, em, ids)
			if err != nil {
				return err
			}
			fx, rs = f, f.Resources
		case "azure":
			f, err := azure.EmulatorFixture(ctx, em, ids)
			if err != nil {
				return err
			}
			fx, rs = f, f.Resources
		default:
			return usageError{fmt.Sprintf("emulator: unknown cloud %q (aws, gcp, azure)", c)}
		}
		defer fx.Close()
		report.Fleet = append(report.Fleet, seeded{Cloud: c, Resources: rs})
	}
	if err := json.NewEncoder(stdout).Encode(report); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
