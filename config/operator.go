package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"time"
)

// NotifyStates are the states a notify command can be given for, in the
// order the block lists them.
var NotifyStates = []string{"active", "standby", "fenced", "faulty"}

// resolveOperator checks the form of the api and webhook blocks. The
// files they name are read by the agent's preflight, which reports them
// under the same keys (or the flags that override them).
func resolveOperator(c *Config, bad func(string, string, ...any)) {
	if c.API.Addr != "" {
		if err := CheckHostPort(c.API.Addr, 0); err != nil {
			bad("api.addr", "%v", err)
		}
	}
	if (c.API.TLSCert == "") != (c.API.TLSKey == "") {
		bad("api.tls_cert", "set api.tls_cert and api.tls_key together, or neither")
	}
	w := c.Webhook
	switch {
	case w.URL != "":
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			// Not the URL itself: it may carry a token in its path.
			bad("webhook.url", "not an http(s) URL with a host")
		}
	case w.SecretFile != "":
		bad("webhook.secret_file", "set without webhook.url")
	}
}

// resolveNotify checks the notify block: each command an argument vector
// whose program is an absolute path (the agent runs it without a shell and
// with a minimal PATH, so a bare name would depend on where it runs).
func resolveNotify(n NotifyBlock, dur func(key, v string, min time.Duration) time.Duration, bad func(string, string, ...any)) Notify {
	out := Notify{Commands: map[string][]string{}, Timeout: dur("notify.timeout", n.Timeout, 10*time.Millisecond)}
	for i, argv := range [][]string{n.Active, n.Standby, n.Fenced, n.Faulty} {
		state := NotifyStates[i]
		if len(argv) == 0 {
			continue
		}
		if !filepath.IsAbs(argv[0]) {
			bad("notify."+state, "%q is not an absolute path: write the program's full path (the command runs without a shell)", argv[0])
			continue
		}
		out.Commands[state] = argv
	}
	return out
}

// warnings lists what is valid but probably a mistake on a gateway: one
// that moves nothing, or carries nothing.
func warnings(c *Config, at *source) []string {
	if c.Role != "gateway" {
		return nil
	}
	var out []string
	warn := func(key, format string, args ...any) {
		out = append(out, fmt.Sprintf("%s%s: %s", at.where(key), key, fmt.Sprintf(format, args...)))
	}
	if len(c.Resources) == 0 {
		warn("provider.resource", "none: this gateway moves nothing when it becomes active (no address or route follows it)")
	}
	if c.DataplaneType == "memory" {
		warn("dataplane.type", `"memory" carries no tunnels on a gateway (use "strongswan"; memory is for witnesses, tests and trying the agent)`)
	}
	return out
}
