package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/internal/pki"
	"github.com/handoffvpn/handoff/internal/secretfile"
	"github.com/handoffvpn/handoff/raftstore"
)

// agentFlags are `handoff agent`'s flags beyond the configuration's.
// `handoff validate` takes them too: what it checks is what the agent
// would start with.
type agentFlags struct {
	op          *operatorFlags
	cpuProfile  string
	joinTimeout time.Duration
}

func addAgentFlags(fs *flag.FlagSet) *agentFlags {
	f := &agentFlags{op: addOperatorFlags(fs, false)}
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the agent's whole run to this file (diagnosing an agent that uses too much CPU)")
	fs.DurationVar(&f.joinTimeout, "join-timeout", 5*time.Minute, "how long a node new to the cluster tries to join it before it exits with an error (so that its service manager restarts it)")
	return f
}

// checked is what the preflight loaded: the agent starts from exactly it.
type checked struct {
	tls    *pki.Material
	sealer *raftstore.Sealer
	denied *pki.DenyList
	op     operatorSettings
}

// preflight runs every check the agent makes before it opens Raft, on the
// resolved configuration (config.Resolve has checked values, addresses and
// ports, resource kinds and IDs, and the cluster key's file): the TLS
// material loaded and matched to node_id and the CA, secret files private,
// the operator surface's tokens, certificate and webhook secret (the api
// and webhook blocks under the flags), the notify commands' programs. `handoff agent` starts from what
// it returns; `handoff validate` runs it and stops, so that the two cannot
// disagree. Every problem is reported, each naming its key or flag.
func preflight(cfg *config.Config, f *agentFlags, getenv func(string) string) (*checked, error) {
	var errs []error
	mat, err := loadTLS(cfg.NodeID, cfg.TLS)
	if err != nil {
		errs = append(errs, err)
	}
	sealer, err := raftstore.NewSealer(cfg.ClusterKey)
	if err != nil {
		errs = append(errs, fmt.Errorf("cluster_key: %w", err))
	}
	denied, err := pki.ParseDenyList(cfg.TLS.DenySerials)
	if err != nil {
		errs = append(errs, fmt.Errorf("tls.deny_serials: %w", err))
	} else if mat != nil {
		if err := denied.Check(mat.Cert.Leaf); err != nil {
			errs = append(errs, fmt.Errorf("tls.cert: %s: %w", cfg.TLS.Cert, err))
		}
	}
	op, opErrs := f.op.settings(cfg.API, cfg.Webhook, getenv, "HANDOFF_API_TOKEN")
	errs = append(errs, opErrs...)
	errs = append(errs, checkNotify(cfg.Notify)...)
	if len(errs) > 0 {
		return nil, config.Invalid(errs)
	}
	return &checked{tls: mat, sealer: sealer, denied: denied, op: op}, nil
}

// loadTLS loads the node's TLS material, naming the key of whatever is
// wrong: a file missing, a private key others can read, a certificate and
// key that do not match, a certificate the CA did not sign (or expired),
// one issued to another node.
func loadTLS(nodeID string, t config.TLSBlock) (*pki.Material, error) {
	caPEM, err := os.ReadFile(t.CA)
	if err != nil {
		return nil, fmt.Errorf("tls.ca: %w", err)
	}
	certPEM, err := os.ReadFile(t.Cert)
	if err != nil {
		return nil, fmt.Errorf("tls.cert: %w", err)
	}
	keyPEM, err := secretfile.Read(t.Key)
	if err != nil {
		return nil, fmt.Errorf("tls.key: %w", err)
	}
	defer clear(keyPEM)
	if !x509.NewCertPool().AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("tls.ca: %s holds no PEM certificate", t.CA)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return nil, fmt.Errorf("tls.cert, tls.key: %s and %s are not a certificate and its key: %w", t.Cert, t.Key, err)
	}
	// What is left for pki to refuse is the certificate's standing with
	// the CA (its chain, its validity period, its usage).
	mat, err := pki.FromPEM(caPEM, certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls.cert: %s: %w (tls.ca is %s)", t.Cert, err, t.CA)
	}
	if mat.NodeID != nodeID {
		return nil, fmt.Errorf("tls.cert: %s is issued to node %q, but node_id is %q", t.Cert, mat.NodeID, nodeID)
	}
	return mat, nil
}

// checkNotify checks that every notify command's program is an executable
// file on this node: a command that cannot start would fail only at the
// transition it is for.
func checkNotify(n config.Notify) []error {
	var errs []error
	for _, state := range config.NotifyStates {
		argv, ok := n.Commands[state]
		if !ok {
			continue
		}
		st, err := os.Stat(argv[0])
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("notify.%s: %w", state, err))
		case !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0:
			errs = append(errs, fmt.Errorf("notify.%s: %s is not an executable file", state, argv[0]))
		}
	}
	return errs
}
