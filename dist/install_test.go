// Package dist holds what installs Handoff on a host without Terraform:
// the canonical systemd unit, example files and install.mk. Its test runs
// `make install` into a staging root.
package dist_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/config"
)

// TestMakeInstallLaysOutTheFiles runs `make install DESTDIR=...` for the
// default prefix and for PREFIX=/usr, and checks every file, its mode, the
// unit's ExecStart (the installed binary, otherwise the canonical unit
// unchanged) and that the installed example configuration is valid.
func TestMakeInstallLaysOutTheFiles(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("SKIP: make is not installed")
	}
	unit, err := os.ReadFile("handoff.service")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "handoff")
	for _, c := range []struct{ prefix, binDir string }{{"", "/usr/local/bin"}, {"/usr", "/usr/bin"}} {
		t.Run("prefix="+c.binDir, func(t *testing.T) {
			dest := t.TempDir()
			args := []string{"-C", "..", "install", "DESTDIR=" + dest, "BIN=" + bin}
			if c.prefix != "" {
				args = append(args, "PREFIX="+c.prefix)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if out, err := exec.CommandContext(ctx, "make", args...).CombinedOutput(); err != nil {
				t.Fatalf("make %v: %v\n%s", args, err, out)
			}
			for path, mode := range map[string]os.FileMode{
				c.binDir + "/handoff":                   0o755,
				"/etc/systemd/system/handoff.service":   0o644,
				"/etc/handoff":                          0o700 | os.ModeDir,
				"/etc/handoff/tls":                      0o700 | os.ModeDir,
				"/etc/handoff/handoff.hcl.example":      0o600,
				"/etc/handoff/reestablish.yaml.example": 0o644,
			} {
				st, err := os.Stat(filepath.Join(dest, path))
				if err != nil {
					t.Errorf("not installed: %v", err)
					continue
				}
				if st.Mode()&(os.ModePerm|os.ModeDir) != mode {
					t.Errorf("%s has mode %v, want %v", path, st.Mode(), mode)
				}
			}
			out, err := exec.Command(filepath.Join(dest, c.binDir, "handoff"), "version").CombinedOutput()
			if err != nil || !strings.HasPrefix(string(out), "handoff ") {
				t.Errorf("the installed binary: %v\n%s", err, out)
			}
			got, err := os.ReadFile(filepath.Join(dest, "/etc/systemd/system/handoff.service"))
			if err != nil {
				t.Fatal(err)
			}
			want := strings.Replace(string(unit), "ExecStart=/usr/local/bin/handoff ", "ExecStart="+c.binDir+"/handoff ", 1)
			if string(got) != want {
				t.Errorf("the installed unit is not dist/handoff.service with ExecStart=%s/handoff:\n%s", c.binDir, got)
			}

			// The example is a valid configuration once its files exist.
			src, err := os.ReadFile(filepath.Join(dest, "/etc/handoff/handoff.hcl.example"))
			if err != nil {
				t.Fatal(err)
			}
			local := strings.ReplaceAll(string(src), `"/etc/handoff/reestablish.yaml"`, `"`+filepath.Join(dest, "/etc/handoff/reestablish.yaml.example")+`"`)
			local = strings.Replace(local, `cluster_key_file = "/etc/handoff/cluster.key"`, `cluster_key = "`+strings.Repeat("ab", 32)+`"`, 1)
			f, err := config.Parse("handoff.hcl", []byte(local), "hcl")
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Resolve(f)
			if err != nil {
				t.Fatalf("the example configuration: %v", err)
			}
			if cfg.ProviderType != "linux" || len(cfg.Resources) != 2 || cfg.Reestablish == nil || len(cfg.Warnings) != 0 {
				t.Errorf("example: provider %s, %d resources, template %v, warnings %q", cfg.ProviderType, len(cfg.Resources), cfg.Reestablish != nil, cfg.Warnings)
			}
		})
	}
}
