package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/providers"
)

// startupCheckTimeout bounds the agent's start-up permission check: a slow
// cloud API must not keep a node out of the cluster for long.
const startupCheckTimeout = 15 * time.Second

// checkPermissions runs the provider's dry permission check, if it has one
// (providers.PermissionChecker): it changes nothing.
func checkPermissions(ctx context.Context, p providers.Provider, rs []providers.Resource) (ran bool, err error) {
	pc, ok := p.(providers.PermissionChecker)
	if !ok || len(rs) == 0 {
		return false, nil
	}
	return true, pc.CheckPermissions(ctx, rs)
}

// startupPermissionCheck runs the permission check when the agent starts
// and logs what it found. Only a definite refusal stops the agent: a node
// whose credentials cannot move its resources would win elections and fail
// every takeover. An API that does not answer is logged and the agent
// starts: the cloud may be slow while the node is needed as a voter.
func startupPermissionCheck(ctx context.Context, cfg *config.Config, p providers.Provider, resources []providers.Resource, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, startupCheckTimeout)
	defer cancel()
	start := time.Now()
	ran, err := checkPermissions(ctx, p, resources)
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case !ran:
		if len(resources) > 0 {
			log.Info("provider has no dry permission check: a missing permission shows at the first takeover", "provider", cfg.ProviderType)
		}
	case err == nil:
		log.Info("provider permission check passed", "provider", cfg.ProviderType, "resources", len(resources), "took", took)
	case errors.Is(err, providers.ErrPermission):
		return fmt.Errorf("provider %s: permission check: %w (this node could not move its resources in a takeover; grant the role what docs/security.md lists, then restart)", cfg.ProviderType, err)
	default:
		log.Warn("provider permission check did not complete; starting anyway", "provider", cfg.ProviderType, "took", took, "err", err)
	}
	return nil
}

// reportCloudCheck is `handoff validate -check-cloud`: it builds the
// configured provider as the agent would, runs its permission check and
// reads every resource's holder, and reports each; any failure fails it.
func reportCloudCheck(ctx context.Context, cfg *config.Config, w io.Writer) error {
	switch cfg.ProviderType {
	case "memory":
		fmt.Fprintln(w, "check-cloud: provider memory moves nothing real: nothing to check")
		return nil
	case "linux":
		// Building it would bind the owner port the running agent holds.
		fmt.Fprintln(w, "check-cloud: provider linux moves VIPs on the local segment, with no cloud API: nothing to check")
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	p, err := buildProvider(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return fmt.Errorf("check-cloud: %w", err)
	}
	if c, ok := p.(io.Closer); ok {
		defer c.Close()
	}
	return cloudCheck(ctx, cfg.ProviderType, p, resourcesOf(cfg), w)
}

// cloudCheck reports the provider's permission check and every resource's
// holder, one line each.
func cloudCheck(ctx context.Context, name string, p providers.Provider, rs []providers.Resource, w io.Writer) error {
	failed := 0
	ran, err := checkPermissions(ctx, p, rs)
	switch {
	case !ran:
		fmt.Fprintf(w, "check-cloud: provider %s has no dry permission check: a missing permission shows at the first takeover (failover.failed)\n", name)
	case err != nil:
		failed++
		fmt.Fprintf(w, "check-cloud: permission check FAILED: %v\n", err)
	default:
		fmt.Fprintf(w, "check-cloud: permission check passed for %d resources\n", len(rs))
	}
	for _, r := range rs {
		h, err := p.Owner(ctx, r)
		switch {
		case err != nil:
			failed++
			fmt.Fprintf(w, "check-cloud: %s: FAILED: %v\n", r, err)
		case h.Node == "":
			fmt.Fprintf(w, "check-cloud: %s: readable, held by no node yet\n", r)
		default:
			fmt.Fprintf(w, "check-cloud: %s: readable, held by %s at term %d (%s)\n", r, h.Node, h.Term, h.Target)
		}
	}
	if failed > 0 {
		return fmt.Errorf("check-cloud: %d of %d checks failed", failed, len(rs)+1)
	}
	return nil
}

func resourcesOf(cfg *config.Config) []providers.Resource {
	out := make([]providers.Resource, 0, len(cfg.Resources))
	for _, r := range cfg.Resources {
		out = append(out, providers.Resource{Kind: r.Kind, ID: r.ID})
	}
	return out
}
