package terraform_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/handoffvpn/handoff/providers"
	"github.com/handoffvpn/handoff/providers/aws"
	"github.com/handoffvpn/handoff/providers/azure"
	"github.com/handoffvpn/handoff/providers/emulator"
	"github.com/handoffvpn/handoff/terraform"
)

// emulatedFleet is what each cloud's emulator fixture offers.
type emulatedFleet interface {
	NewProvider(node string) (providers.Provider, error)
	Close() error
}

// calledPermissions runs a takeover back and forth between two nodes and
// Owner on every resource through the real SDK against the built-in
// emulator, and returns the permissions of every call the emulator saw.
// (GCP is covered the same way by providers/gcp's own
// TestGCPPermissionsMatchCalls, whose method-to-permission table lives
// there.)
func calledPermissions(t *testing.T, cloud string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	em, err := emulator.New(emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer em.Close()
	nodes := []string{"gw1", "gw2"}
	var fx emulatedFleet
	var rs []providers.Resource
	switch cloud {
	case "aws":
		f, err := aws.EmulatorFixture(ctx, em, nodes)
		if err != nil {
			t.Fatal(err)
		}
		fx, rs = f, f.Resources
	case "azure":
		f, err := azure.EmulatorFixture(ctx, em, nodes)
		if err != nil {
			t.Fatal(err)
		}
		fx, rs = f, f.Resources
	}
	defer fx.Close()
	for term, node := range []string{"gw2", "gw1"} {
		p, err := fx.NewProvider(node)
		if err != nil {
			t.Fatal(err)
		}
		if pc, ok := p.(providers.PermissionChecker); ok {
			if err := pc.CheckPermissions(ctx, rs); err != nil {
				t.Fatalf("%s: permission check: %v", node, err)
			}
		}
		if err := p.Claim(ctx, uint64(term+1), rs); err != nil {
			t.Fatalf("%s claim at term %d: %v", node, term+1, err)
		}
		for _, r := range rs {
			if h, err := p.Owner(ctx, r); err != nil || h.Node != node {
				t.Fatalf("owner of %s after %s's claim: %+v, %v", r, node, h, err)
			}
		}
		if c, ok := p.(io.Closer); ok {
			c.Close()
		}
	}
	var perms []string
	for _, op := range em.Gate().Ops(cloud) {
		switch {
		case cloud == "aws":
			perms = append(perms, "ec2:"+op) // the EC2 front end names calls by Action
		case op != emulator.AzureOpMetadata: // IMDS needs no RBAC action
			perms = append(perms, op) // the ARM front end names calls by RBAC action
		}
	}
	return perms
}

// ungranted returns the called permissions that grants lacks.
func ungranted(called, grants []string) []string {
	var out []string
	for _, p := range called {
		if !slices.Contains(grants, p) {
			out = append(out, p)
		}
	}
	return out
}

// TestModulesGrantEveryCallTheProviderMakes ties the modules to the calls
// themselves, not only to Permissions(): a failover through the real SDK
// needs nothing the module does not grant; and a module that lacks one of
// those permissions is caught, naming it.
func TestModulesGrantEveryCallTheProviderMakes(t *testing.T) {
	for _, cloud := range []string{"aws", "azure"} {
		t.Run(cloud, func(t *testing.T) {
			called := calledPermissions(t, cloud)
			if len(called) < 5 {
				t.Fatalf("only %d calls recorded: %v", len(called), called)
			}
			m, err := terraform.LoadModule(filepath.Join("modules", cloud))
			if err != nil {
				t.Fatal(err)
			}
			grants, err := m.Grants(cloud)
			if err != nil {
				t.Fatal(err)
			}
			if miss := ungranted(called, grants); len(miss) > 0 {
				t.Fatalf("a failover calls %v, which modules/%s does not grant", miss, cloud)
			}
			t.Logf("%d permissions called, all granted: %v", len(called), called)

			// The same check on a module whose list lost one of them.
			removed := called[len(called)-1]
			dir := copyModule(t, cloud)
			var kept []string
			for _, p := range grants {
				if p != removed {
					kept = append(kept, p)
				}
			}
			b, err := terraform.PermissionsJSON(cloud, kept)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, terraform.PermissionsFile), b, 0o644); err != nil {
				t.Fatal(err)
			}
			broken, err := terraform.LoadModule(dir)
			if err != nil {
				t.Fatal(err)
			}
			lesser, err := broken.Grants(cloud)
			if err != nil {
				t.Fatal(err)
			}
			if miss := ungranted(called, lesser); !slices.Equal(miss, []string{removed}) {
				t.Fatalf("module without %s: ungranted calls = %v, want [%s]", removed, miss, removed)
			}
		})
	}
}
