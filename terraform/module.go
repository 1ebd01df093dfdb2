package terraform

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// Block is one top-level block of a module file.
type Block struct {
	Type   string
	Labels []string
	Body   hcl.Body
	Range  hcl.Range
}

// Address is the block's Terraform address, e.g. data.aws_iam_policy_document.handoff.
func (b Block) Address() string {
	switch b.Type {
	case "resource":
		return strings.Join(b.Labels, ".")
	case "data":
		return "data." + strings.Join(b.Labels, ".")
	}
	return strings.Join(append([]string{b.Type}, b.Labels...), ".")
}

// Module is a parsed Terraform module directory: its .tf and .tf.json files.
type Module struct {
	Dir    string
	Files  []string
	Blocks []Block
	locals map[string]hcl.Expression
}

// topSchema lists the top-level blocks of the Terraform language.
var topSchema = &hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{
	{Type: "terraform"},
	{Type: "locals"},
	{Type: "variable", LabelNames: []string{"name"}},
	{Type: "output", LabelNames: []string{"name"}},
	{Type: "provider", LabelNames: []string{"name"}},
	{Type: "module", LabelNames: []string{"name"}},
	{Type: "data", LabelNames: []string{"type", "name"}},
	{Type: "resource", LabelNames: []string{"type", "name"}},
	{Type: "moved"},
	{Type: "import"},
	{Type: "removed"},
	{Type: "check", LabelNames: []string{"name"}},
}}

// LoadModule parses every .tf and .tf.json file of dir (not its
// subdirectories). Any syntax error fails the load, naming file and line.
func LoadModule(dir string) (*Module, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading module %s: %w", dir, err)
	}
	m := &Module{Dir: dir, locals: map[string]hcl.Expression{}}
	p := hclparse.NewParser()
	var diags hcl.Diagnostics
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !(strings.HasSuffix(name, ".tf") || strings.HasSuffix(name, ".tf.json")) {
			continue
		}
		path := filepath.Join(dir, name)
		var f *hcl.File
		var d hcl.Diagnostics
		if strings.HasSuffix(name, ".json") {
			f, d = p.ParseJSONFile(path)
		} else {
			f, d = p.ParseHCLFile(path)
		}
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		m.Files = append(m.Files, name)
		content, _, d := f.Body.PartialContent(topSchema)
		diags = append(diags, d...)
		for _, b := range content.Blocks {
			m.Blocks = append(m.Blocks, Block{Type: b.Type, Labels: b.Labels, Body: b.Body, Range: b.DefRange})
			if b.Type == "locals" {
				attrs, d := b.Body.JustAttributes()
				diags = append(diags, d...)
				for n, a := range attrs {
					if _, dup := m.locals[n]; dup {
						diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "duplicate local " + n, Subject: &a.NameRange})
					}
					m.locals[n] = a.Expr
				}
			}
		}
	}
	if diags.HasErrors() {
		return nil, fmt.Errorf("parsing module %s: %w", dir, diags)
	}
	if len(m.Files) == 0 {
		return nil, fmt.Errorf("module %s has no .tf files", dir)
	}
	return m, nil
}

// Find returns the blocks of a type whose first label is kind ("" for any).
func (m *Module) Find(typ, kind string) []Block {
	var out []Block
	for _, b := range m.Blocks {
		if b.Type == typ && (kind == "" || len(b.Labels) > 0 && b.Labels[0] == kind) {
			out = append(out, b)
		}
	}
	return out
}

// functions are the few Terraform functions the permission expressions
// may use; Terraform's own implementations behave the same for them.
func functions() map[string]function.Function {
	prefix := func(match func(s, p string) bool) function.Function {
		return function.New(&function.Spec{
			Params: []function.Parameter{{Name: "str", Type: cty.String}, {Name: "fix", Type: cty.String}},
			Type:   function.StaticReturnType(cty.Bool),
			Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
				return cty.BoolVal(match(args[0].AsString(), args[1].AsString())), nil
			},
		})
	}
	return map[string]function.Function{
		"startswith": prefix(strings.HasPrefix),
		"endswith":   prefix(strings.HasSuffix),
		"concat":     stdlib.ConcatFunc,
		"contains":   stdlib.ContainsFunc,
		"distinct":   stdlib.DistinctFunc,
		"flatten":    stdlib.FlattenFunc,
		"sort":       stdlib.SortFunc,
		"length":     stdlib.LengthFunc,
	}
}

// StaticLocals evaluates every local whose value needs nothing but other
// locals (literals, the generated permission lists, expressions over
// them). Locals that read variables, data sources or resources are left
// out: they are unknown until plan time.
func (m *Module) StaticLocals() map[string]cty.Value {
	known := map[string]cty.Value{}
	for progress := true; progress; {
		progress = false
		for name, expr := range m.locals {
			if _, ok := known[name]; ok {
				continue
			}
			ready := true
			for _, t := range expr.Variables() {
				if t.RootName() != "local" || len(t) < 2 {
					ready = false
					break
				}
				attr, ok := t[1].(hcl.TraverseAttr)
				if _, have := known[attr.Name]; !ok || !have {
					ready = false
					break
				}
			}
			if !ready {
				continue
			}
			v, diags := expr.Value(m.evalContext(known))
			if diags.HasErrors() || !v.IsWhollyKnown() {
				continue
			}
			known[name] = v
			progress = true
		}
	}
	return known
}

func (m *Module) evalContext(locals map[string]cty.Value) *hcl.EvalContext {
	return &hcl.EvalContext{
		Variables: map[string]cty.Value{"local": cty.ObjectVal(locals)},
		Functions: functions(),
	}
}

// evalStrings evaluates expr (a list of strings over static locals).
func (m *Module) evalStrings(expr hcl.Expression, locals map[string]cty.Value) ([]string, error) {
	v, diags := expr.Value(m.evalContext(locals))
	if diags.HasErrors() {
		return nil, fmt.Errorf("%s: not a list the check can evaluate (only literals and locals over the generated permission list): %w", expr.Range(), diags)
	}
	if v.IsNull() || !v.CanIterateElements() {
		return nil, fmt.Errorf("%s: %s is not a list", expr.Range(), v.Type().FriendlyName())
	}
	var out []string
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		if e.IsNull() || e.Type() != cty.String {
			return nil, fmt.Errorf("%s: an element is not a string", expr.Range())
		}
		out = append(out, e.AsString())
	}
	return out, nil
}

// attribute returns the named attribute of a block body, or nil.
func attribute(body hcl.Body, name string) (*hcl.Attribute, error) {
	c, _, diags := body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: name}}})
	if diags.HasErrors() {
		return nil, diags
	}
	return c.Attributes[name], nil
}

// nested returns the nested blocks of a type.
func nested(body hcl.Body, typ string) ([]*hcl.Block, error) {
	c, _, diags := body.PartialContent(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{{Type: typ}}})
	if diags.HasErrors() {
		return nil, diags
	}
	return c.Blocks, nil
}

// Undescribed lists the variables and outputs without a non-empty literal
// description, as "variable.x (file:line)".
func (m *Module) Undescribed() ([]string, error) {
	var out []string
	for _, b := range m.Blocks {
		if b.Type != "variable" && b.Type != "output" {
			continue
		}
		a, err := attribute(b.Body, "description")
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", b.Type, b.Labels[0], err)
		}
		ok := false
		if a != nil {
			v, diags := a.Expr.Value(nil)
			ok = !diags.HasErrors() && v.Type() == cty.String && !v.IsNull() && strings.TrimSpace(v.AsString()) != ""
		}
		if !ok {
			out = append(out, fmt.Sprintf("%s.%s (%s)", b.Type, b.Labels[0], b.Range))
		}
	}
	sort.Strings(out)
	return out, nil
}

// TemplateCall is one templatefile(path, vars) call in a module's locals.
type TemplateCall struct {
	Local string
	// Template is the template's path, resolved against the module dir.
	Template string
	// Vars are the keys of the variables object passed to it.
	Vars []string
}

// TemplateCalls finds every templatefile call in the module's locals whose
// path is "${path.module}<literal>".
func (m *Module) TemplateCalls() ([]TemplateCall, error) {
	var out []TemplateCall
	var errs []error
	for name, expr := range m.locals {
		sx, ok := expr.(hclsyntax.Expression)
		if !ok {
			continue
		}
		hclsyntax.VisitAll(sx, func(n hclsyntax.Node) hcl.Diagnostics {
			call, ok := n.(*hclsyntax.FunctionCallExpr)
			if !ok || call.Name != "templatefile" || len(call.Args) != 2 {
				return nil
			}
			tc := TemplateCall{Local: name}
			if tpl, ok := call.Args[0].(*hclsyntax.TemplateExpr); ok && len(tpl.Parts) == 2 {
				if lit, ok := tpl.Parts[1].(*hclsyntax.LiteralValueExpr); ok && lit.Val.Type() == cty.String {
					tc.Template = filepath.Join(m.Dir, lit.Val.AsString())
				}
			}
			obj, ok := call.Args[1].(*hclsyntax.ObjectConsExpr)
			if tc.Template == "" || !ok {
				errs = append(errs, fmt.Errorf("%s: templatefile needs \"${path.module}/...\" and an object literal", call.Range()))
				return nil
			}
			for _, item := range obj.Items {
				k := hcl.ExprAsKeyword(item.KeyExpr)
				if k == "" {
					errs = append(errs, fmt.Errorf("%s: a template variable's name is not a plain word", item.KeyExpr.Range()))
					continue
				}
				tc.Vars = append(tc.Vars, k)
			}
			sort.Strings(tc.Vars)
			out = append(out, tc)
			return nil
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Local < out[j].Local })
	return out, errors.Join(errs...)
}

// Attribute returns the block's attribute of that name, or nil.
func (b Block) Attribute(name string) (*hcl.Attribute, error) { return attribute(b.Body, name) }

// Nested returns the block's nested blocks of a type.
func (b Block) Nested(typ string) ([]*hcl.Block, error) { return nested(b.Body, typ) }

// TemplateArg returns the expression a module passes as key to the
// templatefile call in local (what `configs` hands the agent's config
// template as api_addr, say), for a test to evaluate.
func (m *Module) TemplateArg(local, key string) (hcl.Expression, error) {
	expr, ok := m.locals[local].(hclsyntax.Expression)
	if !ok {
		return nil, fmt.Errorf("module %s has no local %s", m.Dir, local)
	}
	var found hcl.Expression
	hclsyntax.VisitAll(expr, func(n hclsyntax.Node) hcl.Diagnostics {
		call, ok := n.(*hclsyntax.FunctionCallExpr)
		if !ok || call.Name != "templatefile" || len(call.Args) != 2 {
			return nil
		}
		if obj, ok := call.Args[1].(*hclsyntax.ObjectConsExpr); ok {
			for _, item := range obj.Items {
				if hcl.ExprAsKeyword(item.KeyExpr) == key {
					found = item.ValueExpr
				}
			}
		}
		return nil
	})
	if found == nil {
		return nil, fmt.Errorf("module %s: local.%s passes no %s to its template", m.Dir, local, key)
	}
	return found, nil
}
