package main

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/handoffvpn/handoff/internal/pki"
)

func runTLS(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"usage: handoff tls ca|cert|show [flags]"}
	}
	if groupHelp("tls", args, stdout) {
		return nil
	}
	switch args[0] {
	case "ca":
		fs := flag.NewFlagSet("tls ca", flag.ContinueOnError)
		dir := fs.String("out", ".", "directory for ca.pem and ca-key.pem")
		name := fs.String("name", "handoff cluster CA", "CA common name")
		days := fs.Int("days", 3650, "validity in days")
		force := fs.Bool("force", false, "overwrite existing files")
		if err := parseFlags(fs, args[1:], stdout); err != nil {
			return err
		}
		ca, err := pki.NewCA(*name, time.Duration(*days)*24*time.Hour)
		if err != nil {
			return err
		}
		key, err := ca.KeyPEM()
		if err != nil {
			return err
		}
		if err := pki.WriteFile(filepath.Join(*dir, "ca.pem"), ca.PEM, false, *force); err != nil {
			return err
		}
		if err := pki.WriteFile(filepath.Join(*dir, "ca-key.pem"), key, true, *force); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s and %s (keep the key offline)\n", filepath.Join(*dir, "ca.pem"), filepath.Join(*dir, "ca-key.pem"))
		return nil
	case "cert":
		fs := flag.NewFlagSet("tls cert", flag.ContinueOnError)
		caDir := fs.String("ca", ".", "directory holding ca.pem and ca-key.pem")
		node := fs.String("node", "", "node ID (required; peers are identified by it)")
		hosts := fs.String("hosts", "", "comma-separated IPs and DNS names of the node")
		dir := fs.String("out", ".", "directory for <node>.pem and <node>-key.pem")
		days := fs.Int("days", 825, "validity in days")
		force := fs.Bool("force", false, "overwrite existing files")
		if err := parseFlags(fs, args[1:], stdout); err != nil {
			return err
		}
		if *node == "" {
			return usageError{"tls cert: -node is required"}
		}
		ca, err := pki.LoadCA(filepath.Join(*caDir, "ca.pem"), filepath.Join(*caDir, "ca-key.pem"))
		if err != nil {
			return err
		}
		var hs []string
		for _, h := range strings.Split(*hosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hs = append(hs, h)
			}
		}
		nc, err := ca.Issue(*node, hs, time.Duration(*days)*24*time.Hour)
		if err != nil {
			return err
		}
		cert, key := filepath.Join(*dir, *node+".pem"), filepath.Join(*dir, *node+"-key.pem")
		if err := pki.WriteFile(cert, nc.CertPEM, false, *force); err != nil {
			return err
		}
		if err := pki.WriteFile(key, nc.KeyPEM, true, *force); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s and %s\n", cert, key)
		// The serial is what retires the certificate (tls.deny_serials):
		// print it now, while the operator knows which node it is for.
		return showCerts(stdout, cert, nc.CertPEM)
	case "show":
		fs := flag.NewFlagSet("tls show", flag.ContinueOnError)
		if err := parseFlags(fs, args[1:], stdout); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			return usageError{"usage: handoff tls show CERT.pem... (prints node ID, serial, expiry, SHA-256 fingerprint)"}
		}
		for _, name := range fs.Args() {
			data, err := os.ReadFile(name)
			if err != nil {
				return fmt.Errorf("reading certificate: %w", err)
			}
			if err := showCerts(stdout, name, data); err != nil {
				return err
			}
		}
		return nil
	}
	return usageError{fmt.Sprintf("handoff tls: unknown subcommand %q (ca, cert, show)", args[0])}
}

// showCerts prints each certificate in a PEM file: its node ID, its
// serial in the form tls.deny_serials takes, its expiry and fingerprint.
func showCerts(w io.Writer, name string, data []byte) error {
	n := 0
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("parsing a certificate in %s: %w", name, err)
		}
		n++
		fmt.Fprintf(w, "%s: node %q, serial %s, expires %s, sha256 %s\n", name, c.Subject.CommonName,
			pki.FormatSerial(c.SerialNumber), c.NotAfter.UTC().Format(time.DateOnly), pki.Fingerprint(c))
	}
	if n == 0 {
		return fmt.Errorf("%s holds no PEM certificate", name)
	}
	return nil
}

// keygenPurposes are what `handoff keygen -for` makes: 32 random bytes in
// hex each time, with the file name and the advice that fit the use.
var keygenPurposes = map[string]struct{ file, advice string }{
	"cluster-key":    {"cluster.key", "copy it to every node's cluster_key_file"},
	"api-token":      {"api.token", "point each agent's api.token_file at it, and give operators the same token (-token-file or HANDOFF_TOKEN_FILE)"},
	"webhook-secret": {"webhook.secret", "point each agent's webhook.secret_file at it, and give the receiver the same secret to verify signatures"},
}

func runKeygen(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	purpose := fs.String("for", "cluster-key", "what the secret is for: cluster-key, api-token or webhook-secret (sets the default -out and the advice printed)")
	out := fs.String("out", "", "file to write (mode 0600; default cluster.key, api.token or webhook.secret after -for)")
	force := fs.Bool("force", false, "overwrite an existing file")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	p, ok := keygenPurposes[*purpose]
	if !ok {
		return usageError{fmt.Sprintf("keygen: -for %q is not cluster-key, api-token or webhook-secret", *purpose)}
	}
	if *out == "" {
		*out = p.file
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generating key: %w", err)
	}
	if err := pki.WriteFile(*out, []byte(hex.EncodeToString(key)+"\n"), true, *force); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: %s\n", *out, p.advice)
	return nil
}
