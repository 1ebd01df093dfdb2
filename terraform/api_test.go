package terraform_test

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"

	"github.com/handoffvpn/handoff/terraform"
)

// moduleEval evaluates a module's expression over the variables and locals
// a test gives, with the Terraform functions these expressions use.
func moduleEval(t *testing.T, expr hcl.Expression, vars map[string]cty.Value) cty.Value {
	t.Helper()
	ctx := &hcl.EvalContext{Variables: vars, Functions: map[string]function.Function{
		"concat":   stdlib.ConcatFunc,
		"tostring": stdlib.MakeToFunc(cty.String),
		"toset":    stdlib.MakeToFunc(cty.Set(cty.DynamicPseudoType)),
	}}
	v, diags := expr.Value(ctx)
	if diags.HasErrors() {
		t.Fatalf("%s: %v", expr.Range(), diags)
	}
	return v
}

func stringsOf(t *testing.T, v cty.Value) []string {
	t.Helper()
	if v.Type() == cty.String {
		return []string{v.AsString()}
	}
	if v.Type() == cty.Number {
		return []string{v.AsBigFloat().Text('f', 0)}
	}
	var out []string
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		out = append(out, stringsOf(t, e)...)
	}
	return out
}

func variableDefault(t *testing.T, m *terraform.Module, name string) cty.Value {
	t.Helper()
	vs := m.Find("variable", name)
	if len(vs) != 1 {
		t.Fatalf("%d variables %s", len(vs), name)
	}
	a, err := vs[0].Attribute("default")
	if err != nil || a == nil {
		t.Fatalf("variable %s has no default", name)
	}
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return v
}

// attr evaluates an attribute of the first resource block typ.name, or of
// its nested block.
func attr(t *testing.T, m *terraform.Module, typ, name, nestedType, key string, vars map[string]cty.Value) []string {
	t.Helper()
	for _, b := range m.Find("resource", typ) {
		if b.Labels[1] != name {
			continue
		}
		body := b.Body
		if nestedType != "" {
			ns, err := b.Nested(nestedType)
			if err != nil || len(ns) == 0 {
				t.Fatalf("%s.%s has no %s block", typ, name, nestedType)
			}
			body = ns[0].Body
		}
		c, _, diags := body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: key}}})
		if diags.HasErrors() || c.Attributes[key] == nil {
			t.Fatalf("%s.%s has no %s", typ, name, key)
		}
		return stringsOf(t, moduleEval(t, c.Attributes[key].Expr, vars))
	}
	t.Fatalf("module has no resource %s.%s", typ, name)
	return nil
}

// TestAPIListensWhereThePortRuleOpens evaluates the modules' own
// expressions: with api_listen = "private" every node's agent config puts
// the API on the node's private address at api_port, and the firewall rule
// between the nodes, and the one for api_cidrs (Prometheus), open exactly
// that port; with "loopback" it stays on 127.0.0.1.
func TestAPIListensWhereThePortRuleOpens(t *testing.T) {
	rules := map[string][]struct{ typ, name, nested, key string }{
		"aws": {{"aws_vpc_security_group_ingress_rule", "raft", "", "for_each"},
			{"aws_vpc_security_group_ingress_rule", "api", "", "from_port"}, {"aws_vpc_security_group_ingress_rule", "api", "", "to_port"}},
		"gcp":   {{"google_compute_firewall", "raft", "allow", "ports"}, {"google_compute_firewall", "api", "allow", "ports"}},
		"azure": {{"azurerm_network_security_rule", "raft", "", "destination_port_ranges"}, {"azurerm_network_security_rule", "api", "", "destination_port_range"}},
	}
	for _, cloud := range terraform.Clouds {
		t.Run(cloud, func(t *testing.T) {
			m, err := terraform.LoadModule(filepath.Join("modules", cloud))
			if err != nil {
				t.Fatal(err)
			}
			port := variableDefault(t, m, "api_port")
			expr, err := m.TemplateArg("configs", "api_addr")
			if err != nil {
				t.Fatal(err)
			}
			vars := func(listen string) map[string]cty.Value {
				return map[string]cty.Value{
					"var": cty.ObjectVal(map[string]cty.Value{
						"api_listen": cty.StringVal(listen), "api_port": port,
						"raft_port": variableDefault(t, m, "raft_port"), "extra_node_ports": cty.ListValEmpty(cty.Number),
					}),
					"local": cty.ObjectVal(map[string]cty.Value{
						"node_ips": cty.MapVal(map[string]cty.Value{"gw1": cty.StringVal("10.0.1.10"), "witness": cty.StringVal("10.0.2.20")}),
					}),
					"id": cty.StringVal("gw1"),
				}
			}
			want := "10.0.1.10:" + stringsOf(t, port)[0]
			if got := moduleEval(t, expr, vars("private")).AsString(); got != want {
				t.Errorf("api_listen = private renders api.addr %q, want %q", got, want)
			}
			if got := moduleEval(t, expr, vars("loopback")).AsString(); got != "127.0.0.1:"+stringsOf(t, port)[0] {
				t.Errorf("api_listen = loopback renders api.addr %q", got)
			}
			for _, r := range rules[cloud] {
				ports := attr(t, m, r.typ, r.name, r.nested, r.key, vars("private"))
				if !slices.Contains(ports, stringsOf(t, port)[0]) {
					t.Errorf("%s.%s %s = %v: does not open the API's port %s", r.typ, r.name, r.key, ports, stringsOf(t, port)[0])
				}
			}
			if cloud == "azure" {
				// The allow must come before the deny of the same port.
				allow := attr(t, m, "azurerm_network_security_rule", "api", "", "priority", nil)[0]
				deny := attr(t, m, "azurerm_network_security_rule", "raft_deny", "", "priority", nil)[0]
				if len(allow) > len(deny) || len(allow) == len(deny) && allow >= deny {
					t.Errorf("the api rule's priority %s does not come before raft_deny's %s", allow, deny)
				}
			}
		})
	}
}
