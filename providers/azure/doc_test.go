package azure

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
)

// TestAzureDocListsPermissions parses the custom role definition in
// docs/providers/azure.md and compares its Actions with Permissions().
func TestAzureDocListsPermissions(t *testing.T) {
	b, err := os.ReadFile("../../docs/providers/azure.md")
	if err != nil {
		t.Fatalf("reading the azure doc: %v", err)
	}
	var role struct {
		Actions    []string
		NotActions []string
	}
	found := false
	for _, block := range strings.Split(string(b), "```json\n")[1:] {
		body, _, ok := strings.Cut(block, "\n```")
		if !ok || !strings.Contains(body, `"Actions"`) {
			continue
		}
		if err := json.Unmarshal([]byte(body), &role); err != nil {
			t.Fatalf("the role definition in the doc is not valid JSON: %v", err)
		}
		found = true
		break
	}
	if !found {
		t.Fatal("docs/providers/azure.md has no ```json role definition with Actions")
	}
	got := slices.Clone(role.Actions)
	slices.Sort(got)
	if want := Permissions(); !slices.Equal(got, want) {
		t.Fatalf("doc lists\n  %v\nPermissions() is\n  %v", got, want)
	}
	if len(role.NotActions) != 0 {
		t.Fatalf("doc role has NotActions %v", role.NotActions)
	}
}
