// Command gen writes each Terraform module's permissions.auto.tf.json from
// its provider's Permissions(), so the IAM the modules grant comes from the
// same list the providers' tests check against their calls, and copies the
// canonical systemd unit (dist/handoff.service) to terraform/files, which
// the modules read (a module stays self-contained under terraform/). Run it with
// `go generate ./terraform` (or `go run ./terraform/internal/gen`) from
// anywhere in the repository.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/handoffvpn/handoff/providers/aws"
	"github.com/handoffvpn/handoff/providers/azure"
	"github.com/handoffvpn/handoff/providers/gcp"
	"github.com/handoffvpn/handoff/terraform"
)

func main() {
	check := flag.Bool("check", false, "only report stale files (exit 1), write nothing")
	flag.Parse()
	if err := run(*check); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(check bool) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	perms := map[string][]string{"aws": aws.Permissions(), "gcp": gcp.Permissions(), "azure": azure.Permissions()}
	stale := false
	for _, cloud := range terraform.Clouds {
		want, err := terraform.PermissionsJSON(cloud, perms[cloud])
		if err != nil {
			return err
		}
		path := filepath.Join(root, "terraform", "modules", cloud, terraform.PermissionsFile)
		have, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("reading %s: %w", path, err)
		}
		if bytes.Equal(have, want) {
			continue
		}
		if check {
			fmt.Fprintf(os.Stderr, "%s is stale\n", path)
			stale = true
			continue
		}
		if err := os.WriteFile(path, want, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
		fmt.Printf("wrote %s (%d permissions)\n", path, len(perms[cloud]))
	}
	unit, err := os.ReadFile(filepath.Join(root, "dist", "handoff.service"))
	if err != nil {
		return fmt.Errorf("reading the canonical unit: %w", err)
	}
	copyPath := filepath.Join(root, "terraform", "files", "handoff.service")
	if have, err := os.ReadFile(copyPath); err != nil || !bytes.Equal(have, unit) {
		if check {
			fmt.Fprintf(os.Stderr, "%s is stale\n", copyPath)
			stale = true
		} else if err := os.WriteFile(copyPath, unit, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", copyPath, err)
		} else {
			fmt.Printf("wrote %s (from dist/handoff.service)\n", copyPath)
		}
	}
	if stale {
		return errors.New("generated files are stale: run go generate ./terraform")
	}
	return nil
}

// moduleRoot walks up from the working directory to the go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the Go module (no go.mod above the working directory)")
		}
		dir = parent
	}
}
