package terraform_test

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/handoffvpn/handoff/config"
	"github.com/handoffvpn/handoff/terraform"
)

const configDoc = "../docs/configuration.md"

// configKey is one key of the configuration file.
type configKey struct {
	hcl, yaml string
	// def is the formatted default for keys of package config, "" if none;
	// own says whether the key is config's (its default is checked).
	def string
	own bool
	// leafDiffers: the YAML name of the key itself is not the HCL one.
	leafDiffers bool
}

// configKeys walks config.File's struct tags (and those of the provider
// settings blocks it embeds) and returns every key as a dotted path.
func configKeys(t *testing.T) []configKey {
	t.Helper()
	var out []configKey
	configPkg := reflect.TypeOf(config.File{}).PkgPath()
	var walk func(typ reflect.Type, def reflect.Value, hclPrefix, yamlPrefix string)
	walk = func(typ reflect.Type, def reflect.Value, hclPrefix, yamlPrefix string) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			tag, ok := f.Tag.Lookup("hcl")
			if !ok {
				continue // set by code only (HTTP clients, loggers)
			}
			name, kind, _ := strings.Cut(tag, ",")
			yname, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if yname == "" {
				yname = strings.ToLower(f.Name)
			}
			hp, yp := hclPrefix+name, yamlPrefix+yname
			ft := f.Type
			var fv reflect.Value
			if def.IsValid() {
				fv = def.Field(i)
			}
			if kind == "block" {
				for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
					ft = ft.Elem()
				}
				if fv.IsValid() && fv.Kind() == reflect.Pointer && !fv.IsNil() {
					fv = fv.Elem()
				} else {
					fv = reflect.Value{}
				}
				if f.Type.Kind() == reflect.Slice {
					// A repeated block has a row of its own (provider.resource).
					out = append(out, configKey{hcl: hp, yaml: yp, leafDiffers: name != yname})
				}
				walk(ft, fv, hp+".", yp+".")
				continue
			}
			k := configKey{hcl: hp, yaml: yp, own: typ.PkgPath() == configPkg, leafDiffers: name != yname}
			if fv.IsValid() {
				k.def = formatDefault(fv)
			}
			out = append(out, k)
		}
	}
	def := config.Defaults()
	walk(reflect.TypeOf(def), reflect.ValueOf(def), "", "")
	return out
}

func formatDefault(v reflect.Value) string {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return ""
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.String:
		if v.String() == "" {
			return ""
		}
		return strconv.Quote(v.String())
	case reflect.Int, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'f', -1, 64)
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 {
			return ""
		}
	}
	return fmt.Sprint(v.Interface())
}

// docRows returns the key tables' rows of the doc: key -> default cell.
func docRows(t *testing.T, doc string) map[string]string {
	t.Helper()
	rows := map[string]string{}
	re := regexp.MustCompile("(?m)^\\| `([a-z_.]+)` \\| ([^|]*) \\|")
	for _, m := range re.FindAllStringSubmatch(doc, -1) {
		if _, dup := rows[m[1]]; dup {
			t.Errorf("%s has two rows for %s", configDoc, m[1])
		}
		rows[m[1]] = strings.TrimSpace(m[2])
	}
	return rows
}

// TestConfigurationDocListsEveryKey keeps docs/configuration.md exact:
// every key of config.go (and of the provider blocks it embeds) has a row,
// every row is a real key, YAML names that differ are mentioned, and the
// defaults of config.Defaults() are the ones written.
func TestConfigurationDocListsEveryKey(t *testing.T) {
	b, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	rows := docRows(t, doc)
	keys := configKeys(t)
	known := map[string]bool{}
	for _, k := range keys {
		known[k.hcl] = true
		cell, ok := rows[k.hcl]
		if !ok {
			t.Errorf("%s has no row for `%s`", configDoc, k.hcl)
			continue
		}
		if k.leafDiffers && !strings.Contains(doc, "`"+k.yaml+"`") {
			t.Errorf("%s does not give the YAML name `%s` of `%s`", configDoc, k.yaml, k.hcl)
		}
		if !k.own {
			continue
		}
		if k.def == "" {
			if !strings.HasPrefix(cell, "—") {
				t.Errorf("`%s` has no default, but the doc says %s", k.hcl, cell)
			}
		} else if cell != "`"+k.def+"`" {
			t.Errorf("`%s` defaults to %s, but the doc says %s", k.hcl, k.def, cell)
		}
	}
	for r := range rows {
		if !known[r] {
			t.Errorf("%s has a row for `%s`, which config.File does not have", configDoc, r)
		}
	}
	if len(keys) < 90 {
		t.Errorf("only %d keys found: is the walk reading the tags?", len(keys))
	}
	t.Logf("%d keys, %d rows", len(keys), len(rows))
}

// TestConfigurationDocExamplesAreValid decodes the doc's examples (HCL and
// YAML pairs), checks each pair is the same configuration, and that it
// passes validation with a key in place of the key file.
func TestConfigurationDocExamplesAreValid(t *testing.T) {
	b, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```(hcl|yaml)\\n(.*?)```").FindAllStringSubmatch(string(b), -1)
	var hcls, yamls []config.File
	for _, m := range blocks {
		f, err := config.Parse("example."+m[1], []byte(m[2]), m[1])
		if err != nil {
			t.Errorf("a %s example does not parse: %v\n%s", m[1], err, m[2])
			continue
		}
		if m[1] == "hcl" {
			hcls = append(hcls, f)
		} else {
			yamls = append(yamls, f)
		}
	}
	if len(hcls) < 2 || len(hcls) != len(yamls) {
		t.Fatalf("%d HCL and %d YAML examples, want pairs", len(hcls), len(yamls))
	}
	for i := range hcls {
		h, y := hcls[i], yamls[i]
		// An empty YAML list and an empty HCL list decode differently.
		if len(h.Join) == 0 && len(y.Join) == 0 {
			h.Join, y.Join = nil, nil
		}
		if !reflect.DeepEqual(h, y) {
			t.Errorf("example %d: HCL and YAML differ:\n%+v\n%+v", i+1, h, y)
		}
		f := h
		f.ClusterKeyFile, f.ClusterKey = "", strings.Repeat("ab", 32)
		if _, err := config.Resolve(f); err != nil {
			t.Errorf("example %s: %v", h.NodeID, err)
		}
	}
}

// TestModuleRaftDefaultsAreTheAgents: the modules render the agent's own
// Raft defaults unless told otherwise, so docs/configuration.md holds for
// a fleet deployed with them.
func TestModuleRaftDefaultsAreTheAgents(t *testing.T) {
	d := config.Defaults().Raft
	want := map[string]string{
		"heartbeat_timeout":    d.HeartbeatTimeout,
		"election_timeout":     d.ElectionTimeout,
		"leader_lease_timeout": d.LeaderLeaseTimeout,
	}
	for _, cloud := range terraform.Clouds {
		m, err := terraform.LoadModule("modules/" + cloud)
		if err != nil {
			t.Fatal(err)
		}
		seen := 0
		for _, b := range m.Find("variable", "") {
			w, ok := want[b.Labels[0]]
			if !ok {
				continue
			}
			seen++
			c, _, diags := b.Body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "default"}}})
			if diags.HasErrors() || c.Attributes["default"] == nil {
				t.Errorf("%s: variable %s has no default", cloud, b.Labels[0])
				continue
			}
			v, diags := c.Attributes["default"].Expr.Value(nil)
			if diags.HasErrors() || v.Type() != cty.String || v.AsString() != w {
				t.Errorf("%s: variable %s defaults to %#v, the agent to %q", cloud, b.Labels[0], v, w)
			}
		}
		if seen != len(want) {
			t.Errorf("%s: found %d of the %d Raft timing variables", cloud, seen, len(want))
		}
	}
}

// TestLinuxProviderDocUsesTheConfigurationsBlockForm: every HCL and YAML
// example of docs/providers/linux.md is a provider block as the agent reads
// it (the form docs/configuration.md uses), valid, and each YAML example
// says what the HCL one before it says.
func TestLinuxProviderDocUsesTheConfigurationsBlockForm(t *testing.T) {
	b, err := os.ReadFile("../docs/providers/linux.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```(hcl|yaml)\\n(.*?)```").FindAllStringSubmatch(string(b), -1)
	if len(blocks) < 3 {
		t.Fatalf("only %d examples found", len(blocks))
	}
	head := map[string]string{
		"hcl":  "node_id = \"gw1\"\nadvertise_addr = \"192.0.2.11:7946\"\ncluster_key = \"" + strings.Repeat("ab", 32) + "\"\n",
		"yaml": "node_id: gw1\nadvertise_addr: 192.0.2.11:7946\ncluster_key: \"" + strings.Repeat("ab", 32) + "\"\n",
	}
	var last *config.File
	for _, m := range blocks {
		f, err := config.Parse("linux."+m[1], []byte(head[m[1]]+m[2]), m[1])
		if err != nil {
			t.Errorf("a %s example is not a provider block the agent reads: %v\n%s", m[1], err, m[2])
			continue
		}
		c, err := config.Resolve(f)
		if err != nil {
			t.Errorf("a %s example is not valid: %v\n%s", m[1], err, m[2])
			continue
		}
		if c.ProviderType != "linux" {
			t.Errorf("a %s example is not the linux provider's:\n%s", m[1], m[2])
		}
		if m[1] == "yaml" && last != nil && !reflect.DeepEqual(last.Provider, f.Provider) {
			t.Errorf("the YAML example differs from the HCL one before it:\n%+v\n%+v", last.Provider, f.Provider)
		}
		last = &f
	}
}
