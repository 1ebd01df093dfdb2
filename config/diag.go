package config

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"go.yaml.in/yaml/v3"
)

// decodeHCL decodes an HCL file into f. Every problem is reported, each
// with its file, line and source snippet, the way terraform prints them:
// hclsimple.Decode summarised all but the first as "and 2 other
// diagnostic(s)", and wanted a name ending in .hcl, so that x.hcl became
// "x.hcl.hcl" in every message.
func decodeHCL(name string, src []byte, f *File) error {
	p := hclparse.NewParser()
	file, diags := p.ParseHCL(src, name)
	if !diags.HasErrors() {
		diags = append(diags, gohcl.DecodeBody(file.Body, nil, f)...)
	}
	if !diags.HasErrors() {
		return nil
	}
	var b strings.Builder
	w := hcl.NewDiagnosticTextWriter(&b, p.Files(), 0, false)
	if err := w.WriteDiagnostics(errorsOnly(diags)); err != nil {
		return diags
	}
	n := len(errorsOnly(diags))
	return fmt.Errorf("%d problem%s:\n\n%s", n, plural(n), strings.TrimRight(b.String(), "\n"))
}

func errorsOnly(diags hcl.Diagnostics) hcl.Diagnostics {
	var out hcl.Diagnostics
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			out = append(out, d)
		}
	}
	return out
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// yamlPaths maps each line of a YAML document to the key path of the
// deepest key or list item on it ("provider.resources[1].id").
func yamlPaths(src []byte) map[int]string {
	var doc yaml.Node
	if yaml.Unmarshal(src, &doc) != nil {
		return nil
	}
	paths := map[int]string{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				paths[k.Line] = p
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := path + "[" + strconv.Itoa(i) + "]"
				// A flow list ([a, b]) shares its key's line: an error
				// there is the key's.
				if n.Style&yaml.FlowStyle == 0 {
					paths[c.Line] = p
				}
				walk(c, p)
			}
		}
	}
	walk(&doc, "")
	return paths
}

var (
	yamlUnknown   = regexp.MustCompile(`^line (\d+): field (\S+) not found in type \S+$`)
	yamlType      = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)$")
	yamlDuplicate = regexp.MustCompile(`^line (\d+): mapping key "(.*)" already defined at line (\d+)$`)
)

// yamlError rewrites the YAML decoder's type errors in terms of the
// configuration: each names the line and the key path, and what the key
// wants in words ("an integer", "a block of keys"), never a Go type such
// as config.ResourceBlock. Syntax errors are returned as they are.
func yamlError(src []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	paths := yamlPaths(src)
	at := func(line string) string {
		n, _ := strconv.Atoi(line)
		if p := paths[n]; p != "" {
			return "line " + line + ": " + p
		}
		return "line " + line
	}
	out := make([]string, len(te.Errors))
	for i, msg := range te.Errors {
		switch {
		case yamlUnknown.MatchString(msg):
			m := yamlUnknown.FindStringSubmatch(msg)
			out[i] = fmt.Sprintf("%s: unknown key %q", at(m[1]), m[2])
		case yamlType.MatchString(msg):
			m := yamlType.FindStringSubmatch(msg)
			got := yamlTags[m[2]]
			if got == "" {
				got = m[2]
			}
			if m[3] != "" {
				got += " (" + m[3] + ")"
			}
			out[i] = fmt.Sprintf("%s: want %s, got %s", at(m[1]), goTypeWords(m[4]), got)
		case yamlDuplicate.MatchString(msg):
			m := yamlDuplicate.FindStringSubmatch(msg)
			out[i] = fmt.Sprintf("%s: key %q given twice (first on line %s)", at(m[1]), m[2], m[3])
		default:
			out[i] = msg
		}
	}
	return errors.New(strings.Join(out, "\n  "))
}

var yamlTags = map[string]string{"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
	"seq": "a list", "map": "a block of keys", "null": "nothing", "timestamp": "a timestamp", "binary": "binary data"}

// goTypeWords says in words what a Go type the YAML decoder names takes.
func goTypeWords(t string) string {
	t = strings.TrimLeft(t, "*")
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list of " + strings.TrimPrefix(goTypeWords(t[2:]), "a ") + "s"
	case strings.HasPrefix(t, "map["):
		return "a map"
	case t == "string":
		return "a string"
	case t == "bool":
		return "true or false"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "an integer"
	case strings.HasPrefix(t, "float"):
		return "a number"
	}
	return "a block of keys"
}
