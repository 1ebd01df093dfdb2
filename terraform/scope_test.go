package terraform_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"

	"github.com/handoffvpn/handoff/terraform"
)

// localExpr returns the expression of a module's local.
func localExpr(t *testing.T, m *terraform.Module, name string) hcl.Expression {
	t.Helper()
	for _, b := range m.Find("locals", "") {
		attrs, diags := b.Body.JustAttributes()
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		if a, ok := attrs[name]; ok {
			return a.Expr
		}
	}
	t.Fatalf("module %s has no local %s", m.Dir, name)
	return nil
}

// references lists the roots of what an expression refers to, as
// "var.x", "local.y", "azurerm_public_ip.vpn", "data.azurerm_resource_group.fleet".
func references(expr hcl.Expression) []string {
	var out []string
	for _, tr := range expr.Variables() {
		parts := []string{tr.RootName()}
		for _, step := range tr[1:] {
			a, ok := step.(hcl.TraverseAttr)
			if !ok || len(parts) == 3 || parts[0] != "data" && len(parts) == 2 {
				break
			}
			parts = append(parts, a.Name)
		}
		out = append(out, strings.Join(parts, "."))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// TestGrantsAreScopedToTheModulesResources: the permissions are exact (the
// tests above) and so are the resources they apply to. AWS grants every
// write on the fleet's own Elastic IP (by tag), interfaces and route
// tables (Grants refuses a write on "*"); GCP grants the moves under a
// condition naming the fleet's forwarding rules, VMs, target instances,
// routes and network, and only reads on the project; Azure assigns the
// role on the public IP, the NICs, the subnet and the route tables, never
// on the resource group.
func TestGrantsAreScopedToTheModulesResources(t *testing.T) {
	load := func(cloud string) *terraform.Module {
		m, err := terraform.LoadModule(filepath.Join("modules", cloud))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	t.Run("aws", func(t *testing.T) {
		m := load("aws")
		if _, err := m.Grants("aws"); err != nil {
			t.Fatal(err)
		}
		src := readFile(t, "modules/aws/iam.tf")
		for _, want := range []string{`variable = "aws:ResourceTag/handoff:fleet"`, `resources = local.gateway_eni_arns`, `resources = local.route_table_arns`, `variable = "aws:TagKeys"`} {
			if !strings.Contains(src, want) {
				t.Errorf("modules/aws/iam.tf lacks %s", want)
			}
		}
		for _, want := range []string{"aws_instance.gateway"} {
			if !slices.Contains(references(localExpr(t, m, "gateway_eni_arns")), want) {
				t.Errorf("local.gateway_eni_arns is not built from %s", want)
			}
		}
	})
	t.Run("gcp", func(t *testing.T) {
		m := load("gcp")
		static := m.StaticLocals()
		read, move := static["handoff_read_permissions"], static["handoff_move_permissions"]
		if read.IsNull() || move.IsNull() || read.LengthInt() == 0 || move.LengthInt() == 0 {
			t.Fatalf("read %#v, move %#v", read, move)
		}
		for it := move.ElementIterator(); it.Next(); {
			_, p := it.Element()
			if s := p.AsString(); strings.HasSuffix(s, ".get") || strings.HasSuffix(s, ".list") {
				t.Errorf("%s is in the conditioned move role", s)
			}
		}
		var conditioned bool
		for _, b := range m.Find("resource", "google_project_iam_member") {
			role, _ := b.Attribute("role")
			cond, _ := b.Nested("condition")
			if slices.Contains(references(role.Expr), "google_project_iam_custom_role.handoff") {
				conditioned = len(cond) == 1
			}
		}
		if !conditioned {
			t.Error("the move role is bound without a condition")
		}
		expr := localExpr(t, m, "handoff_move_condition")
		ctx := &hcl.EvalContext{
			Variables: map[string]cty.Value{
				"var":   cty.ObjectVal(map[string]cty.Value{"project": cty.StringVal("p1"), "region": cty.StringVal("europe-west1"), "name": cty.StringVal("vpn")}),
				"local": cty.ObjectVal(map[string]cty.Value{"network_name": cty.StringVal("vpc")}),
			},
			Functions: map[string]function.Function{"join": stdlib.JoinFunc},
		}
		v, diags := expr.Value(ctx)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		cel := v.AsString()
		for _, want := range []string{`"projects/p1/regions/europe-west1/forwardingRules/vpn-"`, `"projects/p1/global/routes/handoff-"`,
			`== "projects/p1/global/networks/vpc"`, `extract("/instances/{name}").startsWith("vpn-")`, `extract("/targetInstances/{name}").startsWith("vpn-")`} {
			if !strings.Contains(cel, want) {
				t.Errorf("the condition %s lacks %s", cel, want)
			}
		}
	})
	t.Run("azure", func(t *testing.T) {
		m := load("azure")
		for _, b := range m.Find("resource", "azurerm_role_assignment") {
			fe, _ := b.Attribute("for_each")
			if fe == nil || !slices.Equal(references(fe.Expr), []string{"local.role_assignments"}) {
				t.Fatalf("%s is not assigned over local.role_assignments", b.Address())
			}
		}
		refs := references(localExpr(t, m, "role_assignments"))
		for _, want := range []string{"azurerm_public_ip.vpn", "azurerm_network_interface.gateway", "var.subnet_id", "local.route_table_ids"} {
			if !slices.Contains(refs, want) {
				t.Errorf("the role is not assigned on %s (assigned on %v)", want, refs)
			}
		}
		if slices.Contains(refs, "data.azurerm_resource_group.fleet") {
			t.Errorf("the role is assigned on the whole resource group: %v", refs)
		}
		if tmpl := readFile(t, "modules/azure/templates/handoff.hcl.tftpl"); !strings.Contains(tmpl, "network_interface") {
			t.Error("the agents' config does not name their NIC: the provider would list the resource group's, which the role does not cover")
		}
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
