package terraform_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/handoffvpn/handoff/providers/aws"
	"github.com/handoffvpn/handoff/providers/azure"
	"github.com/handoffvpn/handoff/providers/gcp"
	"github.com/handoffvpn/handoff/terraform"
)

// permissions is what each provider's code calls; each provider's own
// conformance test checks Permissions() against the calls it made.
var permissions = map[string]func() []string{
	"aws":   aws.Permissions,
	"gcp":   gcp.Permissions,
	"azure": azure.Permissions,
}

// moduleDirs lists every directory under terraform/ holding .tf files.
func moduleDirs(t *testing.T) []string {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".tf") || strings.HasSuffix(path, ".tf.json")) {
			seen[filepath.Dir(path)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for d := range seen {
		dirs = append(dirs, d)
	}
	slices.Sort(dirs)
	for _, want := range []string{"modules/aws", "modules/gcp", "modules/azure", "examples/aws", "examples/gcp", "examples/azure"} {
		if !seen[want] {
			t.Errorf("no .tf files in %s", want)
		}
	}
	return dirs
}

func TestEveryFileParses(t *testing.T) {
	for _, dir := range moduleDirs(t) {
		m, err := terraform.LoadModule(dir)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		t.Logf("%s: %d files, %d blocks", dir, len(m.Files), len(m.Blocks))
	}
}

func TestVariablesAndOutputsHaveDescriptions(t *testing.T) {
	n := 0
	for _, dir := range moduleDirs(t) {
		m, err := terraform.LoadModule(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range m.Blocks {
			if b.Type == "variable" || b.Type == "output" {
				n++
			}
		}
		missing, err := m.Undescribed()
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range missing {
			t.Errorf("%s: %s has no description", dir, x)
		}
	}
	if n < 100 {
		t.Errorf("only %d variables and outputs found: is the parser reading the modules?", n)
	}
}

// TestModulePermissionsEqualProviderCalls is the single source of truth at
// work: each module grants exactly its provider's Permissions().
func TestModulePermissionsEqualProviderCalls(t *testing.T) {
	for _, cloud := range terraform.Clouds {
		t.Run(cloud, func(t *testing.T) {
			dir := filepath.Join("modules", cloud)
			if err := terraform.CheckPermissions(dir, cloud, permissions[cloud]()); err != nil {
				t.Fatal(err)
			}
			m, err := terraform.LoadModule(dir)
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Grants(cloud)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s grants %d permissions: %v", dir, len(got), got)
		})
	}
}

// TestGeneratedPermissionsAreFresh fails when a provider's Permissions()
// changed and `go generate ./terraform` was not run.
func TestGeneratedPermissionsAreFresh(t *testing.T) {
	for _, cloud := range terraform.Clouds {
		want, err := terraform.PermissionsJSON(cloud, permissions[cloud]())
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("modules", cloud, terraform.PermissionsFile)
		have, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(have) != string(want) {
			t.Errorf("%s is stale: run go generate ./terraform\nhave:\n%s\nwant:\n%s", path, have, want)
		}
	}
}

// copyModule copies a module directory so a test can break the copy.
func copyModule(t *testing.T, cloud string) string {
	t.Helper()
	src := filepath.Join("modules", cloud)
	dst := filepath.Join(t.TempDir(), cloud)
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestCheckFailsWhenACallLacksItsPermission shows the check catching the
// two ways a provider call can end up without its permission: the
// provider starts calling something the module's (stale) list lacks, and
// the module's list loses an entry.
func TestCheckFailsWhenACallLacksItsPermission(t *testing.T) {
	newCall := map[string]string{
		"aws":   "ec2:DisassociateAddress",
		"gcp":   "compute.addresses.use",
		"azure": "Microsoft.Network/networkInterfaces/effectiveRouteTable/action",
	}
	for _, cloud := range terraform.Clouds {
		t.Run(cloud+"/provider calls more", func(t *testing.T) {
			calls := append(permissions[cloud](), newCall[cloud])
			err := terraform.CheckPermissions(filepath.Join("modules", cloud), cloud, calls)
			var me *terraform.MismatchError
			if !errors.As(err, &me) || !slices.Equal(me.Missing, []string{newCall[cloud]}) || len(me.Extra) > 0 {
				t.Fatalf("err = %v, want a MismatchError missing only %s", err, newCall[cloud])
			}
			if !strings.Contains(err.Error(), newCall[cloud]) {
				t.Errorf("error %q does not name %s", err, newCall[cloud])
			}
			t.Log(err)
		})
		t.Run(cloud+"/module grants less", func(t *testing.T) {
			dir := copyModule(t, cloud)
			perms := permissions[cloud]()
			removed := perms[len(perms)/2]
			var kept []string
			for _, p := range perms {
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
			err = terraform.CheckPermissions(dir, cloud, perms)
			var me *terraform.MismatchError
			if !errors.As(err, &me) || !slices.Equal(me.Missing, []string{removed}) {
				t.Fatalf("err = %v, want a MismatchError missing %s", err, removed)
			}
			if !strings.Contains(err.Error(), removed) {
				t.Errorf("error %q does not name %s", err, removed)
			}
			t.Log(err)
		})
	}
}

// TestCheckFailsOnMoreThanTheCalls: least privilege is checked too, and a
// grant the check cannot account for is refused rather than ignored.
func TestCheckFailsOnMoreThanTheCalls(t *testing.T) {
	cases := []struct {
		cloud, file, old, new, want string
	}{
		{"aws", "iam.tf", `actions   = local.handoff_read_actions`, `actions   = concat(local.handoff_read_actions, ["ec2:TerminateInstances"])`, "grants ec2:TerminateInstances"},
		{"aws", "iam.tf", `actions   = local.handoff_read_actions`, `actions   = ["ec2:*"]`, `wildcard action "ec2:*"`},
		{"aws", "iam.tf", `policy = data.aws_iam_policy_document.handoff.json`, `policy = "{}"`, "policy must be data.aws_iam_policy_document"},
		{"aws", "iam.tf", `resources = local.gateway_eni_arns`, `resources = ["*"]`, "ec2:AssignPrivateIpAddresses on every resource"},
		{"gcp", "iam.tf", `role    = google_project_iam_custom_role.handoff.name`, `role    = "roles/compute.networkAdmin"`, "not this module's custom role"},
		{"azure", "iam.tf", `role_definition_id = azurerm_role_definition.handoff.role_definition_resource_id`, `role_definition_name = "Network Contributor"`, "built-in role"},
		{"azure", "iam.tf", `not_actions = []`, `not_actions = ["Microsoft.Network/routeTables/delete"]`, "not_actions must be empty"},
	}
	for _, c := range cases {
		t.Run(c.cloud+"/"+c.want, func(t *testing.T) {
			dir := copyModule(t, c.cloud)
			path := filepath.Join(dir, c.file)
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(src), c.old) {
				t.Fatalf("%s no longer contains %q: update the test", c.file, c.old)
			}
			if err := os.WriteFile(path, []byte(strings.Replace(string(src), c.old, c.new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			err = terraform.CheckPermissions(dir, c.cloud, permissions[c.cloud]())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one saying %q", err, c.want)
			}
		})
	}
}

// TestUnitIsTheCanonicalOne: the unit cloud-init installs is the one
// `make install` installs (dist/handoff.service); `go generate ./terraform`
// copies it here.
func TestUnitIsTheCanonicalOne(t *testing.T) {
	canonical, err := os.ReadFile("../dist/handoff.service")
	if err != nil {
		t.Fatal(err)
	}
	copied, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(canonical) != string(copied) {
		t.Errorf("%s differs from dist/handoff.service: run go generate ./terraform", unitPath)
	}
}
