package config

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"go.yaml.in/yaml/v3"
)

// source records where each key of a file was written, so that an error
// about a value names its line as well as its key. Keys are written as in
// errors: "provider.resource[1].id", "raft.heartbeat_timeout".
type source struct {
	name  string
	lines map[string]int
}

// locate finds the line of every key in src; a file it cannot parse (the
// decoder has reported why) gives no lines.
func locate(name string, src []byte) *source {
	s := &source{name: name, lines: map[string]int{}}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".hcl":
		f, diags := hclsyntax.ParseConfig(src, name, hcl.InitialPos)
		if diags.HasErrors() {
			return nil
		}
		if body, ok := f.Body.(*hclsyntax.Body); ok {
			s.hclBody(body, "")
		}
	case ".yaml", ".yml":
		var doc yaml.Node
		if err := yaml.Unmarshal(src, &doc); err != nil || len(doc.Content) == 0 {
			return nil
		}
		s.yamlNode(doc.Content[0], "")
	}
	return s
}

func (s *source) hclBody(b *hclsyntax.Body, prefix string) {
	for name, a := range b.Attributes {
		s.lines[prefix+name] = a.SrcRange.Start.Line
	}
	seen := map[string]int{}
	for _, blk := range b.Blocks {
		key := prefix + blk.Type
		if _, dup := s.lines[key]; !dup {
			s.lines[key] = blk.TypeRange.Start.Line
		}
		// Repeated blocks (provider.resource) are named by index.
		indexed := fmt.Sprintf("%s[%d]", key, seen[blk.Type])
		seen[blk.Type]++
		s.lines[indexed] = blk.TypeRange.Start.Line
		s.hclBody(blk.Body, key+".")
		s.hclBody(blk.Body, indexed+".")
	}
}

// yamlNames are the YAML keys whose HCL name, the one errors use, differs.
var yamlNames = map[string]string{"provider.resources": "provider.resource"}

func (s *source) yamlNode(n *yaml.Node, prefix string) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			key := prefix + k.Value
			if hclName, ok := yamlNames[key]; ok {
				key = hclName
			}
			s.lines[key] = k.Line
			s.yamlNode(v, key+".")
		}
	case yaml.SequenceNode:
		base := strings.TrimSuffix(prefix, ".")
		for i, item := range n.Content {
			key := fmt.Sprintf("%s[%d]", base, i)
			s.lines[key] = item.Line
			s.yamlNode(item, key+".")
		}
	}
}

// where is "file:line: " for key, or for the nearest enclosing key the file
// wrote (a missing key is reported at its block); "" when the file wrote
// none of them or s is nil (defaults, flags, a File built in code).
func (s *source) where(key string) string {
	if s == nil {
		return ""
	}
	for k := key; k != ""; k = parentKey(k) {
		if line, ok := s.lines[k]; ok {
			return fmt.Sprintf("%s:%d: ", s.name, line)
		}
	}
	return ""
}

// forget drops key and everything under it: a flag set it, so the file's
// line is no longer where its value came from.
func (s *source) forget(key string) {
	if s == nil {
		return
	}
	for k := range s.lines {
		if k == key || strings.HasPrefix(k, key+".") || strings.HasPrefix(k, key+"[") {
			delete(s.lines, k)
		}
	}
}

// parentKey strips the last ".name" or "[i]" of a key.
func parentKey(k string) string {
	if strings.HasSuffix(k, "]") {
		if i := strings.LastIndexByte(k, '['); i > 0 {
			return k[:i]
		}
	}
	if i := strings.LastIndexByte(k, '.'); i > 0 {
		return k[:i]
	}
	return ""
}
