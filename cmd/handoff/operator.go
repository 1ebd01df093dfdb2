package main

import (
	"context"
	"crypto/tls"
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

// operatorFlags are the agent's and the demo's operator-surface flags. For
// the agent they override the configuration's api and webhook blocks.
type operatorFlags struct {
	apiAddr, tokenFile, tlsCert, tlsKey string
	webhookURL, webhookSecretFile       string
	lag                                 time.Duration
	// addrFlag and tokenFileFlag name the flags in errors: the agent's
	// and the demo's differ.
	addrFlag, tokenFileFlag string
	// token is the demo's removed -token flag.
	token removedTokenFlag
	// given holds the flags set on the command line (noteGiven); nil means
	// every flag counts, as for the demo, which reads no configuration.
	given map[string]bool
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
		fs.StringVar(&f.apiAddr, "api-addr", api.DefaultAddr, "operator HTTP API, status page and /metrics listen address (overrides api.addr; empty: no API)")
		fs.StringVar(&f.tokenFile, "api-token-file", "", "file (mode 0600) holding the API token(s), one per line (overrides api.token_file; default $HANDOFF_API_TOKEN; without one, mutating endpoints are disabled)")
		fs.StringVar(&f.tlsCert, "api-tls-cert", "", "serve the API over HTTPS with this certificate (PEM; overrides api.tls_cert)")
		fs.StringVar(&f.tlsKey, "api-tls-key", "", "the key of -api-tls-cert (PEM, mode 0600; overrides api.tls_key)")
		fs.DurationVar(&f.lag, "lag-threshold", 5*time.Second, "raise replication.lag when this follower has not heard from the leader for this long")
	}
	fs.StringVar(&f.webhookURL, "webhook-url", "", "POST operator events (failover, health, lag) to this URL (overrides webhook.url)")
	fs.StringVar(&f.webhookSecretFile, "webhook-secret-file", "", "file (mode 0600) holding the webhook signing secret (overrides webhook.secret_file; default $HANDOFF_WEBHOOK_SECRET)")
	return f
}

// noteGiven records which flags the command line set: those override the
// configuration file, even when empty (-api-addr "" turns the API off).
func (f *operatorFlags) noteGiven(fs *flag.FlagSet) {
	f.given = map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { f.given[fl.Name] = true })
}

// pick is a flag's value when the command line set it, else the
// configuration's, with the name errors give it.
func (f *operatorFlags) pick(flagName, flagValue, key, configValue string) (value, name string) {
	if f.given == nil || f.given[flagName] {
		return flagValue, "-" + flagName
	}
	return configValue, key
}

// operatorSettings is the operator surface's configuration, read and
// checked before anything starts (preflight).
type operatorSettings struct {
	// api has Addr, Tokens and TLS set; no Addr: no API.
	api api.Config
	// webhook is nil without a webhook URL.
	webhook *webhook.Config
}

// settings reads and checks the operator surface's settings, the flags
// over the configuration's api and webhook blocks, and the files they
// name, reporting every problem, each naming its flag or key. Tokens come
// from the token file or, without one, the environment variable envName.
func (f *operatorFlags) settings(apiBlock config.APIBlock, whBlock config.WebhookBlock, getenv func(string) string, envName string) (operatorSettings, []error) {
	var errs []error
	addr, addrName := f.pick(f.addrFlag, f.apiAddr, "api.addr", apiBlock.Addr)
	if addr != "" {
		if err := config.CheckHostPort(addr, 0); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addrName, err))
		}
	}
	tokenFile, tokenName := f.pick(f.tokenFileFlag, f.tokenFile, "api.token_file", apiBlock.TokenFile)
	var toks []string
	var err error
	if tokenFile != "" {
		toks, err = readTokenFile(tokenName, tokenFile)
	} else {
		toks, err = parseTokens(getenv(envName), envName)
	}
	if err != nil {
		errs = append(errs, err)
	}
	cert, certName := f.pick("api-tls-cert", f.tlsCert, "api.tls_cert", apiBlock.TLSCert)
	key, keyName := f.pick("api-tls-key", f.tlsKey, "api.tls_key", apiBlock.TLSKey)
	tc, err := apiTLS(cert, certName, key, keyName)
	if err != nil {
		errs = append(errs, err)
	}
	url, urlName := f.pick("webhook-url", f.webhookURL, "webhook.url", whBlock.URL)
	secretFile, secretName := f.pick("webhook-secret-file", f.webhookSecretFile, "webhook.secret_file", whBlock.SecretFile)
	wh, err := webhookConfig(url, urlName, secretFile, secretName, getenv)
	if err != nil {
		errs = append(errs, err)
	}
	return operatorSettings{api: api.Config{Addr: addr, Tokens: toks, TLS: tc}, webhook: wh}, errs
}

// webhookConfig checks the webhook's URL and reads its signing secret: the
// secret file, or HANDOFF_WEBHOOK_SECRET. nil without a URL.
func webhookConfig(url, urlName, secretFile, secretName string, getenv func(string) string) (*webhook.Config, error) {
	if url == "" {
		return nil, nil
	}
	secret := getenv("HANDOFF_WEBHOOK_SECRET")
	if secretFile != "" {
		b, err := secretfile.Read(secretFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", secretName, err)
		}
		secret = strings.TrimSpace(string(b))
		clear(b)
	}
	if secret == "" {
		return nil, fmt.Errorf("%s: needs a signing secret: webhook.secret_file, -webhook-secret-file or HANDOFF_WEBHOOK_SECRET", urlName)
	}
	cfg := &webhook.Config{URL: url, Secret: []byte(secret)}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", urlName, err)
	}
	return cfg, nil
}

// apiTLS loads the API's certificate and key (a secret file); nil for
// plain HTTP.
func apiTLS(cert, certName, key, keyName string) (*tls.Config, error) {
	if cert == "" && key == "" {
		return nil, nil
	}
	if cert == "" || key == "" {
		return nil, fmt.Errorf("%s, %s: give both or neither", certName, keyName)
	}
	certPEM, err := os.ReadFile(cert)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certName, err)
	}
	keyPEM, err := secretfile.Read(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyName, err)
	}
	defer clear(keyPEM)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s, %s: loading the API's TLS certificate: %w", certName, keyName, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
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
	if len(op.api.Tokens) == 0 && op.api.Addr != "" {
		log.Warn("no API token configured: the API serves reads only (set api.token_file, -api-token-file or HANDOFF_API_TOKEN)")
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
	op, errs := f.settings(config.APIBlock{}, config.WebhookBlock{}, getenv, "HANDOFF_TOKEN")
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
