package main

import (
	"fmt"
	"strings"

	"github.com/handoffvpn/handoff/internal/secretfile"
)

// API tokens come from files (mode 0600) or the environment, never the
// command line: every user on the host reads a process's arguments (ps,
// /proc/PID/cmdline).

// removedTokenFlag stands for the -token flag the CLI verbs and the demo
// once took. It stays defined so that using it says what to do instead of
// "flag provided but not defined"; its value, a token, is never repeated.
type removedTokenFlag struct{ used bool }

func (r *removedTokenFlag) String() string { return "" }

func (r *removedTokenFlag) Set(string) error {
	r.used = true
	return nil
}

// check refuses a command line that used -token; fileFlag is the flag to
// use instead.
func (r *removedTokenFlag) check(fileFlag string) error {
	if !r.used {
		return nil
	}
	return usageError{fmt.Sprintf("-token is no longer accepted: a token on the command line is visible to every user (ps, /proc/PID/cmdline); "+
		"put it in a file only you can read (chmod 600) and pass -%s FILE, or set HANDOFF_TOKEN", fileFlag)}
}

// parseTokens reads API tokens, one per line, skipping blank lines and
// # comments; each must be at least 16 characters. from names their source
// in errors (a flag or an environment variable).
func parseTokens(raw, from string) ([]string, error) {
	var out []string
	for _, line := range strings.Split(raw, "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			if len(t) < 16 {
				return nil, fmt.Errorf("%s: API token shorter than 16 characters: use a long random one (handoff keygen makes 32 random bytes)", from)
			}
			out = append(out, t)
		}
	}
	return out, nil
}

// readTokenFile returns the tokens of a secret file; name is the flag
// ("-api-token-file") or key ("api.token_file") errors give it.
func readTokenFile(name, path string) ([]string, error) {
	b, err := secretfile.Read(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer clear(b)
	return parseTokens(string(b), name)
}
