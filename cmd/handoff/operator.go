package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/internal/cluster"
	"github.com/handoffvpn/handoff/internal/demo"
	"github.com/handoffvpn/handoff/internal/secretfile"
	"github.com/handoffvpn/handoff/operator"
	"github.com/handoffvpn/handoff/operator/api"
	"github.com/handoffvpn/handoff/operator/fleet"
	"github.com/handoffvpn/handoff/operator/webhook"
	"github.com/handoffvpn/handoff/raftstore"
)

// operatorFlags are the agent's and the demo's operator-surface flags.
type operatorFlags struct {
	apiAddr, tokenFile, tlsCert, tlsKey string
	webhookURL, webhookSecretFile       string
	lag                                 time.Duration
	// addrFlag and tokenFileFlag name the flags in errors: the agent's
	// and the demo's differ.
	addrFlag, tokenFileFlag string
	// token is the demo's removed -token flag.
	token removedTokenFlag
}

func addOperatorFlags(fs *flag.FlagSet, forDemo bool) *operatorFlags {
	f := &operatorFlags{}
	if forDemo {
		f.addrFlag, f.tokenFileFlag = "serve", "token-file"
		fs.StringVar(&f.apiAddr, "serve", "", "after the failover keep the cluster running and serve the new active's API, status page and /metrics on this address until interrupted")
		fs.StringVar(&f.tokenFile, "token-file", "", "file (mode 0600) holding the API token for the served API's mutating endpoints (default $HANDOFF_TOKEN; without one they are disabled)")
		fs.Var(&f.token, "token", "removed: a token on the command line is visible to every user; use -token-file or HANDOFF_TOKEN")
	} else {
		f.addrFlag, f.tokenFileFlag = "api-addr", "api-token-file"
		fs.StringVar(&f.apiAddr, "api-addr", api.DefaultAddr, "operator HTTP API, status page and /metrics listen address (empty: no API)")
		fs.StringVar(&f.tokenFile, "api-token-file", "", "file (mode 0600) holding the API token(s), one per line (default $HANDOFF_API_TOKEN; without one, mutating endpoints are disabled)")
		fs.StringVar(&f.tlsCert, "api-tls-cert", "", "serve the API over HTTPS with this certificate (PEM)")
		fs.StringVar(&f.tlsKey, "api-tls-key", "", "the key of -api-tls-cert (PEM, mode 0600)")
		fs.DurationVar(&f.lag, "lag-threshold", 5*time.Second, "raise replication.lag when this follower has not heard from the leader for this long")
	}
	fs.StringVar(&f.webhookURL, "webhook-url", "", "POST operator events (failover, health, lag) to this URL")
	fs.StringVar(&f.webhookSecretFile, "webhook-secret-file", "", "file (mode 0600) holding the webhook signing secret (default $HANDOFF_WEBHOOK_SECRET)")
	return f
}

// operatorSettings is the operator surface's configuration, read and
// checked before anything starts (preflight).
type operatorSettings struct {
	// api has Addr, Tokens and TLS set.
	api api.Config
	// webhook is nil without -webhook-url.
	webhook *webhook.Config
}

// settings reads and checks the operator surface's flags and the files
// they name, reporting every problem, each naming its flag. Tokens come
// from the token file or, without one, the environment variable envName.
func (f *operatorFlags) settings(getenv func(string) string, envName string) (operatorSettings, []error) {
	var errs []error
	if f.apiAddr != "" {
		if err := config.CheckHostPort(f.apiAddr, 0); err != nil {
			errs = append(errs, fmt.Errorf("-%s: %w", f.addrFlag, err))
		}
	}
	toks, err := f.tokens(getenv, envName)
	if err != nil {
		errs = append(errs, err)
	}
	tc, err := f.tlsConfig()
	if err != nil {
		errs = append(errs, err)
	}
	wh, err := f.webhook(getenv)
	if err != nil {
		errs = append(errs, err)
	}
	return operatorSettings{api: api.Config{Addr: f.apiAddr, Tokens: toks, TLS: tc}, webhook: wh}, errs
}

// tokens reads the API tokens: the token file, or the environment.
func (f *operatorFlags) tokens(getenv func(string) string, envName string) ([]string, error) {
	if f.tokenFile != "" {
		return readTokenFile(f.tokenFileFlag, f.tokenFile)
	}
	return parseTokens(getenv(envName), envName)
}

func (f *operatorFlags) webhook(getenv func(string) string) (*webhook.Config, error) {
	if f.webhookURL == "" {
		return nil, nil
	}
	secret := getenv("HANDOFF_WEBHOOK_SECRET")
	if f.webhookSecretFile != "" {
		b, err := secretfile.Read(f.webhookSecretFile)
		if err != nil {
			return nil, fmt.Errorf("-webhook-secret-file: %w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	if secret == "" {
		return nil, errors.New("-webhook-url: needs a signing secret: -webhook-secret-file or HANDOFF_WEBHOOK_SECRET")
	}
	cfg := &webhook.Config{URL: f.webhookURL, Secret: []byte(secret)}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("-webhook-url: %w", err)
	}
	return cfg, nil
}

func (f *operatorFlags) tlsConfig() (*tls.Config, error) {
	if f.tlsCert == "" && f.tlsKey == "" {
		return nil, nil
	}
	if f.tlsCert == "" || f.tlsKey == "" {
		return nil, errors.New("-api-tls-cert, -api-tls-key: give both or neither")
	}
	certPEM, err := os.ReadFile(f.tlsCert)
	if err != nil {
		return nil, fmt.Errorf("-api-tls-cert: %w", err)
	}
	keyPEM, err := secretfile.Read(f.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("-api-tls-key: %w", err)
	}
	defer clear(keyPEM)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("-api-tls-cert, -api-tls-key: loading the API's TLS certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// agentSurface builds the agent's operator surface from the checked
// settings (before the agent, so that it can take the agent's events and
// time its provider).
func (f *operatorFlags) agentSurface(node string, op operatorSettings, log *slog.Logger) (*operator.Surface, api.Config, error) {
	var wh *webhook.Config
	if op.webhook != nil {
		c := *op.webhook
		c.Logger = log
		wh = &c
	}
	s, err := operator.New(operator.Options{Node: node, Webhook: wh, LagThreshold: f.lag, Logger: log})
	if err != nil {
		return nil, api.Config{}, err
	}
	if len(op.api.Tokens) == 0 && f.apiAddr != "" {
		log.Warn("no API token configured: the API serves reads only (set -api-token-file or HANDOFF_API_TOKEN)")
	}
	cfg := op.api
	cfg.Logger = log
	// Debian-style hosts resolve their own name to 127.0.1.1: a local
	// client using it reads as one using localhost does.
	if h, err := os.Hostname(); err == nil && h != "" {
		cfg.Hosts = append(cfg.Hosts, h)
	}
	return s, cfg, nil
}

// demoServe wires the operator surface into the demo: every node's
// surface from the start (events, provider metrics), and after the
// failover the new active's API on -serve, the other survivors' on free
// loopback ports, until ctx ends.
func (f *operatorFlags) demoServe(opts *demo.Options, nodes int, stdout io.Writer, getenv func(string) string) (func() error, error) {
	op, errs := f.settings(getenv, "HANDOFF_TOKEN")
	if len(errs) > 0 {
		return nil, usageError{config.Invalid(errs).Error()}
	}
	toks, wh := op.api.Tokens, op.webhook
	if wh != nil {
		wh.Logger = opts.Logger
	}
	var ids []string
	for i := 1; i <= nodes; i++ {
		ids = append(ids, fmt.Sprintf("gw%d", i))
	}
	fl, err := fleet.New(ids, fleet.Options{Tokens: toks, Logger: opts.Logger, Webhook: func(string) *webhook.Config { return wh }})
	if err != nil {
		return nil, err
	}
	opts.Events, opts.WrapProvider = fl.Events, fl.WrapProvider
	opts.Hold = func(ctx context.Context, c *cluster.Cluster, rep *demo.Report) error {
		// Bring the killed node back (it rejoins as a standby: it fences on
		// start): a cluster left with one spare voter re-elects at every
		// hiccup longer than the demo's short leader lease.
		var i int
		if _, err := fmt.Sscanf(rep.Killed, "gw%d", &i); err == nil {
			if _, err := c.Restart(cluster.NodeSpec{ID: rep.Killed, Role: raftstore.RoleGateway, Priority: 100 - i}); err != nil {
				return fmt.Errorf("restarting %s: %w", rep.Killed, err)
			}
		}
		if err := fl.Serve(c, map[string]string{rep.NewActive: f.apiAddr}); err != nil {
			return err
		}
		rep.Timeline(stdout)
		fmt.Fprintf(stdout, "\n%s restarted from its data directory: it rejoins as a standby\n", rep.Killed)
		fmt.Fprintf(stdout, "serving %s's operator API on %s: status page /, metrics /metrics, API /v1/\n", rep.NewActive, fl.URL(rep.NewActive))
		for _, line := range fl.URLs() {
			fmt.Fprintf(stdout, "  %s\n", line)
		}
		if len(toks) == 0 {
			fmt.Fprintln(stdout, "no -token-file or HANDOFF_TOKEN: the API serves reads only")
		}
		fmt.Fprintf(stdout, "try: HANDOFF_ADDR=%s handoff status; interrupt to stop\n", fl.URL(rep.NewActive))
		<-ctx.Done()
		// Stop serving before the demo closes the nodes under the API.
		return fl.Close()
	}
	return fl.Close, nil
}
